"""udg_fast.ops.augru (DIEN's AUGRU; a plain GRU without att): every backend against the reference,
outputs, h_n and every gradient, on odd shapes with random lengths (0 and T included); varlen
equals one row at a time; `att=None` with negated z rows equals `nn.GRU`; gradcheck, opcheck,
torch.compile; determinism; bad input."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import udg_fast
from udg_fast import _backend
from udg_fast.ops import augru, augru_reference

from ._utils import (assert_close_to_reference, assert_compile_matches_eager, backend_params, device_for,
                     skip_unless_usable)

# Absolute error floor (× max |reference|) per dtype, added to flash-attention's 2× rule.
FLOOR = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2, torch.float16: 1e-3}
# (dtype, atol, rtol) for direct comparisons of two computations of the same precision.
TOLS = [(torch.float32, 2e-6, 2e-5), (torch.float64, 1e-12, 1e-10)]
TOL = {d: (a, r) for d, a, r in TOLS}

GRAD_NAMES = ["dx", "dweight_ih", "dweight_hh", "dbias_ih", "dbias_hh", "datt", "dh0"]

# The grid: every (B, T, H) below, I cycling over odd sizes.
GRID = list(itertools.product([0, 1, 3, 17], [1, 7, 33], [1, 5, 18, 36]))
INPUT_SIZES = [3, 13, 1, 40]
# Triton runs through its interpreter here (slow): a subset that still meets every B, T and H.
TRITON_GRID = [(0, 7, 5), (1, 1, 1), (3, 7, 18), (17, 33, 36), (3, 33, 5), (17, 1, 18), (1, 7, 36), (3, 1, 36)]
# (att, lengths, bias, h0), cycled over the cases so that each shape meets several.
OPTIONS = [(True, True, True, True), (False, True, True, False), (True, False, False, True),
           (True, True, False, False), (False, False, True, True), (True, True, True, False)]



def _grid_params():
    params = []
    for bp in backend_params():
        name = bp.values[0]
        grid = TRITON_GRID if name == "triton" else GRID
        for b, t, h in grid:
            params.append(pytest.param(name, (b, t, h), marks=bp.marks, id=f"{name}-B{b}-T{t}-H{h}"))
    return params


def _lengths(B, T, g):
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    if B >= 2:  # always both extremes: a user with no clicks and a full history
        lengths[0], lengths[1] = T, 0
    elif B == 1:
        lengths[0] = int(torch.randint(0, 2, (1,), generator=g)) * T
    return lengths


def _inputs(B, T, I, H, *, att=True, lengths=True, bias=True, h0=True, seed=0):
    """float64 CPU tensors (x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0) and (grad_out, grad_h_n)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    x = r(B, T, I)
    w_ih, w_hh = r(3 * H, I, scale=(I + 1) ** -0.5), r(3 * H, H, scale=H ** -0.5)
    b_ih, b_hh = (r(3 * H, scale=0.5), r(3 * H, scale=0.5)) if bias else (None, None)
    a = torch.rand(B, T, generator=g, dtype=torch.float64) if att else None
    lens = _lengths(B, T, g) if lengths else None
    hh = r(B, H, scale=0.5) if h0 else None
    grads = (r(B, T, H), r(B, H))
    return (x, w_ih, w_hh, b_ih, b_hh, a, lens, hh), grads


def _to(inputs, device, dtype):
    return tuple(None if t is None else (t.to(device) if i == 6 else t.to(device=device, dtype=dtype))
                 for i, t in enumerate(inputs))


def _run(fn, inputs, grads):
    """(outputs, h_n, grads of x, w_ih, w_hh, b_ih, b_hh, att, h0); None where an input is None."""
    leaves = [None if t is None else (t if i == 6 else t.detach().clone().requires_grad_(True))
              for i, t in enumerate(inputs)]
    out, hn = fn(*leaves)
    go, ghn = grads
    pairs = [(o, g.to(o)) for o, g in ((out, go), (hn, ghn)) if o.requires_grad]
    if pairs:
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    # An input that does not influence the result (T = 0, say) has a zero gradient.
    got = [None if leaves[i] is None else (leaves[i].grad if leaves[i].grad is not None else torch.zeros_like(leaves[i]))
           for i in (0, 1, 2, 3, 4, 5, 7)]
    return [out.detach(), hn.detach()] + got


