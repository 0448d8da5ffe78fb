"""torch.func transforms over the ops (grad, vmap of grad: per-sample gradients) give autograd's
gradients. The ops' registered autograd is not a functorch transform rule, so under a transform
they run their reference (plain PyTorch); before, every transform stopped at "an autograd.Function
… must override the setup_context staticmethod"."""
from __future__ import annotations

import torch
from torch.func import functional_call, grad, vmap

import udg_fast
from udg_fast.ops import din_attention, gating_networks


def _autograd_grads(module, *args):
    module.zero_grad()
    out = module(*args)
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    return {k: p.grad.clone() for k, p in module.named_parameters()}


def _func_grads(module, *args):
    params = {k: p.detach() for k, p in module.named_parameters()}

    def loss(p):
        out = functional_call(module, p, args)
        return (out[0] if isinstance(out, tuple) else out).sum()
    return grad(loss)(params)


def test_gated_linear_grad_and_per_sample_grads():
    torch.manual_seed(0)
    m = udg_fast.GatedLinear(5, 3, gate_scale=2.0)
    x, g = torch.randn(4, 5), torch.randn(4, 5)
    want = _autograd_grads(m, x, g)
    got = _func_grads(m, x, g)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    params = {k: p.detach() for k, p in m.named_parameters()}
    per_sample = vmap(grad(lambda p, xi, gi: functional_call(m, p, (xi[None], gi[None])).sum()),
                      in_dims=(None, 0, 0))(params, x, g)
    assert per_sample["weight"].shape == (4, 3, 5)
    torch.testing.assert_close(per_sample["weight"].sum(0), want["weight"], rtol=1e-5, atol=1e-5)


def test_augru_grad():
    torch.manual_seed(1)
    cell = udg_fast.AUGRU(3, 4)
    xs, att, lengths = torch.randn(2, 5, 3), torch.rand(2, 5), torch.tensor([5, 2])
    want = _autograd_grads(cell, xs, att, lengths)
    got = _func_grads(cell, xs, att, lengths)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_din_attention_and_gating_networks_grad():
    torch.manual_seed(2)
    q, k = torch.randn(2, 3), torch.randn(2, 4, 3)
    mask = torch.arange(4) < torch.tensor([4, 1])[:, None]
    w1, b1, w2, b2 = torch.randn(5, 12), torch.randn(5), torch.randn(1, 5), torch.randn(1)
    got = grad(lambda q: din_attention(q, k, mask, w1, b1, [w2], [b2]).sum())(q)
    qq = q.clone().requires_grad_()
    din_attention(qq, k, mask, w1, b1, [w2], [b2]).sum().backward()
    torch.testing.assert_close(got, qq.grad)

    u = torch.randn(6, 4)
    ws = [torch.randn(10, 4), torch.randn(10), torch.randn(2, 5, 5), torch.randn(2, 1, 5)]
    w3, b3 = [torch.randn(3, 5), torch.randn(2, 5)], [torch.randn(3), torch.randn(2)]
    got = grad(lambda u: sum(o.sum() for o in gating_networks(u, *ws, w3, b3)))(u)
    uu = u.clone().requires_grad_()
    sum(o.sum() for o in gating_networks(uu, *ws, w3, b3)).backward()
    torch.testing.assert_close(got, uu.grad, rtol=1e-5, atol=1e-5)
