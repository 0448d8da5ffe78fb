"""Backend selection for udg_fast ops: the one place that decides which kernel runs.

Four backends implement gated_linear and augru; din_attention has a reference, a cpu and a
triton kernel; gating_networks and embedding_backward have a reference and a cpu kernel; where a
GPU backend has no kernel for an op it runs an eager form (see their modules in udg_fast/ops/):

    reference  plain eager PyTorch (udg_fast/ops/naive.py), the oracle; any device, any dtype
    cpu        C++ kernels in csrc/cpu/, through the extension udg_fast._C (float32, float64)
    triton     Triton kernels in kernels/ (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1)
    cuda       CUDA C++ kernels in csrc/cuda/, through udg_fast._C (float32, bfloat16, float16)

Automatic choice: CPU tensors → `cpu` if built, else `reference`; CUDA tensors → the GPU backend
preferred in `GPU_PREFERENCE` (CUDA C++, then Triton: measured on an H200) or, for the ops in
`OP_GPU_PREFERENCE`, in their own order, else `reference`.
An automatic choice never raises because something is missing: it falls back to `reference`,
and `backends()` says why. A *forced* backend (`use_backend(...)` or the environment variable
UDG_FAST_BACKEND) that cannot run the given inputs raises an error saying why.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
from dataclasses import dataclass

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")

# Which GPU backend runs when CUDA tensors are not forced onto one. CUDA C++ first: on an H200
# (benchmarks/results/gpu-h200-2026-11-28) it was faster than Triton forward + backward for
# gated_linear at every shape (0.49-1.28 ms vs 1.12-1.81) and for AUGRU at B = 1024, T = 50
# (1.82 vs 4.23 ms at H = 36), and both passed the same reference tests there. (Triton was faster
# only for AUGRU at B = 4096, T = 100, H = 64: 15.0 vs 17.5 ms.)
GPU_PREFERENCE = ("cuda", "triton")
# Ops whose automatic GPU order differs: din_attention has a Triton kernel and no CUDA C++ one
# (under "cuda" it runs the eager literal concat, 1.46 ms forward + backward at B = 2048, T = 50,
# D = 36 on an H200, most of it launches). Its Triton kernel is not yet timed on a GPU: the GPU
# check's bench_din_attention and bench_models measure it.
OP_GPU_PREFERENCE = {"din_attention": ("triton", "cuda")}

# Dtypes each compiled backend handles; `reference` handles every floating dtype.
DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "triton": (torch.float32, torch.bfloat16, torch.float16),
    "cuda": (torch.float32, torch.bfloat16, torch.float16),
}

# The ops that choose a backend (`select(op, ...)`).
OPS = ("gated_linear", "augru", "din_attention", "gating_networks", "embedding_backward")

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("udg_fast_backend", default=None)
# {op: backend or None} set by use_backend blocks, the innermost block's entries over the outer
# ones' (an every-op block sets every op); None: automatic (then UDG_FAST_BACKEND). A new dict per
# block, never mutated.
_forced_ops: contextvars.ContextVar[dict] = contextvars.ContextVar("udg_fast_op_backends", default={})

# Filled by udg_fast/__init__.py when it tries to import the extension.
_C = None
_C_ERROR: str | None = None


def _set_extension(module, error: str | None) -> None:
    global _C, _C_ERROR
    _C, _C_ERROR = module, error


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{what}: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def _check_ops(ops, what: str) -> tuple[str, ...]:
    ops = (ops,) if isinstance(ops, str) else tuple(ops)
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise ValueError(f"{what}: unknown op {bad[0]!r}; expected names of {', '.join(OPS)}" if bad
                         else f"{what}: name at least one op ({', '.join(OPS)})")
    return ops


@contextlib.contextmanager
def use_backend(name: str | None, ops=None):
    """Force the udg_fast ops inside the block onto one backend (`None` restores automatic).

    Args:
        name: a backend of `BACKENDS`, or None.
        ops: None (every op), or the op names (of `OPS`) to force; the others keep their choice.
            The innermost block wins for the ops it names (an every-op block names them all), so
            code that forces a backend inside (serving.export(kernels=False): "reference") gets it.

    Example:
        >>> with udg_fast.use_backend("reference"):
        ...     y = layer(x, gate_logits)
        >>> with udg_fast.use_backend("reference", ops=["gated_linear"]):   # cuBLAS for the MLP,
        ...     loss = model.loss(batch)[0]                                   # kernels for the rest
    """
    if name is not None:
        _check_name(name, "use_backend(name)")
    named = OPS if ops is None else _check_ops(ops, "use_backend(ops)")
    token_ops = _forced_ops.set({**_forced_ops.get(), **{op: name for op in named}})
    token = _forced.set(name) if ops is None else None
    try:
        yield
    finally:
        if token is not None:
            _forced.reset(token)
        _forced_ops.reset(token_ops)


def _env_backends() -> tuple[str | None, dict]:
    """UDG_FAST_BACKEND: a backend for every op ("reference"), or per op ("gated_linear=reference,
    augru=cuda"), or both ("reference,augru=cuda": augru on cuda, every other op on reference)."""
    env = os.environ.get("UDG_FAST_BACKEND", "").strip()
    every, per_op = None, {}
    what = "environment variable UDG_FAST_BACKEND"
    for item in filter(None, (x.strip() for x in env.split(","))):
        if "=" in item:
            op, name = (x.strip() for x in item.split("=", 1))
            per_op[_check_ops(op, what)[0]] = _check_name(name, what)
        else:
            every = _check_name(item, what)
    return every, per_op


def forced_backend(op: str | None = None) -> str | None:
    """The backend forced for `op` by the innermost `use_backend` block that names it (None for
    `op`: by the innermost every-op block), else by UDG_FAST_BACKEND (its per-op entry first), else
    None. Code wins over the environment."""
    env_every, env_ops = _env_backends()
    name = _forced.get() if op is None else _forced_ops.get().get(op)
    if name is not None:
        return name
    if op is not None and op in env_ops:
        return env_ops[op]
    return env_every


# ---- autocast -------------------------------------------------------------------------------
# The ops are custom ops: torch.autocast casts nothing for them, so they cast their inputs
# themselves, the way autocast treats the torch op each resembles, and then run with autocast off
# (their eager forms compute exactly in the dtype chosen). Without this an op fed by an nn.Linear
# under autocast saw a bf16 x beside its fp32 weight and refused the mix.
#   "lower"   (gated_linear, gating_networks: linears, like F.linear) every floating input in
#             the autocast dtype; the gradients reach fp32 parameters through the casts
#   "promote" (augru, din_attention: like autocast's promote ops) every floating input in the
#             widest dtype among them: fp32 parameters keep the op in fp32 (on a CPU its fp32
#             kernels beat the bf16 eager forms 2-3x, docs/throughput.md)
AUTOCAST_POLICY = {"gated_linear": "lower", "gating_networks": "lower", "augru": "promote",
                   "din_attention": "promote"}


def autocast_dtype(op: str, tensors) -> torch.dtype | None:
    """The dtype `op` casts its floating inputs to under autocast, or None when autocast is off for
    their device (then nothing changes). `tensors`: the inputs, None and lists allowed."""
    flat = [t for t in _flatten(tensors) if isinstance(t, torch.Tensor)]
    if not flat:
        return None
    dev = flat[0].device.type
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev):
        return None
    if AUTOCAST_POLICY[op] == "lower":
        return torch.get_autocast_dtype(dev)
    dt = None
    for t in flat:
        if t.is_floating_point():
            dt = t.dtype if dt is None else torch.promote_types(dt, t.dtype)
    return dt