def _check_backend(backend, B, T, I, H, options, dtype, seed):
    att, lengths, bias, h0 = options
    device = device_for(backend)
    inputs64, grads = _inputs(B, T, I, H, att=att, lengths=lengths, bias=bias, h0=h0, seed=seed)
    inputs = _to(inputs64, device, dtype)
    grads_d = tuple(t.to(device=device, dtype=dtype) for t in grads)
    with udg_fast.use_backend(backend):
        fast = _run(augru, inputs, grads_d)
    ref64 = _run(augru_reference, inputs64, grads)
    ref_same = _run(augru_reference, inputs, grads_d)
    assert fast[0].dtype == dtype and fast[0].shape == (B, T, H) and fast[1].shape == (B, H)
    for name, f, r64, rs in zip(["outputs", "h_n"] + GRAD_NAMES, fast, ref64, ref_same):
        if r64 is None:
            assert f is None, f"[{backend}] {name}: expected no gradient"
            continue
        assert f is not None, f"[{backend}] {name}: missing gradient"
        assert_close_to_reference(f"[{backend}] {name} (B={B} T={T} I={I} H={H} options={options})",
                                  f, r64, rs, floor=FLOOR[dtype])


@pytest.mark.parametrize("backend,shape", _grid_params())
def test_matches_reference(backend, shape):
    B, T, H = shape
    case = GRID.index(shape)
    _check_backend(backend, B, T, INPUT_SIZES[case % len(INPUT_SIZES)], H, OPTIONS[case % len(OPTIONS)],
                   torch.float32, seed=1000 + case)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "att{}-len{}-bias{}-h0{}".format(*map(int, o)))
def test_all_options(backend, options):
    _check_backend(backend, 5, 6, 7, 9, options, torch.float32, seed=hash(options) % 10_000)


@pytest.mark.parametrize("options", OPTIONS[:3], ids=lambda o: "att{}-len{}-bias{}-h0{}".format(*map(int, o)))
@pytest.mark.parametrize("shape", [(3, 7, 5), (17, 5, 36), (1, 4, 1)], ids=lambda s: "B{}-T{}-H{}".format(*s))
def test_triton_chunked_kernels_match_reference(shape, options, monkeypatch):
    """The chunked Triton kernels (W streamed in K-chunks, for sizes past the on-chip limit or a
    device with too little shared memory) on small shapes, forced: outputs, h_n, every gradient."""
    skip_unless_usable("triton")
    import udg_fast.kernels.augru as kernels

    monkeypatch.setattr(kernels, "_FORCE_CHUNKED", True)
    B, T, H = shape
    _check_backend("triton", B, T, INPUT_SIZES[(B + T) % 4], H, options, torch.float32, seed=77 + B + T + H)


def test_cpu_float64_matches_reference():
    skip_unless_usable("cpu")
    for i, (B, T, H) in enumerate(GRID[::5]):
        _check_backend("cpu", B, T, INPUT_SIZES[i % 4], H, OPTIONS[i % len(OPTIONS)], torch.float64, seed=50 + i)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_half_precision(backend, dtype):
    skip_unless_usable(backend)
    for i, (B, T, H) in enumerate(TRITON_GRID):
        _check_backend(backend, B, T, INPUT_SIZES[i % 4], H, OPTIONS[i % len(OPTIONS)], dtype, seed=300 + i)


