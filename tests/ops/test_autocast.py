"""The ops under torch.autocast: they cast their own inputs the way autocast treats the torch op
each resembles (udg_fast._backend.AUTOCAST_POLICY), so a user's model that feeds them from an
nn.Linear under autocast runs (it used to stop at "weight has dtype float32, expected the dtype of
x (bfloat16)"), every backend gives the same dtype, and the gradients reach the fp32 parameters.

    gated_linear, gating_networks   the autocast dtype, as F.linear
    augru, din_attention            the widest input dtype (fp32 parameters keep them fp32)
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import udg_fast
from udg_fast.ops import augru, din_attention, gating_networks

BF16 = torch.bfloat16


def _grads(params):
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize("backend", ["reference", None], ids=["reference", "automatic"])
def test_gated_linear_fed_by_linear_layers(backend):
    """x and the gate from nn.Linear layers (bf16 under autocast), GatedLinear's fp32 parameters:
    computed in bf16, like the explicit bf16 formula, fp32 gradients (the fp32 C++ kernel cannot
    take bf16: the automatic choice runs the eager form, a forced "cpu" says why it cannot)."""
    torch.manual_seed(0)
    pre, gate, gl = nn.Linear(8, 8), nn.Linear(8, 8), udg_fast.GatedLinear(8, 5, gate_scale=2.0)
    x = torch.randn(6, 8)
    with udg_fast.use_backend(backend), torch.autocast("cpu", dtype=BF16):
        y = gl(pre(x), gate(x))
    assert y.dtype == BF16
    y.float().sum().backward()
    assert gl.weight.grad.dtype == torch.float32 and pre.weight.grad is not None
    with torch.autocast("cpu", dtype=BF16):  # the formula in the dtype autocast gives F.linear
        h, g = pre(x), gate(x)
    ref = torch.relu(nn.functional.linear(2.0 * torch.sigmoid(g.detach()) * h.detach(), gl.weight.detach().to(BF16),
                                          gl.bias.detach().to(BF16)))
    torch.testing.assert_close(y.detach(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", ["reference", None], ids=["reference", "automatic"])
def test_gating_networks_take_the_autocast_dtype(backend):
    torch.manual_seed(1)
    L, H, Du, B = 2, 6, 5, 7
    u = nn.Linear(4, Du)(torch.randn(B, 4))  # fp32 outside autocast
    params = [torch.randn(L * H, Du), torch.randn(L * H), torch.randn(L, H, H), torch.randn(L, 1, H),
              torch.randn(3, H), torch.randn(4, H), torch.randn(3), torch.randn(4)]
    params = [p.requires_grad_() for p in params]
    with udg_fast.use_backend(backend), torch.autocast("cpu", dtype=BF16):
        out = gating_networks(u.to(BF16), *params[:4], params[4:6], params[6:])
    assert [o.dtype for o in out] == [BF16, BF16]
    sum(o.float().sum() for o in out).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


def test_a_forced_fp32_backend_under_autocast_says_why():
    gl = udg_fast.GatedLinear(4, 3)
    x = torch.randn(2, 4)
    with udg_fast.use_backend("cpu"), torch.autocast("cpu", dtype=BF16):
        with pytest.raises(RuntimeError, match="backend 'cpu' was requested but cannot run here: .*bfloat16"):
            gl(x, x)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_din_attention_with_a_bf16_query_runs_in_fp32(backend):
    """A bf16 query (from an nn.Linear under autocast) beside fp32 keys and weights: promoted to
    fp32 on every backend — the same scores as the fp32 op on the same (bf16-rounded) query."""
    torch.manual_seed(2)
    B, T, D = 4, 5, 3
    k = torch.randn(B, T, D)
    mask = torch.arange(T) < torch.tensor([5, 2, 0, 3])[:, None]
    w = [torch.randn(6, 4 * D), torch.randn(6), torch.randn(1, 6), torch.randn(1)]
    q = torch.randn(B, D).to(BF16)
    with udg_fast.use_backend(backend), torch.autocast("cpu", dtype=BF16):
        s = din_attention(q, k, mask, w[0], w[1], [w[2]], [w[3]], "sigmoid")
    assert s.dtype == torch.float32
    with udg_fast.use_backend(backend):
        ref = din_attention(q.float(), k, mask, w[0], w[1], [w[2]], [w[3]], "sigmoid")
    torch.testing.assert_close(s, ref)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_augru_fed_by_a_linear_layer_runs_in_fp32(backend):
    torch.manual_seed(3)
    proj, cell = nn.Linear(4, 3), udg_fast.AUGRU(3, 5)
    xs = torch.randn(2, 6, 4)
    lengths = torch.tensor([6, 3])
    with udg_fast.use_backend(backend), torch.autocast("cpu", dtype=BF16):
        x = proj(xs)
        assert x.dtype == BF16
        out, h = cell(x, lengths=lengths)
    assert out.dtype == h.dtype == torch.float32
    (out.sum() + h.sum()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in cell.parameters())
    with udg_fast.use_backend(backend):
        ref, _ = cell(x.detach().float(), lengths=lengths)
    torch.testing.assert_close(out.detach(), ref.detach())


def test_functional_augru_under_autocast_matches_fp32():
    """All-fp32 inputs under autocast: the op runs in fp32 with autocast off inside (its eager
    form's F.linear would otherwise turn bf16): the same result as without autocast."""
    torch.manual_seed(4)
    x, wi, wh = torch.randn(3, 4, 2), torch.randn(9, 2), torch.randn(9, 3)
    with udg_fast.use_backend("reference"):
        plain = augru(x, wi, wh)[0]
        with torch.autocast("cpu", dtype=BF16):
            cast = augru(x, wi, wh)[0]
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain, rtol=0, atol=0)
    # tensors passed by keyword are cast too: a bf16 x beside fp32 weights runs in fp32
    with torch.autocast("cpu", dtype=BF16):
        by_name = augru(x=x.to(BF16), weight_ih=wi, weight_hh=wh, lengths=torch.tensor([4, 1, 0]))[0]
    assert by_name.dtype == torch.float32
