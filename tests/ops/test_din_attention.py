"""udg_fast.ops.din_attention (DIN's local activation unit): every backend against the literal
4D-concat reference in float64, the scores and every gradient (query, keys, fc1, every later
layer), on odd shapes with random masks (empty and full rows, non-prefix patterns, no mask);
many blocks and groups; float64 gradcheck; opcheck; torch.compile; determinism; a NaN at a padded
step stays there; bad input (double backward: test_double_backward.py)."""
from __future__ import annotations

import pytest
import torch

import udg_fast
from udg_fast.models.din import AttentionUnit
from udg_fast.ops import din_attention, din_attention_reference
from udg_fast.ops.din_attention import _din_attention_eager

from ._utils import (assert_all_close_to_reference, assert_compile_matches_eager, backend_params, device_for,
                     skip_unless_usable, torch_threads)

FLOOR = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2, torch.float16: 1e-3}
GRAD_NAMES = ["dquery", "dkeys", "dfc1_weight", "dfc1_bias"]

# (B, T, D, hidden, activation, mask kind): odd sizes, one hidden layer to three, both activations.
# The last two have more valid steps than one 512-step block, so several blocks and (with 2
# threads) several groups of weight-gradient partials.
CASES = [
    (1, 1, 1, (3,), "sigmoid", "random"),
    (3, 7, 5, (7, 5), "relu", "prefix"),
    (5, 13, 3, (11, 5), "sigmoid", "none"),
    (7, 50, 36, (80, 40), "sigmoid", "prefix"),
    (4, 9, 6, (9, 7, 5), "relu", "random"),
    (2, 6, 4, (5, 3), "sigmoid", "empty"),
    (0, 5, 4, (5, 3), "sigmoid", "prefix"),
    (37, 33, 18, (80, 40), "relu", "random"),
    (300, 50, 36, (80, 40), "sigmoid", "prefix"),
    (61, 129, 8, (6,), "relu", "prefix"),
]


def _ids(c):
    B, T, D, hidden, act, mask = c
    return f"B{B}-T{T}-D{D}-{'x'.join(map(str, hidden))}-{act}-{mask}"


def _mask(kind, B, T, g):
    if kind == "none":
        return None
    if kind == "empty":
        return torch.zeros(B, T, dtype=torch.bool)
    if kind == "random":  # not a prefix: any pattern of valid steps
        m = torch.rand(B, T, generator=g) < 0.6
    else:
        lengths = torch.randint(0, T + 1, (B,), generator=g)
        m = torch.arange(T) < lengths[:, None]
    if B >= 2:  # always a user with no valid step and one with all
        m[0], m[1] = True, False
    return m


def _inputs(B, T, D, hidden, seed):
    """float64 leaves: q, k, fc1 weight and bias, then the weights and biases after fc1."""
    g = torch.Generator().manual_seed(seed)
    dims = [*hidden, 1]
    ts = [torch.randn(B, D, generator=g, dtype=torch.float64), torch.randn(B, T, D, generator=g, dtype=torch.float64),
          torch.randn(hidden[0], 4 * D, generator=g, dtype=torch.float64) * (4 * D) ** -0.5,
          torch.randn(hidden[0], generator=g, dtype=torch.float64) * 0.5]
    ws = [torch.randn(dims[i + 1], dims[i], generator=g, dtype=torch.float64) * dims[i] ** -0.5 for i in range(len(hidden))]
    bs = [torch.randn(dims[i + 1], generator=g, dtype=torch.float64) * 0.5 for i in range(len(hidden))]
    return ts + ws + bs, g


def _run(fn, leaves, mask, n, act, grad_scores):
    ls = [t.detach().clone().requires_grad_(True) for t in leaves]
    s = fn(ls[0], ls[1], mask, ls[2], ls[3], ls[4:4 + n], ls[4 + n:], act)
    s.backward(grad_scores.to(s))
    return s.detach(), [t.grad for t in ls]