# ---- semantics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference"] + backend_params())
def test_varlen_equals_each_row_alone(backend):
    """Padded + lengths gives, row by row, what the row alone (unpadded, no lengths) gives; outputs
    past a row's length are exactly zero; a length of 0 returns h0."""
    device = device_for(backend) if backend != "reference" else torch.device("cpu")
    dtype = torch.float32
    inputs64, grads = _inputs(6, 9, 5, 7, seed=11)
    x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0 = _to(inputs64, device, dtype)
    go, ghn = (t.to(device=device, dtype=dtype) for t in grads)
    atol, rtol = TOL[dtype]
    with udg_fast.use_backend(backend):
        out, hn, dx, *_, datt, dh0 = _run(augru, (x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0), (go, ghn))
        for b, n in enumerate(lengths.tolist()):
            assert torch.equal(out[b, n:], torch.zeros_like(out[b, n:])), f"[{backend}] row {b}: outputs past length {n}"
            if n == 0:
                assert torch.equal(hn[b], h0[b]), f"[{backend}] row {b}: length 0 must return h0"
                assert torch.equal(dh0[b], ghn[b]), f"[{backend}] row {b}: length 0 passes grad_h_n to h0"
                assert torch.equal(dx[b], torch.zeros_like(dx[b])), f"[{backend}] row {b}: dx of an empty row"
                continue
            row = (x[b:b + 1, :n], w_ih, w_hh, b_ih, b_hh, att[b:b + 1, :n], None, h0[b:b + 1])
            o1, h1, dx1, *_, datt1, dh01 = _run(augru, row, (go[b:b + 1, :n], ghn[b:b + 1]))
            for name, got, want in [("outputs", out[b, :n], o1[0]), ("h_n", hn[b], h1[0]), ("dx", dx[b, :n], dx1[0]),
                                    ("datt", datt[b, :n], datt1[0]), ("dh0", dh0[b], dh01[0])]:
                torch.testing.assert_close(got, want, atol=atol, rtol=rtol,
                                           msg=lambda m, name=name: f"[{backend}] row {b} (length {n}) {name}: {m}")
            assert torch.equal(dx[b, n:], torch.zeros_like(dx[b, n:])), f"[{backend}] row {b}: dx past length"
            assert torch.equal(datt[b, n:], torch.zeros_like(datt[b, n:])), f"[{backend}] row {b}: datt past length"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("backend", ["reference"] + backend_params())
def test_from_gru_equals_nn_gru(backend, dtype):
    """att=None with the z rows of an nn.GRU's parameters negated is nn.GRU: outputs, h_n and
    gradients, padded and packed.

    "Equal" as the other fast-path tests mean it: against nn.GRU run in float64 (the oracle), our
    error is at most 2x that of nn.GRU itself in the test's dtype and device (cuDNN on a GPU) plus
    a small floor. A fixed fp32 tolerance against cuDNN compared two roundings of one sum: on an
    H200 (2026-11-28) cuda and triton differed from cuDNN by 7.4e-6 in dx, both the same way.
    """
    if dtype == torch.float64 and backend not in ("reference", "cpu"):
        pytest.skip(f"{backend} has no float64")
    device = device_for(backend) if backend != "reference" else torch.device("cpu")
    torch.manual_seed(4)
    B, T, I, H = 5, 8, 6, 7
    gru = nn.GRU(I, H, batch_first=True).to(device=device, dtype=dtype)
    gru64 = nn.GRU(I, H, batch_first=True).double()
    gru64.load_state_dict({k: v.double().cpu() for k, v in gru.state_dict().items()})
    m = udg_fast.AUGRU.from_gru(gru)
    x = torch.randn(B, T, I, device=device, dtype=dtype)
    lengths = torch.tensor([8, 0, 3, 8, 1])
    go, ghn = torch.randn(B, T, H, device=device, dtype=dtype), torch.randn(B, H, device=device, dtype=dtype)

    def close(name, got, want64, want):
        assert got.dtype == dtype, f"[{backend}] {name}: dtype {got.dtype}, expected {dtype}"
        assert_close_to_reference(f"[{backend}] {name}", got, want64, want, floor=FLOOR[dtype])

    def run_gru(net, inp):
        # On CUDA, keep cuDNN's nn.GRU in exact fp32: TF32 would be the error.
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            return net(inp)

    # Full length, padded.
    xg, x64, xa = (t.requires_grad_(True) for t in (x.clone(), x.detach().double().cpu(), x.clone()))
    want, want_h = run_gru(gru, xg)
    want64, want64_h = run_gru(gru64, x64)
    with udg_fast.use_backend(backend):
        got, got_h = m(xa)
    close("outputs", got, want64, want)
    close("h_n", got_h, want64_h[0], want_h[0])
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        torch.autograd.backward([want, want_h[0]], [go, ghn])
    torch.autograd.backward([want64, want64_h[0]], [go.double().cpu(), ghn.double().cpu()])
    torch.autograd.backward([got, got_h], [go, ghn])
    close("dx", xa.grad, x64.grad, xg.grad)
    H_ = slice(H, 2 * H)
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        gg, gg64 = getattr(gru, name).grad.clone(), getattr(gru64, name).grad.clone()
        gg[H_], gg64[H_] = -gg[H_], -gg64[H_]  # the parameter was negated: so is its gradient
        close(f"d{name}", getattr(m, name).grad, gg64, gg)

    # Variable length: packed nn.GRU (lengths 0 are not packable: compare the rows with length > 0).
    keep = lengths > 0

    def run_packed(net, inp):
        packed = pack_padded_sequence(inp[keep], lengths[keep], batch_first=True, enforce_sorted=False)
        out, h = run_gru(net, packed)
        return pad_packed_sequence(out, batch_first=True, total_length=T)[0], h[0]

    with torch.no_grad():
        want_p, want_ph = run_packed(gru, x)
        want64_p, want64_ph = run_packed(gru64, x.double().cpu())
        with udg_fast.use_backend(backend):
            got_p, got_ph = m(x, lengths=lengths)
    close("outputs (packed)", got_p[keep.to(device)], want64_p, want_p)
    close("h_n (packed)", got_ph[keep.to(device)], want64_ph, want_ph)
    assert torch.equal(got_ph[~keep.to(device)], torch.zeros_like(got_ph[~keep.to(device)])), \
        "length 0 with h0=None returns zeros"


