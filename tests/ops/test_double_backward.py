"""Double backward (create_graph=True) through the fused ops: the fused backward kernels are not
differentiable, so under create_graph the ops return the reference's gradient, recomputed under
autograd. Without this the second-order terms were silently 0 (found by the cold-start
meta-learning, Algorithm 1, whose meta-gradient flows through an inner gradient step).

Checks: second-order gradients equal the reference's on odd shapes; float64 gradgradcheck on the
`cpu` backend; a plain backward still runs the fused kernel (never the recomputation)."""
from __future__ import annotations

import sys

import pytest
import torch

import udg_fast
from udg_fast.ops import augru, augru_reference, gated_linear, gated_linear_reference

from ._utils import backend_params, device_for


def _second_order(fn, leaves, seed):
    """∂/∂leaves of Σ_i <∂L/∂leaf_i, v_i>, L = <fn(leaves), u>, u, v random: every second-order
    path (the Hessian-vector products of the op) in one vector."""
    g = torch.Generator().manual_seed(seed)
    outs = fn(*leaves)
    outs = (outs,) if isinstance(outs, torch.Tensor) else outs
    # Drawn in float64 and cast, so that the float32 run and the float64 reference see one u and v.
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o)).sum() for o in outs)
    first = torch.autograd.grad(loss, leaves, create_graph=True)
    inner = sum((f * torch.randn(f.shape, generator=g, dtype=torch.float64).to(f)).sum() for f in first)
    second = torch.autograd.grad(inner, leaves, allow_unused=True)
    return [f.detach() for f in first], [torch.zeros_like(l) if s is None else s for l, s in zip(leaves, second)]


def _gl_inputs(B, K, N, device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(B, K, generator=g, dtype=torch.float64), torch.randn(B, K, generator=g, dtype=torch.float64),
          torch.randn(N, K, generator=g, dtype=torch.float64) * K ** -0.5, torch.randn(N, generator=g, dtype=torch.float64)]
    return [t.to(device=device, dtype=dtype).requires_grad_(True) for t in ts]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("act", ["relu", "none"])
@pytest.mark.parametrize("shape", [(7, 13, 5), (1, 3, 1), (33, 40, 17)], ids=lambda s: "x".join(map(str, s)))
def test_gated_linear_second_order_matches_reference(backend, act, shape):
    B, K, N = shape
    device = device_for(backend)
    seed = 7 + B + K + N
    leaves = _gl_inputs(B, K, N, device, torch.float32, seed)
    with udg_fast.use_backend(backend):
        first, second = _second_order(lambda x, g, w, b: gated_linear(x, g, w, b, act, 2.0), leaves, seed)
    ref_leaves = [l.detach().double().cpu().requires_grad_(True) for l in leaves]
    ref_first, ref_second = _second_order(lambda x, g, w, b: gated_linear_reference(x, g, w, b, act, 2.0),
                                          ref_leaves, seed)
    for name, got, want in zip(["x", "gate_logits", "weight", "bias"] * 2, first + second, ref_first + ref_second):
        torch.testing.assert_close(got.double().cpu(), want, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, name=name: f"[{backend}] {name}: {m}")
    assert any(s.abs().sum() > 0 for s in second), "the second-order terms must not all vanish"


def _augru_inputs(B, T, I, H, device, dtype, seed):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    leaves = [r(B, T, I), r(3 * H, I, scale=I ** -0.5), r(3 * H, H, scale=H ** -0.5), r(3 * H, scale=0.5),
              r(3 * H, scale=0.5), torch.rand(B, T, generator=g, dtype=torch.float64).to(device=device, dtype=dtype),
              r(B, H, scale=0.5)]
    leaves = [t.requires_grad_(True) for t in leaves]
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0] = T
    return leaves, lengths.to(device)


def _augru_fn(op, lengths):
    return lambda x, wi, wh, bi, bh, a, h0: op(x, wi, wh, bi, bh, a, lengths, h0)


@pytest.mark.parametrize("backend", backend_params())
def test_augru_second_order_matches_reference(backend):
    B, T, I, H = 5, 4, 3, 6
    device = device_for(backend)
    leaves, lengths = _augru_inputs(B, T, I, H, device, torch.float32, seed=17)
    with udg_fast.use_backend(backend):
        first, second = _second_order(_augru_fn(augru, lengths), leaves, seed=17)
    ref_leaves = [l.detach().double().cpu().requires_grad_(True) for l in leaves]
    ref_first, ref_second = _second_order(_augru_fn(augru_reference, lengths.cpu()), ref_leaves, seed=17)
    names = ["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "att", "h0"]
    for name, got, want in zip(names * 2, first + second, ref_first + ref_second):
        torch.testing.assert_close(got.double().cpu(), want, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, name=name: f"[{backend}] {name}: {m}")


def test_gradgradcheck_float64_cpu():
    if not udg_fast.backends()["cpu"]["usable"]:
        pytest.skip("backend 'cpu' not usable")
    leaves = _gl_inputs(4, 5, 3, "cpu", torch.float64, seed=3)
    with udg_fast.use_backend("cpu"):
        assert torch.autograd.gradgradcheck(lambda x, g, w, b: gated_linear(x, g, w, b, "relu", 1.5), leaves)
        leaves, lengths = _augru_inputs(3, 3, 2, 2, "cpu", torch.float64, seed=4)
        assert torch.autograd.gradgradcheck(_augru_fn(augru, lengths), leaves)


def test_plain_backward_runs_the_fused_kernel(monkeypatch):
    """The recomputation is for create_graph only: a training step's backward never takes it."""
    if not udg_fast.backends()["cpu"]["usable"]:
        pytest.skip("backend 'cpu' not usable")

    def boom(*a, **k):
        raise AssertionError("reference_vjp ran in a plain backward")

    for mod in ("udg_fast.ops.gated_linear", "udg_fast.ops.augru"):  # the modules, not the functions
        monkeypatch.setattr(sys.modules[mod], "reference_vjp", boom)
    with udg_fast.use_backend("cpu"):
        x, g, w, b = _gl_inputs(6, 5, 4, "cpu", torch.float32, seed=1)
        gated_linear(x, g, w, b).sum().backward()
        leaves, lengths = _augru_inputs(3, 4, 2, 3, "cpu", torch.float32, seed=2)
        out, hn = _augru_fn(augru, lengths)(*leaves)
        (out.sum() + hn.sum()).backward()
    assert x.grad is not None and leaves[0].grad is not None