def _check(backend, case, dtype, seed):
    B, T, D, hidden, act, kind = case
    leaves, g = _inputs(B, T, D, hidden, seed)
    mask = _mask(kind, B, T, g)
    gs = torch.randn(B, T, generator=g, dtype=torch.float64)
    device = device_for(backend)
    n = len(hidden)
    leaves = [t.to(device) for t in leaves]
    mask = None if mask is None else mask.to(device)
    with udg_fast.use_backend(backend):
        s, grads = _run(din_attention, [t.to(dtype) for t in leaves], mask, n, act, gs)
    with udg_fast.use_backend("reference"):
        s64, grads64 = _run(din_attention_reference, leaves, mask, n, act, gs)
        s32, grads32 = _run(din_attention_reference, [t.to(dtype) for t in leaves], mask, n, act, gs)
    assert s.dtype == dtype and s.shape == (B, T)
    if mask is not None:
        assert (s[~mask] == 0).all(), "scores at masked steps must be exactly 0"
    names = ["scores", *GRAD_NAMES, *[f"dweights[{i}]" for i in range(n)], *[f"dbiases[{i}]" for i in range(n)]]
    assert_all_close_to_reference(backend, names, [s, *grads], [s64, *grads64], [s32, *grads32],
                                  floor=FLOOR[dtype], dtype=dtype)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_matches_reference(backend, case):
    """cpu: the C++ kernel. triton/cuda have no GPU kernel and run the reference's literal concat
    on the GPU (measured faster there), so for them this checks dispatch, devices and the masked
    zeros, not a second implementation; the factored form is tested below."""
    _check(backend, case, torch.float32, seed=CASES.index(case))


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("case", [CASES[3], CASES[8], CASES[9]], ids=_ids)
def test_cpu_block_and_group_boundaries(threads, case):
    """The C++ kernel with 1, 2 and 4 threads (2 and 4 groups of weight-gradient partials per thread
    count, blocks handed out dynamically)."""
    skip_unless_usable("cpu")
    with torch_threads(threads):
        _check("cpu", case, torch.float32, seed=100 + threads)


def test_cpu_float64_matches_reference():
    skip_unless_usable("cpu")
    for i, case in enumerate(CASES[:6]):
        _check("cpu", case, torch.float64, seed=200 + i)


@pytest.mark.parametrize("masked", [True, False])
def test_eager_factored_form_matches_reference(masked):
    """The form torch.compile and the PReLU variant run, on CPU: packed (mask) and per sample."""
    B, T, D, hidden = 6, 11, 5, (9, 4)
    leaves, g = _inputs(B, T, D, hidden, seed=7)
    mask = _mask("random", B, T, g) if masked else None
    gs = torch.randn(B, T, generator=g, dtype=torch.float64)
    for act in ("sigmoid", "relu"):
        s, grads = _run(_din_attention_eager, leaves, mask, 2, act, gs)
        s64, grads64 = _run(din_attention_reference, leaves, mask, 2, act, gs)
        torch.testing.assert_close(s, s64)
        for i, (a, b) in enumerate(zip(grads, grads64)):
            torch.testing.assert_close(a, b, msg=lambda m, i=i: f"{act} grad {i}: {m}")



def test_gradcheck_float64_cpu():
    skip_unless_usable("cpu")
    B, T, D, hidden = 3, 4, 2, (3, 2)
    leaves, g = _inputs(B, T, D, hidden, seed=11)
    mask = _mask("random", B, T, g)
    leaves = [t.requires_grad_(True) for t in leaves]

    def f(*ls):
        with udg_fast.use_backend("cpu"):
            return din_attention(ls[0], ls[1], mask, ls[2], ls[3], ls[4:6], ls[6:], "sigmoid")

    assert torch.autograd.gradcheck(f, leaves)


def test_opcheck_cpp_op():
    skip_unless_usable("cpu")
    B, T, D, hidden = 3, 5, 4, (6, 3)
    leaves, g = _inputs(B, T, D, hidden, seed=12)
    q, k, w1, b1, *params = [t.float().requires_grad_(True) for t in leaves]
    idx = _mask("prefix", B, T, g).reshape(-1).nonzero().squeeze(1)
    args = (q, k, idx, w1, b1, params[:2], params[2:], "relu")
    torch.library.opcheck(torch.ops.udg_fast.din_attention.default, args)