@pytest.mark.parametrize("backend", ["reference"] + backend_params())
def test_zero_attention_keeps_the_state(backend):
    """The paper's update (not DIEN's TensorFlow code): a_t = 0 leaves h_{t-1} unchanged."""
    device = device_for(backend) if backend != "reference" else torch.device("cpu")
    (x, w_ih, w_hh, b_ih, b_hh, _, lengths, h0), _ = _inputs(4, 5, 3, 6, seed=21)
    x, w_ih, w_hh, b_ih, b_hh, h0 = (t.to(device=device, dtype=torch.float32) for t in (x, w_ih, w_hh, b_ih, b_hh, h0))
    lengths = lengths.to(device)
    with udg_fast.use_backend(backend):
        out, hn = augru(x, w_ih, w_hh, b_ih, b_hh, torch.zeros(4, 5, device=device), lengths, h0)
    mask = (torch.arange(5, device=device)[None, :] < lengths[:, None])[..., None]
    torch.testing.assert_close(out, torch.where(mask, h0[:, None, :].expand_as(out), 0.0), atol=0, rtol=0,
                               msg=lambda m: f"[{backend}] outputs with a ≡ 0: {m}")
    torch.testing.assert_close(hn, h0, atol=0, rtol=0, msg=lambda m: f"[{backend}] h_n with a ≡ 0: {m}")


@pytest.mark.parametrize("backend", ["reference"] + backend_params())
def test_empty_rows_and_no_steps(backend):
    """All lengths 0, and T = 0: h_n = h0, no output, gradients pass straight to h0."""
    device = device_for(backend) if backend != "reference" else torch.device("cpu")
    for T, lengths in ((4, torch.zeros(3, dtype=torch.int64)), (0, None)):
        inputs64, grads = _inputs(3, T, 5, 4, lengths=False, seed=31)
        inputs = list(_to(inputs64, device, torch.float32))
        inputs[6] = None if lengths is None else lengths.to(device)
        go, ghn = (t.to(device=device, dtype=torch.float32) for t in grads)
        with udg_fast.use_backend(backend):
            out, hn, dx, dwi, dwh, dbi, dbh, datt, dh0 = _run(augru, inputs, (go, ghn))
        h0 = inputs[7]
        assert out.shape == (3, T, 4) and torch.equal(out, torch.zeros_like(out)), f"[{backend}] T={T}: outputs"
        assert torch.equal(hn, h0), f"[{backend}] T={T}: h_n must be h0"
        assert torch.equal(dh0, ghn), f"[{backend}] T={T}: dh0 must be grad_h_n"
        for name, gr in (("dx", dx), ("dweight_ih", dwi), ("dweight_hh", dwh), ("dbias_ih", dbi), ("datt", datt)):
            assert torch.equal(gr, torch.zeros_like(gr)), f"[{backend}] T={T}: {name} must be zero"


