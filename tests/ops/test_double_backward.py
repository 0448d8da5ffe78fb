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
from udg_fast.ops import (augru, augru_reference, din_attention, din_attention_reference, gated_linear,
                          gated_linear_reference, gating_networks, gating_networks_reference)

from ._utils import backend_params, device_for
from .test_din_attention import _inputs as _din_inputs
from .test_din_attention import _mask as _din_mask
from .test_gating_networks import _inputs as _gn_inputs


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


def _din_fn(op, mask, n):
    return lambda q, k, w1, b1, *p: op(q, k, mask, w1, b1, list(p[:n]), list(p[n:]), "sigmoid")


def _gn_fn(op, L):
    return lambda u, w1, b1, w2, b2, *p: op(u, w1, b1, w2, b2, list(p[:L]), list(p[L:]))


def _compare_second_order(backend, names, fn, ref_fn, leaves, seed):
    with udg_fast.use_backend(backend):
        first, second = _second_order(fn, leaves, seed)
    ref_leaves = [l.detach().double().cpu().requires_grad_(True) for l in leaves]
    ref_first, ref_second = _second_order(ref_fn, ref_leaves, seed)
    for name, got, want in zip(names * 2, first + second, ref_first + ref_second):
        torch.testing.assert_close(got.double().cpu(), want, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, name=name: f"[{backend}] {name}: {m}")
    assert any(s.abs().sum() > 0 for s in second), "the second-order terms must not all vanish"


@pytest.mark.parametrize("backend", backend_params())
def test_din_attention_second_order_matches_reference(backend):
    leaves, g = _din_inputs(4, 6, 3, (5, 4), seed=15)
    mask = _din_mask("random", 4, 6, g)
    device = device_for(backend)
    leaves = [t.to(device=device, dtype=torch.float32).requires_grad_(True) for t in leaves]
    _compare_second_order(backend, ["query", "keys", "fc1_weight", "fc1_bias", "w2", "w3", "b2", "b3"],
                          _din_fn(din_attention, mask.to(device), 2), _din_fn(din_attention_reference, mask, 2),
                          leaves, seed=15)


@pytest.mark.parametrize("backend", backend_params())
def test_gating_networks_second_order_matches_reference(backend):
    leaves, _ = _gn_inputs(5, 4, 3, (2, 6), seed=16)
    device = device_for(backend)
    leaves = [t.to(device=device, dtype=torch.float32).requires_grad_(True) for t in leaves]
    _compare_second_order(backend, ["u", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "w3_0", "w3_1",
                                    "b3_0", "b3_1"],
                          _gn_fn(gating_networks, 2), _gn_fn(gating_networks_reference, 2), leaves, seed=16)


def test_gradgradcheck_float64_cpu():
    if not udg_fast.backends()["cpu"]["usable"]:
        pytest.skip("backend 'cpu' not usable")
    leaves = _gl_inputs(4, 5, 3, "cpu", torch.float64, seed=3)
    with udg_fast.use_backend("cpu"):
        assert torch.autograd.gradgradcheck(lambda x, g, w, b: gated_linear(x, g, w, b, "relu", 1.5), leaves)
        leaves, lengths = _augru_inputs(3, 3, 2, 2, "cpu", torch.float64, seed=4)
        assert torch.autograd.gradgradcheck(_augru_fn(augru, lengths), leaves)
        leaves, g = _din_inputs(2, 3, 2, (3, 2), seed=5)
        mask = _din_mask("random", 2, 3, g)
        assert torch.autograd.gradgradcheck(_din_fn(din_attention, mask, 2), [t.requires_grad_(True) for t in leaves])
        leaves, _ = _gn_inputs(3, 2, 2, (2, 3), seed=6)
        assert torch.autograd.gradgradcheck(_gn_fn(gating_networks, 2), [t.requires_grad_(True) for t in leaves])


def test_plain_backward_runs_the_fused_kernel(monkeypatch):
    """The recomputation is for create_graph only: a training step's backward never takes it."""
    if not udg_fast.backends()["cpu"]["usable"]:
        pytest.skip("backend 'cpu' not usable")

    def boom(*a, **k):
        raise AssertionError("reference_vjp ran in a plain backward")

    for mod in ("udg_fast.ops.gated_linear", "udg_fast.ops.augru", "udg_fast.ops.din_attention",
                "udg_fast.ops.gating_networks"):  # the modules, not the functions
        monkeypatch.setattr(sys.modules[mod], "reference_vjp", boom)
    with udg_fast.use_backend("cpu"):
        x, g, w, b = _gl_inputs(6, 5, 4, "cpu", torch.float32, seed=1)
        gated_linear(x, g, w, b).sum().backward()
        leaves, lengths = _augru_inputs(3, 4, 2, 3, "cpu", torch.float32, seed=2)
        out, hn = _augru_fn(augru, lengths)(*leaves)
        (out.sum() + hn.sum()).backward()
        din, g = _din_inputs(3, 4, 2, (3, 2), seed=3)
        din = [t.float().requires_grad_(True) for t in din]
        _din_fn(din_attention, _din_mask("prefix", 3, 4, g), 2)(*din).sum().backward()
        gn, _ = _gn_inputs(3, 2, 2, (2, 3), seed=4)
        gn = [t.float().requires_grad_(True) for t in gn]
        sum(o.sum() for o in _gn_fn(gating_networks, 2)(*gn)).backward()
    assert x.grad is not None and leaves[0].grad is not None and din[0].grad is not None and gn[0].grad is not None
