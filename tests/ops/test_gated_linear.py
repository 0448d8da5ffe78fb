"""udg_fast.ops.gated_linear (Eq. 7): every backend against the reference, forward and every
gradient, on odd shapes and fresh random inputs; gradcheck, opcheck, torch.compile; bad input."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import udg_fast
from udg_fast.ops import gated_linear, gated_linear_reference

from ._utils import assert_close_to_reference, assert_compile_matches_eager, backend_params, device_for

# (leading dims, K = in_features, N = out_features): 1, odd and prime sizes, B = 0, leading dims.
SHAPES = [
    ((0,), 7, 5),
    ((1,), 1, 1),
    ((3,), 7, 33),
    ((17,), 33, 7),
    ((5,), 130, 257),
    ((2, 3), 257, 130),
    ((64,), 40, 1),
    ((33,), 80, 16),
]
# (activation, bias, gate_scale), cycled over the shapes so that each shape meets several.
OPTIONS = list(itertools.product(["relu", "none"], [True, False], [1.0, 2.0]))

# Absolute error floor (× max |reference|) per dtype, added to flash-attention's 2× rule.
FLOOR = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2, torch.float16: 1e-3}


def _inputs(lead, k, n, bias, dtype, device, seed, noncontiguous=False):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

    x, gl = r(*lead, k), r(*lead, k, scale=2.0)
    w, b = r(n, k, scale=max(k, 1) ** -0.5), (r(n) if bias else None)
    if noncontiguous:  # same values, strided storage
        x = torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]
        w = w.t().contiguous().t()
    out = [t.to(device=device, dtype=dtype) if t is not None else None for t in (x, gl, w, b)]
    return out


def _run(fn, x, gl, w, b, act, scale, grad_out):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, gl, w, b)]
    y = fn(*leaves, act, scale)
    y.backward(grad_out.to(y.dtype))
    grads = [t.grad if t is not None else None for t in leaves]
    return y.detach(), grads


def _check_backend(backend, lead, k, n, act, bias, scale, dtype, seed, noncontiguous=False):
    device = device_for(backend)
    x, gl, w, b = _inputs(lead, k, n, bias, dtype, device, seed, noncontiguous)
    grad_out = torch.randn(*lead, n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    with udg_fast.use_backend(backend):
        y, grads = _run(gated_linear, x, gl, w, b, act, scale, grad_out.to(device))
    with udg_fast.use_backend("reference"):
        y64, grads64 = _run(gated_linear_reference, *(t.double() if t is not None else None for t in (x, gl, w, b)),
                            act, scale, grad_out.to(device))
        y32, grads32 = _run(gated_linear_reference, x, gl, w, b, act, scale, grad_out.to(device))
    assert y.dtype == dtype and y.shape == (*lead, n)
    names = ["out", "grad_x", "grad_gate_logits", "grad_weight", "grad_bias"]
    for name, fast, ref64, ref32 in zip(names, [y, *grads], [y64, *grads64], [y32, *grads32]):
        if ref64 is None:
            assert fast is None, f"{name}: expected no gradient"
            continue
        assert fast is not None, f"{name}: missing gradient"
        assert_close_to_reference(f"[{backend}] {name}", fast, ref64, ref32, floor=FLOOR[dtype])


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("case", range(len(SHAPES)), ids=[f"{'x'.join(map(str, s[0]))}-{s[1]}-{s[2]}" for s in SHAPES])
def test_matches_reference(backend, case):
    lead, k, n = SHAPES[case]
    for j in range(2):  # two option sets per shape, different across shapes
        act, bias, scale = OPTIONS[(2 * case + j) % len(OPTIONS)]
        _check_backend(backend, lead, k, n, act, bias, scale, torch.float32, seed=1000 * case + j)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("act,bias,scale", OPTIONS)
def test_all_options(backend, act, bias, scale):
    _check_backend(backend, (9,), 19, 11, act, bias, scale, torch.float32, seed=OPTIONS.index((act, bias, scale)))  # reproducible (hash() of a str is salted per process)


@pytest.mark.parametrize("backend", backend_params())
def test_output_edited_in_place_without_relu(backend):
    """activation=None saves no output (only the ReLU reads it): `y += r` after the layer — a
    residual after an output layer — backpropagates as with F.linear, and the gradients are the
    reference's. (With ReLU the output is the mask: in place is refused, as for torch.relu.)"""
    device = device_for(backend)
    grads = []
    for be in (backend, "reference"):
        x, gl, w, b = [t.requires_grad_() for t in _inputs((5,), 6, 4, True, torch.float32, device, 13)]
        with udg_fast.use_backend(be):
            y = gated_linear(x, gl, w, b, "none", 1.0)
        y += 1.0
        (y * y).sum().backward()
        grads.append([t.grad for t in (x, gl, w, b)])
    for name, fast, ref in zip(("dx", "dgate", "dw", "db"), *grads):
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5, msg=f"[{backend}] {name}")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("k,n", [(0, 5), (6, 0)], ids=["no-inputs", "no-outputs"])
def test_zero_width_layers(backend, k, n):
    """K = 0 (act(b)) or N = 0 (an empty output): the reference's result and gradients on every
    backend (the kernels' [-1, 0] views failed)."""
    _check_backend(backend, (4,), k, n, "relu", True, 1.0, torch.float32, seed=11)