@pytest.mark.parametrize("backend", ["reference"] + backend_params())
def test_nan_stays_in_its_row_and_padding_is_not_read(backend):
    """Documented behaviour: a NaN in x at a step inside a row's length makes that row's later
    states NaN; other rows stay finite. NaN at padded steps (t >= length) changes nothing."""
    device = device_for(backend) if backend != "reference" else torch.device("cpu")
    (x, w_ih, w_hh, b_ih, b_hh, att, _, h0), _ = _inputs(4, 6, 3, 5, seed=41)
    x, w_ih, w_hh, b_ih, b_hh, att, h0 = (t.to(device=device, dtype=torch.float32)
                                           for t in (x, w_ih, w_hh, b_ih, b_hh, att, h0))
    lengths = torch.tensor([6, 3, 0, 5], device=device)
    with udg_fast.use_backend(backend):
        clean, clean_h = augru(x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0)
        xp = x.clone()
        xp[1, 3:] = float("nan")   # padding of row 1
        xp[2, :] = float("nan")    # row 2 has no steps at all
        ap = att.clone()
        ap[3, 5] = float("nan")    # padding of row 3
        out, hn = augru(xp, w_ih, w_hh, b_ih, b_hh, ap, lengths, h0)
        assert torch.equal(out, clean) and torch.equal(hn, clean_h), f"[{backend}] NaN in padding changed the result"
        xn = x.clone()
        xn[0, 2, 1] = float("nan")
        out, hn = augru(xn, w_ih, w_hh, b_ih, b_hh, att, lengths, h0)
    assert torch.isnan(out[0, 2:]).all() and torch.isnan(hn[0]).all(), f"[{backend}] NaN row: {out[0]}"
    assert torch.equal(out[0, :2], clean[0, :2]), f"[{backend}] steps before the NaN changed"
    assert torch.equal(out[1:], clean[1:]) and torch.equal(hn[1:], clean_h[1:]), f"[{backend}] NaN leaked into other rows"


@pytest.mark.parametrize("backend", ["reference"] + backend_params())
def test_nan_in_padding_reaches_no_gradient(backend):
    """NaN in x and att at padded steps: every gradient equals the clean run's (the reference
    zeroes those steps first; before, 0 · NaN made all its weight gradients NaN)."""
    device = device_for(backend) if backend != "reference" else torch.device("cpu")
    (x, w_ih, w_hh, b_ih, b_hh, att, _, h0), _ = _inputs(4, 6, 3, 5, seed=43)
    lengths = torch.tensor([6, 3, 0, 5], device=device)
    base = [t.to(device=device, dtype=torch.float32) for t in (x, w_ih, w_hh, b_ih, b_hh, att, h0)]
    grads = []
    for poison in (False, True):
        leaves = [t.clone() for t in base]
        if poison:
            leaves[0][1, 3:] = float("nan")
            leaves[0][2, :] = float("nan")
            leaves[5][3, 5] = float("nan")
        leaves = [t.requires_grad_() for t in leaves]
        with udg_fast.use_backend(backend):
            out, hn = augru(*leaves[:6], lengths, leaves[6])
        (out.sum() + hn.sum()).backward()
        grads.append([t.grad for t in leaves])
    for name, clean, poisoned in zip(("dx", "dw_ih", "dw_hh", "db_ih", "db_hh", "datt", "dh0"), *grads):
        assert torch.equal(clean, poisoned), f"[{backend}] {name}: NaN in padding changed it"