def test_cpp_op_checks_its_arguments():
    skip_unless_usable("cpu")
    B, T, D, hidden = 2, 3, 4, (5,)
    leaves, _ = _inputs(B, T, D, hidden, seed=13)
    q, k, w1, b1, w, b = [t.float() for t in leaves]
    op = torch.ops.udg_fast.din_attention
    with pytest.raises(RuntimeError, match="idx must be strictly increasing"):
        op(q, k, torch.tensor([3, 1]), w1, b1, [w], [b], "sigmoid")
    with pytest.raises(RuntimeError, match=r"idx must be strictly increasing positions in \[0, B·T = 6\)"):
        op(q, k, torch.tensor([6]), w1, b1, [w], [b], "sigmoid")
    with pytest.raises(RuntimeError, match="activation must be 'sigmoid' or 'relu'"):
        op(q, k, torch.tensor([0]), w1, b1, [w], [b], "tanh")
    with pytest.raises(RuntimeError, match=r"the last weight must be \[1, h_L\]"):
        op(q, k, torch.tensor([0]), w1, b1, [w.repeat(2, 1)], [b.repeat(2)], "relu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", [CASES[3], CASES[7], CASES[9]], ids=_ids)
def test_triton_low_precision(case, dtype):
    """The Triton kernels on 16-bit inputs (fp32 inside) against float64, within 2x the error of
    the reference run in that dtype."""
    skip_unless_usable("triton")
    _check("triton", case, dtype, seed=40 + CASES.index(case))


def test_triton_runs_its_kernels_where_they_cover_the_call(monkeypatch):
    """One or two hidden layers (the second <= 64 wide) with sigmoid / ReLU run the Triton
    kernels (forward and backward, counted); three hidden layers or a wider second one run the
    eager form."""
    skip_unless_usable("triton")
    import udg_fast.kernels.din_attention as kern

    calls = []
    for name in ("din_attention_fwd", "din_attention_bwd"):
        real = getattr(kern, name)
        monkeypatch.setattr(kern, name, lambda *a, _r=real, _n=name, **k: (calls.append(_n), _r(*a, **k))[1])
    for hidden, expect in (((80, 40), True), ((6,), True), ((300,), True), ((9, 7, 5), False), ((8, 65), False)):
        calls.clear()
        leaves, g = _inputs(3, 5, 4, hidden, seed=50)
        n = len(hidden)
        with udg_fast.use_backend("triton"):
            _run(din_attention, [t.float() for t in leaves], None, n, "relu", torch.randn(3, 5, generator=g))
        assert calls == (["din_attention_fwd", "din_attention_bwd"] if expect else []), hidden


@pytest.mark.cuda
def test_opcheck_triton_op():
    """On CUDA only: opcheck traces the op with fake tensors, which the interpreter cannot run."""
    skip_unless_usable("triton")
    leaves, g = _inputs(4, 9, 6, (8, 4), seed=60)
    d = torch.device("cuda")
    q, k, w1, b1, *rest = [t.to(device=d, dtype=torch.float32).requires_grad_() for t in leaves]
    mask = _mask("prefix", 4, 9, g).to(d)
    from udg_fast.ops.din_attention import _register_triton_ops

    _register_triton_ops()
    torch.library.opcheck(torch.ops.udg_fast.din_attention_triton.default,
                          (q, k, mask, w1, b1, rest[:2], rest[2:], "sigmoid", "ieee"))


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_deterministic_and_nan_at_padded_steps_stays_there(backend):
    """Two runs give the same bits; a NaN key at a padded step reaches no score and no gradient
    (the kernels never read padded steps; their dk there is exactly 0). The reference too: it
    zeroes those keys first (a `where` on the scores alone let 0 · NaN into every weight gradient)."""
    skip_unless_usable(backend)
    B, T, D, hidden = 40, 30, 8, (16, 8)
    leaves, g = _inputs(B, T, D, hidden, seed=14)
    mask = _mask("prefix", B, T, g)
    leaves = [t.float() for t in leaves]
    leaves[1][~mask] = float("nan")
    gs = torch.randn(B, T, generator=g, dtype=torch.float64)
    leaves, mask = [t.to(device_for(backend)) for t in leaves], mask.to(device_for(backend))
    with udg_fast.use_backend(backend):
        s1, g1 = _run(din_attention, leaves, mask, 2, "sigmoid", gs)
        s2, g2 = _run(din_attention, leaves, mask, 2, "sigmoid", gs)
    assert torch.equal(s1, s2) and all(torch.equal(a, b) for a, b in zip(g1, g2))
    assert torch.isfinite(s1).all()
    assert all(torch.isfinite(t).all() for i, t in enumerate(g1) if i != 1)
    assert torch.isfinite(g1[1][mask]).all() and (g1[1][~mask] == 0).all()