@pytest.mark.parametrize("backend", backend_params())
def test_noncontiguous_inputs(backend):
    _check_backend(backend, (4, 5), 21, 13, "relu", True, 1.0, torch.float32, seed=7, noncontiguous=True)


def test_cpu_float64_matches_reference():
    if not udg_fast.backends()["cpu"]["usable"]:
        pytest.skip(f"cpu backend not usable: {udg_fast.backends()['cpu']['reason']}")
    for i, (lead, k, n) in enumerate(SHAPES):
        act, bias, scale = OPTIONS[i % len(OPTIONS)]
        _check_backend("cpu", lead, k, n, act, bias, scale, torch.float64, seed=50 + i)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_half_precision(backend, dtype):
    if not udg_fast.backends()[backend]["usable"]:
        pytest.skip(f"{backend}: {udg_fast.backends()[backend]['reason']}")
    for i, (lead, k, n) in enumerate(SHAPES):
        act, bias, scale = OPTIONS[i % len(OPTIONS)]
        _check_backend(backend, lead, k, n, act, bias, scale, dtype, seed=300 + i)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_tf32(backend):
    """TF32 dots (torch's 'high' matmul precision) against their own, looser, tolerance."""
    if not udg_fast.backends()[backend]["usable"]:
        pytest.skip(f"{backend}: {udg_fast.backends()[backend]['reason']}")
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        x, gl, w, b = _inputs((512,), 400, 200, True, torch.float32, torch.device("cuda"), 11)
        with udg_fast.use_backend(backend):
            y = gated_linear(x, gl, w, b)
        y64 = gated_linear_reference(x.double(), gl.double(), w.double(), b.double())
        torch.testing.assert_close(y.double(), y64, atol=5e-3, rtol=5e-3, msg=lambda m: f"[{backend}] out (tf32): {m}")
    finally:
        torch.set_float32_matmul_precision(old)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    if not udg_fast.backends()[backend]["usable"]:
        pytest.skip(f"{backend}: {udg_fast.backends()[backend]['reason']}")
    g = torch.Generator().manual_seed(3)
    for act, bias in [("relu", True), ("none", False)]:
        x = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
        gl = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
        w = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
        b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
        inputs = (x, gl, w, b) if bias else (x, gl, w)

        def f(*t):
            with udg_fast.use_backend(backend):
                return gated_linear(t[0], t[1], t[2], t[3] if bias else None, act, 1.5)

        assert torch.autograd.gradcheck(f, inputs), f"gradcheck failed for {backend} act={act} bias={bias}"