# ---- gradcheck, opcheck, compile, determinism ---------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("gru_mode", [False, True], ids=["augru", "gru"])
def test_gradcheck_float64(backend, gru_mode):
    skip_unless_usable(backend)
    inputs, _ = _inputs(3, 4, 3, 2, att=not gru_mode, bias=not gru_mode, seed=5)
    inputs = list(inputs)
    inputs[6] = torch.tensor([4, 0, 2])
    diff = [i for i, t in enumerate(inputs) if t is not None and i != 6]
    leaves = [inputs[i].clone().requires_grad_(True) for i in diff]

    def f(*ts):
        args = list(inputs)
        for i, t in zip(diff, ts):
            args[i] = t
        with udg_fast.use_backend(backend):
            return augru(*args)

    assert torch.autograd.gradcheck(f, leaves), f"gradcheck failed for {backend} gru_mode={gru_mode}"


def test_opcheck_cpp_op():
    skip_unless_usable("cpu")
    (x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0), (go, ghn) = _inputs(5, 4, 3, 6, seed=6)
    x, w_ih, w_hh, b_ih, b_hh, att, h0, go, ghn = (t.float() for t in (x, w_ih, w_hh, b_ih, b_hh, att, h0, go, ghn))
    op = torch.ops.udg_fast.augru.default
    torch.library.opcheck(op, (x.requires_grad_(), w_ih, w_hh.requires_grad_(), b_ih, b_hh, att.requires_grad_(),
                               lengths, h0.requires_grad_()))
    torch.library.opcheck(op, (x.detach(), w_ih.requires_grad_(), w_hh.detach(), None, None, None, None, h0.detach()))
    out, _ = op(x.detach(), w_ih.detach(), w_hh.detach(), b_ih, b_hh, att.detach(), lengths, h0.detach())
    torch.library.opcheck(torch.ops.udg_fast.augru_backward.default,
                          (go, ghn, x.detach(), w_ih.detach(), w_hh.detach(), b_ih, b_hh, att.detach(), lengths,
                           h0.detach(), out))


@pytest.mark.cuda
def test_opcheck_triton_op():
    """On CUDA only: opcheck traces the op with fake tensors, which the interpreter cannot run."""
    skip_unless_usable("triton")
    d = torch.device("cuda")
    (x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0), _ = _inputs(5, 4, 3, 6, seed=7)
    args = tuple(t.to(d) if i == 6 else t.to(device=d, dtype=torch.float32).requires_grad_(i in (0, 2, 5, 7))
                 for i, t in enumerate((x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0)))
    torch.library.opcheck(torch.ops.udg_fast.augru_triton.default, args)


def _dien_like(rnn, x, att, lengths):
    out, hn = rnn(x, att=att, lengths=lengths)
    return out.sum(1) * 0.5 + hn


@pytest.mark.parametrize("backend", ["cpu"] + (["triton", "cuda"] if torch.cuda.is_available() else []))
def test_torch_compile_fullgraph(backend):
    """torch.compile(fullgraph=True) of a model using the op: no graph break, forward and backward.
    On CPU tensors this goes through the C++ op (compiling a Triton op on CPU tensors under the
    interpreter is not possible: fake tensors have no data pointer)."""
    skip_unless_usable(backend)
    device = device_for(backend)
    torch.manual_seed(0)
    rnn = udg_fast.AUGRU(5, 6).to(device)
    x, att = torch.randn(4, 7, 5, device=device), torch.rand(4, 7, device=device)
    lengths = torch.tensor([7, 0, 3, 5], device=device)
    assert_compile_matches_eager(backend, _dien_like, rnn, x, att, lengths)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_cpu_every_instruction_set(isa, monkeypatch):
    """The C++ kernel is compiled per instruction set (vector width 64/32/16 bytes) and picks the
    best one the CPU has; UDG_FAST_CPU_ISA caps it, so each path runs on any x86 machine here
    (a cap above what the CPU has just runs the best available one)."""
    skip_unless_usable("cpu")
    monkeypatch.setenv("UDG_FAST_CPU_ISA", isa)
    for i, (B, T, H) in enumerate([(17, 7, 5), (40, 9, 18), (3, 33, 36)]):
        for dtype in (torch.float32, torch.float64):
            _check_backend("cpu", B, T, INPUT_SIZES[i], H, OPTIONS[i], dtype, seed=70 + i)