def autocast_entry(op: str, *tensor_params: str):
    """Decorator of an op's public function: under autocast, its `tensor_params` (tensors or lists
    of them, passed by position or keyword) are cast per AUTOCAST_POLICY[op] and the function runs
    with autocast off; otherwise it is called as it is (one check of the autocast state)."""
    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def op_with_autocast(*args, **kwargs):
            if not (torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")):
                return fn(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            tensors = [bound.arguments.get(name) for name in tensor_params]
            ac = autocast_dtype(op, tensors)
            if ac is None:
                return fn(*args, **kwargs)
            for name in tensor_params:
                if name in bound.arguments:
                    bound.arguments[name] = autocast_cast(bound.arguments[name], ac)
            dev = next(t for t in _flatten(tensors) if isinstance(t, torch.Tensor)).device.type
            with torch.autocast(dev, enabled=False):
                return fn(*bound.args, **bound.kwargs)
        return op_with_autocast
    return wrap


def autocast_cast(x, dtype: torch.dtype):
    """`x` (a tensor, None, or a list/tuple of them) with its floating tensors in `dtype`."""
    if isinstance(x, (list, tuple)):
        return type(x)(autocast_cast(t, dtype) for t in x)
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
        return x.to(dtype)
    return x


def functorch_transformed(tensors) -> bool:
    """Whether an input is a torch.func wrapper (grad, vmap, jacrev, … are transforming the call):
    the ops' registered autograd formulas are not functorch transforms, so the ops then run their
    reference, plain PyTorch, which every transform handles."""
    if torch.compiler.is_compiling():
        return False
    functorch = getattr(torch._C, "_functorch", None)
    if functorch is None or functorch.maybe_current_level() is None:  # no transform active: one call
        return False
    return any(isinstance(t, torch.Tensor) and functorch.is_functorch_wrapped_tensor(t) for t in _flatten(tensors))


def _flatten(xs):
    for x in xs:
        if isinstance(x, (list, tuple)):
            yield from _flatten(x)
        else:
            yield x


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


_triton_status: tuple[bool, str] | None = None


def _triton_importable() -> tuple[bool, str]:
    global _triton_status
    if _triton_status is None:
        try:
            import triton  # noqa: F401

            from udg_fast.kernels import gated_linear  # noqa: F401

            _triton_status = (True, "")
        except Exception as e:  # ImportError, or a Triton that fails to initialise
            _triton_status = (False, f"triton is not importable: {type(e).__name__}: {e}")
    return _triton_status


def _cuda_built() -> bool:
    return _C is not None and bool(_C.build_info().get("with_cuda"))


@dataclass(frozen=True)
class BackendStatus:
    name: str
    built: bool
    usable: bool
    reason: str

    def as_dict(self):
        return {"built": self.built, "usable": self.usable, "reason": self.reason}


def backend_status(name: str) -> BackendStatus:
    """Whether backend `name` is built and usable on this machine, and why not."""
    _check_name(name, "backend_status(name)")
    if name == "reference":
        return BackendStatus(name, True, True, "")
    if name == "cpu":
        if _C is None:
            return BackendStatus(name, False, False, f"extension udg_fast._C not loaded: {_C_ERROR}")
        return BackendStatus(name, True, True, "")
    if name == "cuda":
        if _C is None:
            return BackendStatus(name, False, False, f"extension udg_fast._C not loaded: {_C_ERROR}")
        if not _cuda_built():
            return BackendStatus(name, False, False, "extension was built without CUDA")
        if not torch.cuda.is_available():
            return BackendStatus(name, True, False, "built, but no CUDA GPU is available")
        why = _cuda_arch_reason(torch.device("cuda"))  # the current GPU (others: per call)
        return BackendStatus(name, True, why is None, why or "")
    # triton
    ok, why = _triton_importable()
    if not ok:
        return BackendStatus(name, False, False, why)
    if torch.cuda.is_available():
        return BackendStatus(name, True, True, "")
    if triton_interpret():
        return BackendStatus(name, True, True, "CPU tensors under TRITON_INTERPRET=1 (slow; for tests)")
    return BackendStatus(name, True, False, "no CUDA GPU (set TRITON_INTERPRET=1 to run on CPU, slowly)")


def backends() -> dict[str, dict]:
    """For each backend: {"built": bool, "usable": bool, "reason": str}."""
    return {n: backend_status(n).as_dict() for n in BACKENDS}


def format_backends() -> str:
    rows = [("backend", "built", "usable", "note")]
    for n in BACKENDS:
        s = backend_status(n)
        rows.append((n, "yes" if s.built else "no", "yes" if s.usable else "no", s.reason))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}".rstrip() for r in rows)


def arch_runs(built_archs: str, capability: tuple[int, int]) -> bool:
    """Whether kernels built for `built_archs` (UDG_FAST_CUDA_ARCHS, e.g. "8.0;9.0" or "9.0+PTX")
    run on a GPU of compute capability `capability`: machine code for sm_Mm runs on sm_Mn, n ≥ m
    (same major), and PTX for compute_Mm on every capability ≥ M.m (the driver compiles it)."""
    for arch in filter(None, (a.strip() for a in built_archs.replace(",", ";").split(";"))):
        ptx = arch.endswith("+PTX")
        try:
            major, minor = (int(v) for v in arch.removesuffix("+PTX").split("."))
        except ValueError:
            continue
        if (major, minor) <= tuple(capability) and (ptx or major == capability[0]):
            return True
    return False


_cuda_arch_checked: dict[int, str | None] = {}


def _cuda_arch_reason(device: torch.device) -> str | None:
    """Why the built CUDA kernels cannot run on `device`'s GPU (None if they can). Before this check
    a GPU outside the built archs (a T4, sm_75; a Blackwell, sm_100) would have failed at launch
    with "no kernel image is available"; now the automatic choice moves on to Triton."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _cuda_arch_checked:
        built = _C.build_info().get("cuda_archs", "")
        cap = torch.cuda.get_device_capability(index)
        _cuda_arch_checked[index] = None if arch_runs(built, cap) else (
            f"the CUDA kernels were built for {built or 'no arch'}, this GPU is sm_{cap[0]}{cap[1]} "
            f"(rebuild with UDG_FAST_CUDA_ARCHS=\"{cap[0]}.{cap[1]}\")")
    return _cuda_arch_checked[index]


def _ineligible(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why backend `name` cannot run tensors of this device and dtype (None if it can)."""
    st = backend_status(name)
    if not st.usable:
        return st.reason
    if name == "reference":
        return None
    if dtype not in DTYPES[name]:
        allowed = ", ".join(str(d).replace("torch.", "") for d in DTYPES[name])
        return f"dtype {str(dtype).replace('torch.', '')} is not supported (supported: {allowed})"
    if name == "cpu" and device.type != "cpu":
        return f"needs CPU tensors, got {device.type}"
    if name == "cuda":
        return f"needs CUDA tensors, got {device.type}" if device.type != "cuda" else _cuda_arch_reason(device)
    if name == "triton":
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpret():
            return None
        return f"needs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {device.type}"
    return None


def register_cpp_op(name: str, fake_forward, fake_backward, backward, setup_context) -> None:
    """Where the extension loaded: the fake (meta) implementations of the C++ op `udg_fast::name`
    and of `udg_fast::name_backward` (its schema and kernels are in csrc/), and the op's autograd
    (`backward` calls `name_backward`). One place for what every op module registers."""
    if _C is None:
        return
    torch.library.register_fake(f"udg_fast::{name}")(fake_forward)
    torch.library.register_fake(f"udg_fast::{name}_backward")(fake_backward)
    torch.library.register_autograd(f"udg_fast::{name}", backward, setup_context=setup_context)


def constant_result(fn):
    """Mark `fn` as returning a constant for torch.compile: dynamo calls it once while tracing and
    bakes in the result, instead of tracing through the context variable and environment lookups
    of `select` (which would break the graph).

    This is exactly what `torch.compiler.assume_constant_result` does (torch 2.11 – 2.14), minus
    its `import torch._dynamo`, which costs ~3.4 s at `import udg_fast` on the development machine.
    tests/ops/test_gated_linear.py::test_torch_compile_fullgraph fails if the marker stops working.
    """
    fn._dynamo_marked_constant = True
    return fn


def select(op: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs `op` on tensors of this device and dtype."""
    forced = forced_backend(op)
    if forced is not None:
        why = _ineligible(forced, device, dtype)
        if why is not None:
            raise RuntimeError(f"udg_fast.{op}: backend {forced!r} was requested but cannot run here: {why}")
        return forced
    if device.type == "cuda":
        for name in OP_GPU_PREFERENCE.get(op, GPU_PREFERENCE):
            if _ineligible(name, device, dtype) is None:
                return name
        return "reference"
    if device.type == "cpu" and _ineligible("cpu", device, dtype) is None:
        return "cpu"
    return "reference"