def test_attention_unit_compiles_fullgraph():
    """torch.compile runs the unit through the eager factored form (static shapes), no graph
    break; output and gradients equal the eager (C++) run."""
    skip_unless_usable("cpu")
    torch.manual_seed(0)
    unit = AttentionUnit(6, (8, 4), "sigmoid")
    q, k = torch.randn(5, 6), torch.randn(5, 7, 6)
    mask = torch.arange(7) < torch.tensor([7, 0, 3, 5, 1])[:, None]
    assert_compile_matches_eager("cpu", lambda m, q, k: m(q, k, mask), unit, q, k)


def _ok():
    B, T, D, hidden = 2, 3, 4, (5,)
    leaves, _ = _inputs(B, T, D, hidden, seed=16)
    q, k, w1, b1, w, b = [t.float() for t in leaves]
    return [q, k, torch.ones(B, T, dtype=torch.bool), w1, b1, [w], [b], "sigmoid"]


def _with(i, v):
    a = _ok()
    a[i] = v
    return a


@pytest.mark.parametrize("args,exc,match", [
    (_with(0, torch.randn(2, 4, 1)), ValueError, r"query must be \[B, D\]"),
    (_with(1, torch.randn(2, 3, 5)), ValueError, r"keys must be \[B=2, T, D=4\]"),
    (_with(2, torch.ones(2, 4, dtype=torch.bool)), ValueError, r"mask must be \[B, T\] = \(2, 3\)"),
    (_with(2, torch.ones(2, 3)), TypeError, "mask must be a bool tensor"),
    (_with(3, torch.randn(5, 12)), ValueError, r"fc1_weight must be \[h1, 4·D = 16\]"),
    (_with(4, torch.randn(4)), ValueError, r"fc1_bias must be \[5\]"),
    (_with(5, [torch.randn(1, 4)]), ValueError, r"weights\[0\] must be \[out, 5\]"),
    (_with(5, [torch.randn(2, 5)]), ValueError, r"biases\[0\] must be \[2\]"),
    (_with(6, []), ValueError, "weights and biases must be non-empty and of one length"),
    (_with(5, torch.randn(1, 5)), TypeError, "weights and biases must be lists"),
    (_with(7, "tanh"), ValueError, "activation must be one of"),
    (_with(1, torch.randn(2, 3, 4).double()), TypeError, "keys has dtype torch.float64"),
    (_with(0, torch.randn(2, 4).numpy()), TypeError, "query must be a torch.Tensor"),
    # zero widths: the C++ kernel has no zero-width GEMM (D = 0 crashed the process)
    ([torch.randn(2, 0), torch.randn(2, 3, 0), None, torch.randn(5, 0), torch.randn(5), [torch.randn(1, 5)],
      [torch.randn(1)], "sigmoid"], ValueError, r"query must be \[B, D\] with D >= 1, got shape \(2, 0\)"),
    (_ok()[:3] + [torch.randn(0, 16), torch.randn(0), [torch.randn(1, 0)], [torch.randn(1)], "sigmoid"], ValueError,
     r"fc1_weight must have at least one row"),
])
def test_bad_input_names_the_argument(args, exc, match):
    with pytest.raises(exc, match=match):
        din_attention(*args)


def test_noncontiguous_inputs():
    """Strided query, keys, mask and weights (transposed copies viewed back) give the
    contiguous inputs' results on the cpu backend."""
    B, T, D, hidden = 5, 7, 4, (6, 3)
    leaves, g = _inputs(B, T, D, hidden, seed=21)
    mask = _mask("random", B, T, g)
    leaves = [t.float() for t in leaves]

    def strided(t):  # the same values, non-contiguous: a transposed copy viewed back
        return t.t().contiguous().t() if t.dim() == 2 else t.transpose(0, -1).contiguous().transpose(0, -1)

    args = [strided(t) if t.dim() >= 2 else t for t in leaves]
    assert not args[1].is_contiguous() and not args[2].is_contiguous()
    m2 = mask.t().contiguous().t()
    skip_unless_usable("cpu")
    with udg_fast.use_backend("cpu"):  # it copies strided inputs once: the same bits
        want = din_attention(leaves[0], leaves[1], mask, leaves[2], leaves[3], leaves[4:6], leaves[6:])
        got = din_attention(args[0], args[1], m2, args[2], args[3], args[4:6], args[6:])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