def test_cpu_rejects_unknown_instruction_set(monkeypatch):
    skip_unless_usable("cpu")
    monkeypatch.setenv("UDG_FAST_CPU_ISA", "avx1024")
    with pytest.raises(RuntimeError, match="UDG_FAST_CPU_ISA must be avx512, avx2 or baseline"):
        torch.ops.udg_fast.augru(*_ok().values())


def test_cpu_is_deterministic_across_runs_and_thread_counts():
    """Bitwise: the per-block partial sums are reduced in a fixed order, whatever the schedule."""
    skip_unless_usable("cpu")
    inputs64, grads = _inputs(70, 9, 6, 10, seed=8)
    inputs = _to(inputs64, torch.device("cpu"), torch.float32)
    grads = tuple(t.float() for t in grads)
    threads = torch.get_num_threads()
    with udg_fast.use_backend("cpu"):
        first = _run(augru, inputs, grads)
        second = _run(augru, inputs, grads)
        torch.set_num_threads(1)
        try:
            single = _run(augru, inputs, grads)
        finally:
            torch.set_num_threads(threads)
    for name, a, b, c in zip(["outputs", "h_n"] + GRAD_NAMES, first, second, single):
        assert torch.equal(a, b), f"{name}: two runs differ"
        assert torch.equal(a, c), f"{name}: 1 thread and {threads} threads differ"


def test_automatic_choice():
    assert _backend.select("augru", torch.device("cpu"), torch.float32) in ("cpu", "reference")
    if udg_fast.backends()["cpu"]["usable"]:
        assert _backend.select("augru", torch.device("cpu"), torch.float64) == "cpu"
    assert _backend.select("augru", torch.device("cpu"), torch.float16) == "reference"


# ---- the module --------------------------------------------------------------------------------

def test_module_matches_nn_gru_parameters():
    m, gru = udg_fast.AUGRU(7, 5), nn.GRU(7, 5)
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in gru.state_dict().items()}
    assert all(p.abs().max() <= 5 ** -0.5 for p in m.parameters())  # nn.GRU's U(-1/√H, 1/√H)
    nb = udg_fast.AUGRU(7, 5, bias=False)
    assert set(dict(nb.named_parameters())) == {"weight_ih_l0", "weight_hh_l0"}
    out, hn = nb(torch.randn(2, 3, 7))
    assert out.shape == (2, 3, 5) and hn.shape == (2, 5)
    assert "AUGRU(7, 5, bias=False)" == repr(nb)


def test_from_gru_rejects_what_it_cannot_convert():
    with pytest.raises(ValueError, match="single-layer, unidirectional"):
        udg_fast.AUGRU.from_gru(nn.GRU(3, 4, num_layers=2))
    with pytest.raises(ValueError, match="single-layer, unidirectional"):
        udg_fast.AUGRU.from_gru(nn.GRU(3, 4, bidirectional=True))
    with pytest.raises(TypeError, match="expected an nn.GRU"):
        udg_fast.AUGRU.from_gru(nn.LSTM(3, 4))
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        udg_fast.AUGRU(3, 0)


# ---- bad input -----------------------------------------------------------------------------------

def _ok():
    B, T, I, H = 3, 4, 5, 2
    return dict(x=torch.randn(B, T, I), weight_ih=torch.randn(3 * H, I), weight_hh=torch.randn(3 * H, H),
                bias_ih=torch.randn(3 * H), bias_hh=torch.randn(3 * H), att=torch.rand(B, T),
                lengths=torch.tensor([4, 0, 2]), h0=torch.randn(B, H))