def test_opcheck_cpp_op():
    if not udg_fast.backends()["cpu"]["usable"]:
        pytest.skip(f"cpu backend not usable: {udg_fast.backends()['cpu']['reason']}")
    g = torch.Generator().manual_seed(5)
    for bias in (True, False):
        args = (torch.randn(7, 9, generator=g), torch.randn(7, 9, generator=g),
                torch.randn(4, 9, generator=g, requires_grad=True),
                torch.randn(4, generator=g) if bias else None, "relu", 2.0)
        torch.library.opcheck(torch.ops.udg_fast.gated_linear.default, args)
        gx = torch.randn(7, 9, generator=g, requires_grad=True)
        torch.library.opcheck(torch.ops.udg_fast.gated_linear.default, (gx, *args[1:]))


@pytest.mark.cuda
def test_opcheck_triton_op():
    if not udg_fast.backends()["triton"]["usable"]:
        pytest.skip(udg_fast.backends()["triton"]["reason"])
    d = torch.device("cuda")
    args = (torch.randn(7, 9, device=d, requires_grad=True), torch.randn(7, 9, device=d),
            torch.randn(4, 9, device=d, requires_grad=True), torch.randn(4, device=d), "relu", 1.0, "ieee")
    torch.library.opcheck(torch.ops.udg_fast.gated_linear_triton.default, args)


def _mlp():
    torch.manual_seed(0)
    return torch.nn.ModuleList([udg_fast.GatedLinear(13, 8), udg_fast.GatedLinear(8, 1, activation=None)])


def _mlp_forward(layers, x, g1, g2):
    return layers[1](layers[0](x, g1), g2)


@pytest.mark.parametrize("backend", ["cpu"] + (["triton", "cuda"] if torch.cuda.is_available() else []))
def test_torch_compile_fullgraph(backend):
    """torch.compile(fullgraph=True) runs a model using the op with no graph break, forward and
    backward. On CPU tensors this goes through the C++ op (compiling a Triton op on CPU tensors
    under the interpreter is not possible: fake tensors have no data pointer)."""
    if not udg_fast.backends()[backend]["usable"]:
        pytest.skip(f"{backend}: {udg_fast.backends()[backend]['reason']}")
    device = device_for(backend)
    layers = _mlp().to(device)
    x, g1, g2 = (torch.randn(10, 13, device=device), torch.randn(10, 13, device=device), torch.randn(10, 8, device=device))
    assert_compile_matches_eager(backend, _mlp_forward, layers, x, g1, g2)


# ---- NaN / Inf -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference"] + backend_params())
def test_nan_propagates_to_its_row(backend):
    """Documented behaviour: a NaN in a row of x or gate_logits makes that row's output NaN (ReLU
    included: relu(NaN) is NaN); other rows are unaffected."""
    device = device_for(backend) if backend != "reference" else torch.device("cpu")
    x, gl, w, b = _inputs((4,), 6, 3, True, torch.float32, device, 9)
    x[1, 2] = float("nan")
    gl[2, 0] = float("nan")
    with udg_fast.use_backend(backend):
        y = gated_linear(x, gl, w, b)
    assert torch.isnan(y[1]).all() and torch.isnan(y[2]).all(), f"[{backend}] NaN rows: {y}"
    assert torch.isfinite(y[[0, 3]]).all(), f"[{backend}] clean rows must stay finite: {y}"


@pytest.mark.parametrize("backend", backend_params())
def test_nan_gradients_match_the_reference(backend):
    """With a NaN in x, in gate_logits and in the weight, every gradient — NaN pattern included —
    is the reference's: the ReLU mask is torch's threshold_backward (0 where out <= 0, dy where the
    output is NaN), not `out > 0`, which dropped dy at NaN outputs (db and dx then differed)."""
    device = device_for(backend)
    x, gl, w, b = _inputs((5,), 6, 4, True, torch.float32, device, 12)
    x[1, 2] = float("nan")
    gl[3, 4] = float("nan")
    w[2, 5] = float("nan")
    go = torch.randn(5, 4, generator=torch.Generator().manual_seed(3)).to(device)
    results = []
    for be, fn in ((backend, gated_linear), ("reference", gated_linear_reference)):
        with udg_fast.use_backend(be):
            results.append(_run(fn, x, gl, w, b, "relu", 1.5, go))
    (y, grads), (y_ref, grads_ref) = results
    for name, fast, ref in zip(["out", "dx", "dgate", "dw", "db"], [y, *grads], [y_ref, *grads_ref]):
        assert torch.equal(torch.isnan(fast), torch.isnan(ref)), f"[{backend}] {name}: NaN pattern differs"
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5, equal_nan=True, msg=f"[{backend}] {name}")


