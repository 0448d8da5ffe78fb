"""udg_fast.ops.gating_networks (the UDG gating networks GN^(l), Eq. 6, all L at once): every
backend against L separate three-layer networks in float64, the gate logits and every gradient
(u, fc1, fc2, each fc3), on odd shapes; many blocks and groups; float64 gradcheck; opcheck;
torch.compile; determinism; NaN stays in its row; bad input (double backward:
test_double_backward.py)."""
from __future__ import annotations

import pytest
import torch

import udg_fast
from udg_fast.models.gating import GatingNetworks
from udg_fast.ops import gating_networks, gating_networks_reference
from udg_fast.ops.gating_networks import _gating_networks_eager

from ._utils import (assert_all_close_to_reference, assert_compile_matches_eager, backend_params, device_for,
                     skip_unless_usable, torch_threads)

FLOOR = {torch.float32: 1e-6, torch.float64: 1e-12}

# (B, Du, H, K_l per network): one network to four, odd widths; the last two span several
# 256-row blocks (and, with 2 threads, several groups of weight-gradient partials).
CASES = [
    (1, 1, 1, (1,)),
    (3, 5, 7, (3, 11)),
    (0, 4, 3, (2, 5)),
    (17, 90, 90, (144, 256, 128)),
    (33, 13, 6, (9, 4, 7, 1)),
    (700, 90, 32, (172, 128, 128)),
    (1031, 20, 9, (30, 1)),
]


def _ids(c):
    return f"B{c[0]}-Du{c[1]}-H{c[2]}-K{'x'.join(map(str, c[3]))}"


def _inputs(B, Du, H, ks, seed):
    """float64 leaves: u, fc1 weight/bias, fc2 weight/bias, then the fc3 weights and biases."""
    g = torch.Generator().manual_seed(seed)
    L = len(ks)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    return [r(B, Du), r(L * H, Du, scale=Du ** -0.5), r(L * H, scale=0.5), r(L, H, H, scale=H ** -0.5),
            r(L, 1, H, scale=0.5), *[r(k, H, scale=H ** -0.5) for k in ks], *[r(k, scale=0.5) for k in ks]], g


def _call(fn, ls, L):
    return fn(ls[0], ls[1], ls[2], ls[3], ls[4], ls[5:5 + L], ls[5 + L:])


def _run(fn, leaves, L, grads):
    ls = [t.detach().clone().requires_grad_(True) for t in leaves]
    out = _call(fn, ls, L)
    torch.autograd.backward(out, [g.to(o) for g, o in zip(grads, out)])
    return [o.detach() for o in out], [t.grad for t in ls]


def _check(backend, case, dtype, seed):
    B, Du, H, ks = case
    leaves, g = _inputs(B, Du, H, ks, seed)
    grads = [torch.randn(B, k, generator=g, dtype=torch.float64) for k in ks]
    device = device_for(backend)
    leaves = [t.to(device) for t in leaves]
    grads = [t.to(device) for t in grads]
    L = len(ks)
    with udg_fast.use_backend(backend):
        out, dl = _run(gating_networks, [t.to(dtype) for t in leaves], L, grads)
    with udg_fast.use_backend("reference"):
        out64, dl64 = _run(gating_networks_reference, leaves, L, grads)
        out32, dl32 = _run(gating_networks_reference, [t.to(dtype) for t in leaves], L, grads)
    names = ([f"logits[{i}]" for i in range(L)] + ["du", "dfc1_weight", "dfc1_bias", "dfc2_weight", "dfc2_bias"]
             + [f"dfc3_weights[{i}]" for i in range(L)] + [f"dfc3_biases[{i}]" for i in range(L)])
    assert_all_close_to_reference(backend, names, out + dl, out64 + dl64, out32 + dl32, floor=FLOOR[dtype],
                                  dtype=dtype)



@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_matches_reference(backend, case):
    _check(backend, case, torch.float32, seed=CASES.index(case))


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("case", CASES[5:], ids=_ids)
def test_cpu_block_and_group_boundaries(threads, case):
    skip_unless_usable("cpu")
    with torch_threads(threads):
        _check("cpu", case, torch.float32, seed=100 + threads)


def test_cpu_float64_matches_reference():
    skip_unless_usable("cpu")
    for i, case in enumerate(CASES[:5]):
        _check("cpu", case, torch.float64, seed=200 + i)


