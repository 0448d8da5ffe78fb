"""Helpers shared by the op tests: backend parametrisation and reference comparison."""
from __future__ import annotations

import contextlib

import pytest
import torch

import udg_fast

FAST_BACKENDS = ("cpu", "triton", "cuda")


def backend_params():
    """pytest params for every fast backend; unusable ones skip with the reason backends() gives."""
    params = []
    status = udg_fast.backends()
    for name in FAST_BACKENDS:
        marks = [pytest.mark.cuda] if name == "cuda" else []
        if not status[name]["usable"]:
            marks.append(pytest.mark.skip(reason=f"backend {name!r} not usable: {status[name]['reason']}"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def skip_unless_usable(backend: str) -> None:
    """Skip the calling test, with backends()'s reason, where `backend` cannot run here."""
    st = udg_fast.backends()[backend]
    if not st["usable"]:
        pytest.skip(f"backend {backend!r} not usable: {st['reason']}")


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to `n` inside the block, restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def device_for(backend: str) -> torch.device:
    if backend == "cpu":
        return torch.device("cpu")
    if backend == "cuda" or torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")  # triton under TRITON_INTERPRET=1


def assert_close_to_reference(name, fast, ref64, ref_same_precision, *, floor):
    """flash-attention's rule: the fast path's error against a float64 reference is at most 2× the
    error of the same computation done by eager PyTorch in the fast path's precision, plus a small
    absolute floor (relative to the tensor's magnitude) for results that eager gets exactly.
    Fails naming the tensor.
    """
    assert fast.shape == ref64.shape, f"{name}: shape {tuple(fast.shape)} != reference {tuple(ref64.shape)}"
    if fast.numel() == 0:
        return
    fast64, same64 = fast.detach().double().cpu(), ref_same_precision.detach().double().cpu()
    ref = ref64.detach().double().cpu()
    err = (fast64 - ref).abs().max().item()
    err_same = (same64 - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    bound = 2 * err_same + floor * scale
    assert err <= bound, (
        f"{name}: max abs error {err:.3e} against the float64 reference exceeds {bound:.3e} "
        f"(2 × eager same-precision error {err_same:.3e} + {floor:g} × {scale:.3g})")


def assert_all_close_to_reference(backend, names, fast, ref64, ref_same_precision, *, floor, dtype=None):
    """`assert_close_to_reference` for every tensor of an op's outputs and gradients, each present
    (and of `dtype` when given)."""
    for name, f, r64, r32 in zip(names, fast, ref64, ref_same_precision, strict=True):
        assert f is not None, f"[{backend}] {name}: missing gradient"
        assert dtype is None or f.dtype == dtype, f"[{backend}] {name}: dtype {f.dtype}, expected {dtype}"
        assert_close_to_reference(f"[{backend}] {name}", f, r64, r32, floor=floor)


def assert_compile_matches_eager(backend, fn, module, *inputs):
    """torch.compile(fullgraph=True) of `fn(module, *inputs)` on `backend`: no graph break, and the
    compiled output and the gradients of every parameter of `module` and of every floating input
    equal the eager run's (the same kernels run in both, so tolerances are float32 rounding)."""
    import udg_fast

    def run(f):
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        module.zero_grad(set_to_none=True)
        with udg_fast.use_backend(backend):
            y = f(module, *leaves)
            y.backward(torch.ones_like(y) + torch.arange(y.numel(), device=y.device).view_as(y) / y.numel())
        grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}
        grads.update({f"input {i}": t.grad for i, t in enumerate(leaves) if t.is_floating_point()})
        return y.detach(), grads

    y_eager, g_eager = run(fn)
    torch._dynamo.reset()
    y, g = run(torch.compile(fn, fullgraph=True))
    torch.testing.assert_close(y, y_eager, msg=lambda m: f"[{backend}] compiled output: {m}")
    assert g.keys() == g_eager.keys()
    for name in g_eager:
        torch.testing.assert_close(g[name], g_eager[name], msg=lambda m, name=name: f"[{backend}] compiled grad of {name}: {m}")