@pytest.mark.parametrize("backend", ["reference"] + backend_params())
def test_infinite_gate_logits_close_or_open_the_gate(backend):
    """A gate logit of -inf is a gate of exactly 0, +inf a gate of exactly gate_scale."""
    device = device_for(backend) if backend != "reference" else torch.device("cpu")
    x, gl, w, b = _inputs((3,), 5, 4, False, torch.float32, device, 10)
    gl[0] = float("-inf")
    gl[1] = float("inf")
    with udg_fast.use_backend(backend):
        y = gated_linear(x, gl, w, b, "none", 2.0)
    torch.testing.assert_close(y[0], torch.zeros_like(y[0]), msg=lambda m: f"[{backend}] closed gate: {m}")
    torch.testing.assert_close(y[1], F.linear(2.0 * x[1], w), msg=lambda m: f"[{backend}] open gate: {m}")


# ---- Bad input ---------------------------------------------------------------------------------

def _ok():
    return torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 4), torch.randn(2)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: (a[0], torch.randn(3, 5), a[2], a[3]), ValueError, "gate_logits must have the shape of x"),
    (lambda a: (a[0], a[1], torch.randn(2, 5), a[3]), ValueError, r"weight must be \[out_features, 4\]"),
    (lambda a: (a[0], a[1], torch.randn(4), a[3]), ValueError, "weight must be"),
    (lambda a: (a[0], a[1], a[2], torch.randn(3)), ValueError, r"bias must be \[2\]"),
    (lambda a: (a[0], a[1].double(), a[2], a[3]), TypeError, "gate_logits has dtype torch.float64"),
    (lambda a: (a[0], a[1], a[2].double(), a[3]), TypeError, "weight has dtype"),
    (lambda a: (a[0], a[1], a[2], a[3].half()), TypeError, "bias has dtype"),
    (lambda a: (a[0].long(), a[1].long(), a[2].long(), a[3].long()), TypeError, "floating-point"),
    (lambda a: (a[0].numpy(), a[1], a[2], a[3]), TypeError, "x must be a torch.Tensor"),
    (lambda a: (torch.tensor(1.0), torch.tensor(1.0), a[2], a[3]), ValueError, "at least 1 dimension"),
])
def test_bad_input_names_the_argument(mutate, exc, match):
    with pytest.raises(exc, match=match):
        gated_linear(*mutate(_ok()))


def test_bad_device_names_the_argument():
    x, g, w, b = _ok()
    with pytest.raises(ValueError, match="weight is on meta"):
        gated_linear(x, g, w.to("meta"), b)


def test_bad_activation_and_scale():
    x, g, w, b = _ok()
    with pytest.raises(ValueError, match="activation must be one of"):
        gated_linear(x, g, w, b, activation="gelu")
    with pytest.raises(TypeError, match="gate_scale must be a float"):
        gated_linear(x, g, w, b, gate_scale="2")
    with pytest.raises(ValueError, match="activation must be one of"):
        udg_fast.GatedLinear(4, 2, activation="tanh")


def test_cpp_op_rejects_bad_activation_directly():
    if not udg_fast.backends()["cpu"]["usable"]:
        pytest.skip(udg_fast.backends()["cpu"]["reason"])
    x, g, w, b = _ok()
    with pytest.raises(RuntimeError, match="activation"):
        torch.ops.udg_fast.gated_linear(x, g, w, b, "gelu", 1.0)