@pytest.mark.parametrize("case", [CASES[3], CASES[5]], ids=_ids)
def test_cpu_autocast_runs_the_gemms_in_bf16(case):
    """Under CPU autocast the op casts its inputs to bf16 (as autocast does for F.linear), so the
    automatic choice runs its eager form with bf16 GEMMs (the C++ kernel is fp32: logits would
    come back float32). Logits and every gradient against the float64 reference, within 2x the
    error of the reference networks run under the same autocast."""
    B, Du, H, ks = case
    L = len(ks)
    leaves, g = _inputs(B, Du, H, ks, seed=300 + B)
    grads = [torch.randn(B, k, generator=g, dtype=torch.float64) for k in ks]
    f32 = [t.float() for t in leaves]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the automatic backend choice
        out, dl = _run(gating_networks, f32, L, grads)
    with udg_fast.use_backend("reference"), torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf, dl_bf = _run(gating_networks_reference, f32, L, grads)
    out64, dl64 = _run(gating_networks_reference, leaves, L, grads)
    assert [o.dtype for o in out] == [torch.bfloat16] * L
    assert all(d.dtype == torch.float32 for d in dl)  # the leaves' (fp32) gradients
    names = ([f"logits[{i}]" for i in range(L)] + ["du", "dfc1_weight", "dfc1_bias", "dfc2_weight", "dfc2_bias"]
             + [f"dfc3_weights[{i}]" for i in range(L)] + [f"dfc3_biases[{i}]" for i in range(L)])
    assert_all_close_to_reference("cpu+autocast", names, out + dl, out64 + dl64, out_bf + dl_bf, floor=1e-2)


def test_eager_form_matches_reference():
    """The form the GPU backends and torch.compile run, on CPU."""
    leaves, g = _inputs(6, 7, 5, (4, 9, 2), seed=7)
    grads = [torch.randn(6, k, generator=g, dtype=torch.float64) for k in (4, 9, 2)]
    out, dl = _run(_gating_networks_eager, leaves, 3, grads)
    out64, dl64 = _run(gating_networks_reference, leaves, 3, grads)
    for i, (a, b) in enumerate(zip(out + dl, out64 + dl64)):
        torch.testing.assert_close(a, b, msg=lambda m, i=i: f"tensor {i}: {m}")


def test_gradcheck_float64_cpu():
    skip_unless_usable("cpu")
    leaves, _ = _inputs(3, 4, 3, (2, 5), seed=11)
    leaves = [t.requires_grad_(True) for t in leaves]

    def f(*ls):
        with udg_fast.use_backend("cpu"):
            return tuple(_call(gating_networks, ls, 2))

    assert torch.autograd.gradcheck(f, leaves)


def test_opcheck_cpp_op():
    skip_unless_usable("cpu")
    leaves, _ = _inputs(5, 6, 4, (3, 7), seed=12)
    ls = [t.float().requires_grad_(True) for t in leaves]
    args = (ls[0], ls[1], ls[2], ls[3], ls[4], ls[5:7], ls[7:])
    torch.library.opcheck(torch.ops.udg_fast.gating_networks.default, args)


def test_deterministic_and_nan_stays_in_its_row():
    """Two runs give the same bits; a NaN in one row of u makes that row's logits and du NaN and
    no other row's (as the eager form: the weight gradients, sums over rows, do get it)."""
    skip_unless_usable("cpu")
    leaves, g = _inputs(600, 10, 8, (6, 5), seed=14)
    leaves = [t.float() for t in leaves]
    leaves[0][3, 2] = float("nan")
    grads = [torch.randn(600, k, generator=g, dtype=torch.float64) for k in (6, 5)]
    with udg_fast.use_backend("cpu"):
        o1, d1 = _run(gating_networks, leaves, 2, grads)
        o2, d2 = _run(gating_networks, leaves, 2, grads)
    for a, b in zip(o1 + d1, o2 + d2):  # the same bits, NaN where NaN (it reaches the weight sums)
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    for o in o1:
        assert torch.isnan(o[3]).all() and torch.isfinite(torch.cat([o[:3], o[4:]])).all()
    assert torch.isfinite(torch.cat([d1[0][:3], d1[0][4:]])).all()