@pytest.mark.parametrize("change,exc,match", [
    (dict(lengths=torch.tensor([4, 5, 2])), ValueError, r"lengths must be in \[0, T\] = \[0, 4\], got a length of 5"),
    (dict(lengths=torch.tensor([4, -1, 2])), ValueError, r"lengths must be in \[0, T\].*-1"),
    (dict(lengths=torch.tensor([4.0, 0.0, 2.0])), TypeError, "lengths must be an integer tensor"),
    (dict(lengths=torch.tensor([True, False, True])), TypeError, "lengths must be an integer tensor"),
    (dict(lengths=torch.tensor([4, 0])), ValueError, r"lengths must be \[B\] = \[3\]"),
    (dict(lengths=[4, 0, 2]), TypeError, "lengths must be a torch.Tensor or None"),
    (dict(att=torch.rand(3, 5)), ValueError, r"att must be \[B, T\] = \[3, 4\]"),
    (dict(att=torch.rand(3, 4, 1)), ValueError, r"att must be \[B, T\]"),
    (dict(weight_ih=torch.randn(6, 4)), ValueError, r"weight_ih must be \[3H, I\] = \[6, 5\]"),
    (dict(weight_hh=torch.randn(7, 2)), ValueError, r"weight_hh must be \[3H, H\]"),
    (dict(weight_hh=torch.randn(4, 2)), ValueError, r"weight_hh must be \[3H, H\]"),
    (dict(weight_hh=torch.randn(6)), ValueError, r"weight_hh must be \[3H, H\]"),
    (dict(bias_ih=torch.randn(5)), ValueError, r"bias_ih must be \[3H\] = \[6\]"),
    (dict(bias_hh=torch.randn(6, 1)), ValueError, r"bias_hh must be \[3H\]"),
    (dict(h0=torch.randn(3, 3)), ValueError, r"h0 must be \[B, H\] = \[3, 2\]"),
    (dict(x=torch.randn(3, 4)), ValueError, r"x must be \[B, T, I\]"),
    (dict(x=torch.ones(3, 4, 5, dtype=torch.int64)), TypeError, "x must be a floating-point tensor"),
    (dict(weight_hh=torch.randn(6, 2, dtype=torch.float64)), TypeError, "weight_hh has dtype torch.float64"),
    (dict(att=torch.rand(3, 4, dtype=torch.float64)), TypeError, "att has dtype"),
    (dict(h0=torch.randn(3, 2).half()), TypeError, "h0 has dtype"),
    (dict(weight_ih=torch.randn(6, 5, device="meta")), ValueError, "weight_ih is on meta"),
    (dict(att=torch.rand(3, 4, device="meta")), ValueError, "att is on meta"),
    (dict(bias_hh=torch.randn(6, device="meta")), ValueError, "bias_hh is on meta"),
    (dict(lengths=torch.tensor([4, 0, 2], device="meta")), ValueError, "lengths is on meta"),
    (dict(x=torch.randn(3, 4, 5).numpy()), TypeError, "x must be a torch.Tensor"),
])
def test_bad_input_names_the_argument(change, exc, match):
    kw = _ok()
    kw.update(change)
    with pytest.raises(exc, match=match):
        augru(**kw)


def test_cpp_op_checks_lengths_itself():
    """The C++ op validates too (the Python check is skipped while torch.compile traces)."""
    skip_unless_usable("cpu")
    kw = _ok()
    kw["lengths"] = torch.tensor([4, 9, 2])
    with pytest.raises(RuntimeError, match=r"lengths must be in \[0, T\] = \[0, 4\], got lengths\[1\] = 9"):
        torch.ops.udg_fast.augru(*kw.values())
    kw["lengths"] = torch.tensor([4, 0, 2], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="lengths must be int64"):
        torch.ops.udg_fast.augru(*kw.values())


def test_lengths_of_any_integer_dtype_are_accepted():
    kw = _ok()
    want, want_h = augru(**kw)
    for dt in (torch.int32, torch.int16, torch.uint8):
        got, got_h = augru(**{**kw, "lengths": kw["lengths"].to(dt)})
        assert torch.equal(got, want) and torch.equal(got_h, want_h), f"lengths as {dt}"
