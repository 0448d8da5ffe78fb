"""Backend selection, build information and the drop-in module."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import udg_fast
from udg_fast import _backend


def test_backends_table_has_every_backend():
    table = udg_fast.backends()
    assert set(table) == {"reference", "cpu", "triton", "cuda"}
    for name, st in table.items():
        assert set(st) == {"built", "usable", "reason"}
        if not st["usable"]:
            assert st["reason"], f"{name} is unusable but says no reason"
    assert table["reference"]["usable"]
    text = udg_fast.format_backends()
    assert all(n in text for n in table)


def test_extension_loads_here():
    """This project's CI and development machines build the extension; its absence is a bug."""
    info = udg_fast.build_info()
    assert info["extension"], f"udg_fast._C did not load: {info.get('error')}"
    assert udg_fast.backends()["cpu"]["usable"]


def _cuda_build_expected() -> bool:
    return (torch.version.cuda is not None and shutil.which("nvcc") is not None
            and os.environ.get("UDG_FAST_SKIP_CUDA_BUILD", "0") not in ("1", "true", "TRUE", "yes"))


@pytest.mark.skipif(not _cuda_build_expected(), reason="no nvcc or a CPU-only torch: a CPU-only build is expected")
def test_cpp_error_messages_with_numbers_arrive_whole():
    """A C++ argument check whose message holds integers raises RuntimeError with all of it.

    Linked against a static libstdc++ beside the process's shared one (what `-lstdc++` gave on the
    GPU machine's image; setup.py now names libstdc++.so.6), formatting an integer segfaulted
    there (H200, 2026-11-28) and cut the message short at the first number here. Run in a
    subprocess so that a crash is reported as this failure instead of ending the test run.
    """
    if not udg_fast.backends()["cpu"]["built"]:
        pytest.skip("the C++ extension is not built")
    code = (
        "import torch, udg_fast\n"
        "x, wi, wh = torch.randn(3, 4, 5), torch.randn(6, 5), torch.randn(6, 2)\n"
        "try:\n"
        "    torch.ops.udg_fast.augru(x, wi, wh, None, None, None, torch.tensor([4, 9, 2]), torch.zeros(3, 2))\n"
        "except RuntimeError as e:\n"
        "    print(str(e).splitlines()[0])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"the process died (exit {res.returncode}):\n{res.stderr[-3000:]}"
    assert "lengths must be in [0, T] = [0, 4], got lengths[1] = 9" in res.stdout, res.stdout + res.stderr[-2000:]


def test_cuda_extension_was_built():
    """Where nvcc and a CUDA torch exist (CI's machine), the CUDA kernels must compile and link."""
    info = udg_fast.build_info()
    assert info["with_cuda"], f"CUDA kernels were not built: {info}"
    # The archs asked for at build time (benchmarks/gpu_check.sh builds for its card only), else
    # setup.py's DEFAULT_CUDA_ARCHS; and the card this runs on, where there is one.
    built = set(info["cuda_archs"].split(";"))
    wanted = set(os.environ.get("UDG_FAST_CUDA_ARCHS", "8.0;9.0").split(";"))
    assert wanted <= built, f"built for {sorted(built)}, expected {sorted(wanted)}: {info}"
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        assert _backend.arch_runs(info["cuda_archs"], (major, minor)), \
            f"built for {sorted(built)}, which cannot run on this GPU (sm_{major}{minor})"
    assert info["torch_version"] == torch.__version__
    assert udg_fast.backends()["cuda"]["built"]
    # The CUDA kernels are registered with the dispatcher.
    assert torch._C._dispatch_has_kernel_for_dispatch_key("udg_fast::gated_linear", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("udg_fast::gated_linear_backward", "CUDA")


@pytest.mark.parametrize("built, cap, runs", [
    ("8.0;9.0", (8, 0), True), ("8.0;9.0", (8, 6), True), ("8.0;9.0", (8, 9), True), ("8.0;9.0", (9, 0), True),
    ("8.0;9.0", (7, 5), False),   # T4: older than every built arch
    ("8.0;9.0", (10, 0), False),  # Blackwell: sm_90 machine code does not run there, no PTX
    ("9.0", (8, 0), False), ("8.6", (8, 0), False),
    ("9.0+PTX", (10, 0), True), ("8.0+PTX", (9, 0), True), ("9.0+PTX", (8, 9), False),
    ("", (9, 0), False), ("8.0; 9.0", (9, 0), True),
])
def test_arch_runs(built, cap, runs):
    """Whether the CUDA backend's kernels can run on a GPU: the automatic choice skips `cuda` where
    they cannot (it would fail at launch with "no kernel image is available")."""
    assert _backend.arch_runs(built, cap) is runs


def test_automatic_choice_on_cpu():
    assert _backend.select("gated_linear", torch.device("cpu"), torch.float32) == "cpu"
    assert _backend.select("gated_linear", torch.device("cpu"), torch.float64) == "cpu"
    # float16 is not a cpu-backend dtype: the automatic choice falls back, it does not raise.
    assert _backend.select("gated_linear", torch.device("cpu"), torch.float16) == "reference"


def test_gpu_order_is_per_op(monkeypatch):
    """With every backend usable (simulated), a CUDA tensor goes to `cuda` for the ops with CUDA
    kernels, and to `triton` for din_attention (which has a Triton kernel and no CUDA one)."""
    monkeypatch.setattr(_backend, "_ineligible", lambda name, device, dtype: None)
    cuda = torch.device("cuda")
    assert _backend.select("gated_linear", cuda, torch.float32) == "cuda"
    assert _backend.select("augru", cuda, torch.float32) == "cuda"
    assert _backend.select("din_attention", cuda, torch.float32) == "triton"
    monkeypatch.setattr(_backend, "_ineligible", lambda name, device, dtype: "no" if name == "triton" else None)
    assert _backend.select("din_attention", cuda, torch.float32) == "cuda"


def test_use_backend_nests_and_restores():
    assert _backend.forced_backend() is None
    with udg_fast.use_backend("reference"):
        assert _backend.forced_backend() == "reference"
        with udg_fast.use_backend("cpu"):
            assert _backend.forced_backend() == "cpu"
        assert _backend.forced_backend() == "reference"
    assert _backend.forced_backend() is None


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("UDG_FAST_BACKEND", "reference")
    assert _backend.select("gated_linear", torch.device("cpu"), torch.float32) == "reference"
    with udg_fast.use_backend("cpu"):  # the context manager wins over the environment
        assert _backend.select("gated_linear", torch.device("cpu"), torch.float32) == "cpu"
    monkeypatch.setenv("UDG_FAST_BACKEND", "tpu")
    with pytest.raises(ValueError, match="UDG_FAST_BACKEND: unknown backend 'tpu'"):
        _backend.select("gated_linear", torch.device("cpu"), torch.float32)


def test_use_backend_per_op():
    """use_backend(name, ops=[...]) forces only the named ops; the innermost block wins for the ops
    it names (an every-op block names all: serving.export(kernels=False) relies on it); None
    restores an op's automatic choice."""
    cpu, f32 = torch.device("cpu"), torch.float32
    with udg_fast.use_backend("reference", ops=["gated_linear"]):
        assert _backend.select("gated_linear", cpu, f32) == "reference"
        assert _backend.select("augru", cpu, f32) == "cpu"
        assert _backend.forced_backend() is None and _backend.forced_backend("gated_linear") == "reference"
        with udg_fast.use_backend("cpu"):  # every op, inner: it wins
            assert _backend.select("gated_linear", cpu, f32) == "cpu"
        with udg_fast.use_backend(None, ops="gated_linear"):
            assert _backend.select("gated_linear", cpu, f32) == "cpu"
        assert _backend.select("gated_linear", cpu, f32) == "reference"
    with udg_fast.use_backend("reference"), udg_fast.use_backend("cpu", ops=("augru", "din_attention")):
        assert [_backend.select(op, cpu, f32) for op in _backend.OPS] == \
            ["reference", "cpu", "cpu", "reference", "reference"]
    assert all(_backend.select(op, cpu, f32) == "cpu" for op in _backend.OPS)
    with pytest.raises(ValueError, match="use_backend\\(ops\\): unknown op 'gated_lineaar'; expected names of"):
        with udg_fast.use_backend("reference", ops=["gated_lineaar"]):
            pass
    with pytest.raises(ValueError, match="name at least one op"):
        with udg_fast.use_backend("reference", ops=[]):
            pass


def test_per_op_environment_variable(monkeypatch):
    cpu, f32 = torch.device("cpu"), torch.float32
    monkeypatch.setenv("UDG_FAST_BACKEND", "gated_linear=reference")
    assert _backend.select("gated_linear", cpu, f32) == "reference" and _backend.select("augru", cpu, f32) == "cpu"
    monkeypatch.setenv("UDG_FAST_BACKEND", "reference, augru = cpu")
    assert [_backend.select(op, cpu, f32) for op in _backend.OPS] == \
        ["reference", "cpu", "reference", "reference", "reference"]
    with udg_fast.use_backend("cpu"):  # code wins over the environment
        assert _backend.select("gated_linear", cpu, f32) == "cpu"
    monkeypatch.setenv("UDG_FAST_BACKEND", "gru=cpu")
    with pytest.raises(ValueError, match="UDG_FAST_BACKEND: unknown op 'gru'"):
        _backend.select("gated_linear", cpu, f32)


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'fast'; expected one of reference, cpu, triton, cuda"):
        with udg_fast.use_backend("fast"):
            pass


def test_forced_backend_that_cannot_run_raises():
    x = torch.randn(2, 3)
    with udg_fast.use_backend("cuda"):
        with pytest.raises(RuntimeError, match="backend 'cuda' was requested but cannot run here"):
            udg_fast.ops.gated_linear(x, x, torch.randn(2, 3))
    with udg_fast.use_backend("cpu"):
        with pytest.raises(RuntimeError, match="dtype float16 is not supported"):
            udg_fast.ops.gated_linear(x.half(), x.half(), torch.randn(2, 3).half())


def test_forced_unbuilt_backend_raises(monkeypatch):
    monkeypatch.setattr(_backend, "_C", None)
    monkeypatch.setattr(_backend, "_C_ERROR", "ImportError: simulated")
    assert not udg_fast.backends()["cpu"]["built"]
    assert "simulated" in udg_fast.backends()["cpu"]["reason"]
    # automatic choice falls back to the reference
    assert _backend.select("gated_linear", torch.device("cpu"), torch.float32) == "reference"
    with udg_fast.use_backend("cpu"), pytest.raises(RuntimeError, match="extension udg_fast._C not loaded"):
        udg_fast.ops.gated_linear(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3))


# ---- GatedLinear, the drop-in module ------------------------------------------------------------

def test_gated_linear_initialises_like_nn_linear():
    torch.manual_seed(0)
    lin = nn.Linear(37, 11)
    torch.manual_seed(0)
    gl = udg_fast.GatedLinear(37, 11)
    assert torch.equal(lin.weight, gl.weight) and torch.equal(lin.bias, gl.bias)


def test_nn_linear_state_dict_loads():
    lin = nn.Linear(6, 4, bias=False)
    gl = udg_fast.GatedLinear(6, 4, bias=False)
    gl.load_state_dict(lin.state_dict())
    assert gl.bias is None and torch.equal(gl.weight, lin.weight)
    assert set(udg_fast.GatedLinear(6, 4).state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("activation", ["relu", None])
def test_without_gates_it_is_linear_plus_activation(activation):
    gl = udg_fast.GatedLinear(6, 4, activation=activation)
    x = torch.randn(3, 2, 6)
    y = torch.nn.functional.linear(x, gl.weight, gl.bias)
    torch.testing.assert_close(gl(x), torch.relu(y) if activation else y)


def test_open_gates_equal_no_gates():
    """With gate logits of +inf and gate_scale 1 every gate is exactly 1: the base model."""
    gl = udg_fast.GatedLinear(6, 4)
    x = torch.randn(5, 6)
    torch.testing.assert_close(gl(x, torch.full_like(x, float("inf"))), gl(x))


def test_repr_and_bad_sizes():
    assert "gate_scale=2.0" in repr(udg_fast.GatedLinear(3, 2, gate_scale=2))
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        udg_fast.GatedLinear(0, 2)
    with pytest.raises(ValueError, match="in_features must be a positive int, got True"):
        udg_fast.GatedLinear(True, 2)
    with pytest.raises(TypeError, match="gate_scale must be a number, got None"):
        udg_fast.GatedLinear(3, 2, gate_scale=None)