def test_nan_gradients_match_the_reference():
    """NaN in u and in a weight: every gradient, NaN pattern included, is the eager form's (the
    hidden ReLUs' backward passes the gradient at a NaN activation, as torch's)."""
    skip_unless_usable("cpu")
    leaves, g = _inputs(50, 7, 6, (5, 4), seed=21)
    leaves = [t.float() for t in leaves]
    leaves[0][3, 2] = float("nan")
    leaves[3][1, 2, 4] = float("nan")  # fc2 of the second network
    grads = [torch.randn(50, k, generator=g, dtype=torch.float64) for k in (5, 4)]
    with udg_fast.use_backend("cpu"):
        o, d = _run(gating_networks, leaves, 2, grads)
    with udg_fast.use_backend("reference"):
        o_ref, d_ref = _run(gating_networks, leaves, 2, grads)
    for i, (fast, ref) in enumerate(zip(o + d, o_ref + d_ref)):
        assert torch.equal(torch.isnan(fast), torch.isnan(ref)), f"tensor {i}: NaN pattern differs"
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5, equal_nan=True, msg=f"tensor {i}")


def test_module_compiles_fullgraph():
    skip_unless_usable("cpu")
    torch.manual_seed(0)
    gn = GatingNetworks(9, [5, 7, 3], hidden=6)
    u = torch.randn(11, 9)
    assert_compile_matches_eager("cpu", lambda m, u: torch.cat(m(u), 1), gn, u)


def _ok():
    leaves, _ = _inputs(2, 4, 3, (5, 6), seed=16)
    ls = [t.float() for t in leaves]
    return [ls[0], ls[1], ls[2], ls[3], ls[4], ls[5:7], ls[7:]]


def _with(i, v):
    a = _ok()
    a[i] = v
    return a


@pytest.mark.parametrize("args,exc,match", [
    (_with(0, torch.randn(2, 4, 1)), ValueError, r"u must be \[B, Du\]"),
    (_with(1, torch.randn(6, 5)), ValueError, r"fc1_weight must be \[L·H = 6, Du = 4\]"),
    (_with(2, torch.randn(5)), ValueError, r"fc1_bias must be \[6\]"),
    (_with(3, torch.randn(2, 3, 4)), ValueError, r"fc2_weight must be \[L, H, H\]"),
    (_with(4, torch.randn(2, 3)), ValueError, r"fc2_bias must be \[2, 1, 3\]"),
    (_with(5, [torch.randn(5, 3)]), ValueError, "must hold L = 2 tensors"),
    (_with(5, [torch.randn(5, 4), torch.randn(6, 3)]), ValueError, r"fc3_weights\[0\] must be \[K, H = 3\]"),
    (_with(6, [torch.randn(5), torch.randn(5)]), ValueError, r"fc3_biases\[1\] must be \[6\]"),
    (_with(5, torch.randn(5, 3)), TypeError, "must be lists of tensors"),
    (_with(1, torch.randn(6, 4).double()), TypeError, "fc1_weight has dtype torch.float64"),
    (_with(0, torch.randn(2, 4).numpy()), TypeError, "u must be a torch.Tensor"),
])
def test_bad_input_names_the_argument(args, exc, match):
    with pytest.raises(exc, match=match):
        gating_networks(*args)


def test_noncontiguous_inputs():
    """Strided u and weights give the contiguous inputs' logits on the cpu backend."""
    leaves, _ = _inputs(6, 5, 4, (3, 7), seed=22)
    leaves = [t.float() for t in leaves]
    args = [t.t().contiguous().t() if t.dim() == 2 else t for t in leaves]
    assert not args[0].is_contiguous()
    skip_unless_usable("cpu")
    with udg_fast.use_backend("cpu"):  # it copies strided inputs once: the same bits
        want = _call(gating_networks, leaves, 2)
        got = _call(gating_networks, args, 2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_gate_left_out_of_the_loss_gets_no_gradient_contribution():
    """Only some logits in the loss (the others' gradients arrive as None: not zero-filled by
    autograd): the cpu op's gradients equal the reference's."""
    skip_unless_usable("cpu")
    leaves, g = _inputs(9, 5, 4, (3, 6, 2), seed=23)
    w = torch.randn(9, 6, generator=g, dtype=torch.float64)

    def grads(fn, backend):
        ls = [t.detach().clone().requires_grad_(True) for t in leaves]
        with udg_fast.use_backend(backend):
            out = _call(fn, ls, 3)
        return torch.autograd.grad((out[1] * w).sum(), ls, allow_unused=True)

    got, want = grads(gating_networks, "cpu"), grads(gating_networks_reference, "reference")
    for i, (a, b) in enumerate(zip(got, want)):
        if b is None:  # fc3 of the networks left out: no gradient in either
            assert a is None or (a == 0).all(), f"tensor {i}"
            continue
        torch.testing.assert_close(a, b, msg=lambda m, i=i: f"tensor {i}: {m}")
