"""Triton kernels for the AUGRU of DIEN (and the plain GRU, its special case a ≡ 1).

Gate order (r, z, n) as in `torch.nn.GRU`; the update is the form of the DIEN paper (Zhou et
al., 2019), AUGRU: the attention score scales the update gate:

    r_t  = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t  = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t  = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
    z'_t = a_t · z_t                                  (a ≡ 1 when att is None: plain GRU)
    h_t  = (1 − z'_t) ⊙ h_{t-1} + z'_t ⊙ n_t

Variable length: steps `t >= lengths[b]` leave `h` unchanged and their outputs are zero;
`h_n[b]` is `h` after the last valid step (`h0[b]` when the length is 0).

Two persistent kernels, one program per block of `BLOCK_B` batch rows, the time loop inside:

- `_augru_fwd_kernel`: loads W_ih and W_hh once before the loop, keeps `h` in registers in fp32,
  computes `x_t · W_ihᵀ` inside the loop (no precomputed input gates: at B=4096, T=100, H=36
  they would cost ~354 MB of extra traffic), reads `a[b, t]` and `lengths[b]`, freezes `h` past
  the length and writes zeros there. The loop runs to the longest length of the block; the tail
  is only zero-filled.
- `_augru_bwd_kernel`: reverse time from the block's longest length, recomputing r, z, n from the
  saved `h_{t-1}` (`outputs[:, t-1]`, or `h0` at t = 0); `dh_{t-1}` comes from `tl.dot`s against
  W_hh, `dx_t` against W_ih; `da_t = Σ_j dz'_t ⊙ z_t`. dW/db are accumulated in fp32 registers
  per program and written as per-program partials to a workspace, then reduced by one torch sum
  over the program dim: no atomics, bit-reproducible run to run.

Both hold six W tiles on chip, which fits for padded sizes ≤ 64 (`_ON_CHIP_MAX`; Triton keeps the
converted tiles in shared memory: ~100 KB forward, ~124 KB backward at 64 × 64 on sm_90). Larger
sizes (up to `_MAX_DIM` = 128), or a device with too little shared memory, run the chunked pair:

- `_augru_fwd_chunked_kernel`: the same recurrence with every dot split into K-chunks of 32 and
  W re-read from L2 each step; `h_{t-1}` chunks come from a per-row fp32 double buffer.
- `_augru_bwd_chunked_kernel`: runs only the `dh` recurrence and writes each step's gate
  gradients to a `[B, T, 4, H]` fp32 workspace; dx, dW and db are then GEMMs over all B·T steps
  (six `[128, 128]` fp32 accumulators do not fit one SM).

Only the host launchers `augru_fwd` / `augru_bwd` are public; autograd and dispatch live in
`udg_fast/ops/augru.py`. Every launch goes through `torch.library.wrap_triton` so the launchers
can run inside a `torch.library.triton_op`.

Numerics: state, gates and accumulators in fp32; every `tl.dot` takes fp32 operands (16-bit
weights are upcast on load), with `input_precision` "ieee" (exact FMA, the default: the
recurrence compounds TF32 rounding over T, and the on-chip backward needs 216 KB of shared memory
with TF32 operands at 64 × 64 against 124 KB with "ieee") or "tf32" (tensor cores).

Status: tested under TRITON_INTERPRET=1 against a float64 reference; compiled for sm_90 with
Triton 3.8 (the register / shared-memory figures in comments come from ptxas), not run on a GPU.
"""
import functools
import os

import torch
import triton
import triton.language as tl

__all__ = ["augru_fwd", "augru_bwd"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Largest hidden_size / input_size (one padded tile of ≤ 128 columns per gate).
_MAX_DIM = 128
# Padded sizes up to this run the on-chip kernels (W held across the loop, dW in registers);
# larger ones, or a device whose shared memory is too small, run the chunked kernels.
_ON_CHIP_MAX = 64
# K-chunk of the chunked kernels' dots: keeps each W operand at [32, ≤128].
_CHUNK_K = 32
# Batch rows per program: the smallest tile tl.dot takes. 32 would fill one wave at B=4096 on an
# H100 (128 programs, 132 SMs; 16 gives 256 programs at one per SM, two waves), but at 64 × 64 it
# spills 10–37 KB per thread (ptxas, sm_90, fp32) against 0–3 KB at 16. To measure on a GPU.
_BLOCK_B = 16
# Tests set this to run the chunked kernels on small shapes too.
_FORCE_CHUNKED = False
_PRECISIONS = ("ieee", "tf32")


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _tanh(x):
    # Triton has no tl.tanh; tanh(x) = 2σ(2x) − 1 (absolute error ~1e-7 in fp32, saturates cleanly).
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _load_gate_w(w_ptr, gate, offs_h, offs_k, mask_h, mask_k, H, K):
    """Rows `[gate·H, gate·H + H)` of a `[3H, K]` weight as an fp32 `[BLOCK_H, BLOCK_K]` tile
    (zero-padded)."""
    ptrs = w_ptr + (gate * H + offs_h[:, None]).to(tl.int64) * K + offs_k[None, :]
    w = tl.load(ptrs, mask=mask_h[:, None] & mask_k[None, :], other=0.0)
    return w.to(tl.float32)


@triton.jit
def _load_gate_b(b_ptr, gate, offs_h, mask_h, H, HAS_BIAS: tl.constexpr):
    """`bias[gate·H : gate·H + H]` as an fp32 `[BLOCK_H]` vector; zeros when there is no bias."""
    if HAS_BIAS:
        b = tl.load(b_ptr + gate * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    else:
        b = tl.zeros(offs_h.shape, dtype=tl.float32)
    return b


@triton.jit
def _load_lengths(len_ptr, offs_b, mask_b, T, HAS_LENGTHS: tl.constexpr):
    """`lengths[b]` clamped to `[0, T]` as int32 (`T` when lengths is None; 0 for padded rows)."""
    if HAS_LENGTHS:
        L = tl.load(len_ptr + offs_b, mask=mask_b, other=0)
        L = tl.minimum(tl.maximum(L, 0), T).to(tl.int32)
    else:
        L = tl.where(mask_b, T, 0).to(tl.int32)
    return L


# Pieces every kernel shares (jit functions are inlined: no call overhead).

@triton.jit
def _load_biases(bih_ptr, bhh_ptr, offs_h, mask_h, H, HAS_BIAS_IH: tl.constexpr, HAS_BIAS_HH: tl.constexpr):
    """(b_ir + b_hr, b_iz + b_hz, b_in, b_hn), fp32 `[BLOCK_H]` each: the r and z biases enter
    the same sums; b_hn stays apart, inside r ⊙ (·)."""
    b_r = (_load_gate_b(bih_ptr, 0, offs_h, mask_h, H, HAS_BIAS_IH)
           + _load_gate_b(bhh_ptr, 0, offs_h, mask_h, H, HAS_BIAS_HH))
    b_z = (_load_gate_b(bih_ptr, 1, offs_h, mask_h, H, HAS_BIAS_IH)
           + _load_gate_b(bhh_ptr, 1, offs_h, mask_h, H, HAS_BIAS_HH))
    b_in = _load_gate_b(bih_ptr, 2, offs_h, mask_h, H, HAS_BIAS_IH)
    b_hn = _load_gate_b(bhh_ptr, 2, offs_h, mask_h, H, HAS_BIAS_HH)
    return b_r, b_z, b_in, b_hn


@triton.jit
def _load_weights(wih_ptr, whh_ptr, offs_h, offs_i, mask_h, mask_i, H, I):
    """The six gate weights of the on-chip kernels, fp32 `[BLOCK_H, BLOCK_I]` (W_i*) and
    `[BLOCK_H, BLOCK_H]` (W_h*), held for the whole sequence."""
    w_ir = _load_gate_w(wih_ptr, 0, offs_h, offs_i, mask_h, mask_i, H, I)
    w_iz = _load_gate_w(wih_ptr, 1, offs_h, offs_i, mask_h, mask_i, H, I)
    w_in = _load_gate_w(wih_ptr, 2, offs_h, offs_i, mask_h, mask_i, H, I)
    w_hr = _load_gate_w(whh_ptr, 0, offs_h, offs_h, mask_h, mask_h, H, H)
    w_hz = _load_gate_w(whh_ptr, 1, offs_h, offs_h, mask_h, mask_h, H, H)
    w_hn = _load_gate_w(whh_ptr, 2, offs_h, offs_h, mask_h, mask_h, H, H)
    return w_ir, w_iz, w_in, w_hr, w_hz, w_hn


@triton.jit
def _activate(g_r, g_z, gi_n, gh_n):
    """(r, z, n) from the gate pre-activations (gh_n = W_hn h + b_hn, inside r ⊙ (·))."""
    r = tl.sigmoid(g_r)
    z = tl.sigmoid(g_z)
    n = _tanh(gi_n + r * gh_n)
    return r, z, n


@triton.jit
def _gates(x_t, h, w_ir, w_iz, w_in, w_hr, w_hz, w_hn, b_r, b_z, b_in, b_hn,
           INPUT_PRECISION: tl.constexpr):
    """(r, z, n, gh_n) of one step from x_t `[BLOCK_B, BLOCK_I]` and h_{t-1} `[BLOCK_B, BLOCK_H]`,
    with the weights held on chip (`[H, K]`, used as `[K, H]` via trans)."""
    g_r = (tl.dot(x_t, tl.trans(w_ir), input_precision=INPUT_PRECISION)
           + tl.dot(h, tl.trans(w_hr), input_precision=INPUT_PRECISION) + b_r[None, :])
    g_z = (tl.dot(x_t, tl.trans(w_iz), input_precision=INPUT_PRECISION)
           + tl.dot(h, tl.trans(w_hz), input_precision=INPUT_PRECISION) + b_z[None, :])
    gi_n = tl.dot(x_t, tl.trans(w_in), input_precision=INPUT_PRECISION) + b_in[None, :]
    gh_n = tl.dot(h, tl.trans(w_hn), input_precision=INPUT_PRECISION) + b_hn[None, :]
    r, z, n = _activate(g_r, g_z, gi_n, gh_n)
    return r, z, n, gh_n


@triton.jit
def _gate_grads(dh_t, h_prev, r, z, n, gh_n, a, HAS_ATT: tl.constexpr):
    """Gradients of one step's gate pre-activations from dh_t, the gradient reaching h_t:
    (dp_r, dp_z, dp_n, dp_n ⊙ r, z' = a·z, da = Σ_j dz' ⊙ z); `a` `[BLOCK_B]` is read only when
    HAS_ATT. Rows past their length have dh_t = 0, so all of these are exact zeros there."""
    d_zz = dh_t * (n - h_prev)
    if HAS_ATT:
        zz = a[:, None] * z
        d_z = a[:, None] * d_zz
    else:
        zz = z
        d_z = d_zz
    da = tl.sum(d_zz * z, axis=1)
    dp_z = d_z * z * (1.0 - z)
    dp_n = dh_t * zz * (1.0 - n * n)
    dp_r = dp_n * gh_n * r * (1.0 - r)
    return dp_r, dp_z, dp_n, dp_n * r, zz, da


@triton.jit(do_not_specialize=["T"])
def _augru_fwd_kernel(
    x_ptr, wih_ptr, whh_ptr, bih_ptr, bhh_ptr, att_ptr, len_ptr, h0_ptr,
    out_ptr, hn_ptr,
    B, T, I, H,
    HAS_BIAS_IH: tl.constexpr,
    HAS_BIAS_HH: tl.constexpr,
    HAS_ATT: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """AUGRU forward over all `T` steps for rows `[pid·BLOCK_B, (pid+1)·BLOCK_B)`.

    x `[B, T, I]`, W_ih `[3H, I]`, W_hh `[3H, H]`, b `[3H]`, att `[B, T]`, lengths `[B]` int64,
    h0 `[B, H]` → outputs `[B, T, H]` (zero past the length), h_n `[B, H]`.
    """
    pid = tl.program_id(0).to(tl.int64)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)  # int64: every row offset below is 64-bit
    offs_h = tl.arange(0, BLOCK_H)
    offs_i = tl.arange(0, BLOCK_I)
    mask_b = offs_b < B
    mask_h = offs_h < H
    mask_i = offs_i < I
    mask_bh = mask_b[:, None] & mask_h[None, :]

    # Held on chip for the whole sequence. Stored `[H, K]`; used as `[K, H]` via trans.
    w_ir, w_iz, w_in, w_hr, w_hz, w_hn = _load_weights(wih_ptr, whh_ptr, offs_h, offs_i, mask_h, mask_i, H, I)
    b_r, b_z, b_in, b_hn = _load_biases(bih_ptr, bhh_ptr, offs_h, mask_h, H, HAS_BIAS_IH, HAS_BIAS_HH)

    L = _load_lengths(len_ptr, offs_b, mask_b, T, HAS_LENGTHS)
    L_max = tl.max(L, axis=0)

    bh_off = offs_b[:, None] * H + offs_h[None, :]
    h = tl.load(h0_ptr + bh_off, mask=mask_bh, other=0.0).to(tl.float32)

    x_rows = x_ptr + offs_b[:, None] * T * I + offs_i[None, :]   # [BLOCK_B, BLOCK_I] at t = 0
    out_rows = out_ptr + offs_b[:, None] * T * H + offs_h[None, :]
    for t in range(0, L_max):
        valid = t < L                                  # [BLOCK_B]
        vmask = valid[:, None]
        t64 = tl.cast(t, tl.int64)
        # Padded steps are never read (their x may hold anything, even NaN).
        x_t = tl.load(x_rows + t64 * I, mask=vmask & mask_i[None, :], other=0.0).to(tl.float32)
        r, z, n, gh_n = _gates(x_t, h, w_ir, w_iz, w_in, w_hr, w_hz, w_hn, b_r, b_z, b_in, b_hn,
                               INPUT_PRECISION)
        if HAS_ATT:
            a = tl.load(att_ptr + offs_b * T + t64, mask=valid, other=0.0).to(tl.float32)
            z = a[:, None] * z
        h_new = (1.0 - z) * h + z * n
        # where, not arithmetic masking: a frozen row keeps h exactly, whatever h_new holds.
        h = tl.where(vmask, h_new, h)
        o = tl.where(vmask, h_new, 0.0)
        tl.store(out_rows + t64 * H, o.to(out_ptr.dtype.element_ty), mask=mask_bh)
    # Steps every row of the block has finished: only zeros to write.
    zeros = tl.zeros((BLOCK_B, BLOCK_H), dtype=out_ptr.dtype.element_ty)
    for t in range(L_max, T):
        tl.store(out_rows + tl.cast(t, tl.int64) * H, zeros, mask=mask_bh)
    tl.store(hn_ptr + bh_off, h.to(hn_ptr.dtype.element_ty), mask=mask_bh)


@triton.jit(do_not_specialize=["T"])
def _augru_bwd_kernel(
    gout_ptr, ghn_ptr, x_ptr, wih_ptr, whh_ptr, bih_ptr, bhh_ptr, att_ptr, len_ptr, h0_ptr,
    out_ptr,
    dx_ptr, datt_ptr, dh0_ptr,
    dwih_part_ptr, dwhh_part_ptr, dbih_part_ptr, dbhh_part_ptr,
    B, T, I, H,
    HAS_BIAS_IH: tl.constexpr,
    HAS_BIAS_HH: tl.constexpr,
    HAS_ATT: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """AUGRU backward in reverse time for rows `[pid·BLOCK_B, (pid+1)·BLOCK_B)`.

    Writes dx `[B, T, I]`, datt `[B, T]` (when HAS_ATT), dh0 `[B, H]` for its rows, and its fp32
    partials dW_ih `[3H, I]`, dW_hh `[3H, H]`, db_ih, db_hh `[3H]` at index `pid` of the
    workspaces. With p_* the gate pre-activations and dh the gradient reaching h_t:

        dz' = dh ⊙ (n − h_{t-1});  dn = dh ⊙ z';  da = Σ_j dz' ⊙ z
        dp_z = a·dz' ⊙ z(1 − z);  dp_n = dn ⊙ (1 − n²);  dp_r = dp_n ⊙ (W_hn h + b_hn) ⊙ r(1 − r)
        dh_{t-1} = dh ⊙ (1 − z') + dp_r W_hr + dp_z W_hz + (dp_n ⊙ r) W_hn
        dx_t = dp_r W_ir + dp_z W_iz + dp_n W_in
    """
    pid = tl.program_id(0).to(tl.int64)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    offs_i = tl.arange(0, BLOCK_I)
    mask_b = offs_b < B
    mask_h = offs_h < H
    mask_i = offs_i < I
    mask_bh = mask_b[:, None] & mask_h[None, :]
    mask_bi = mask_b[:, None] & mask_i[None, :]

    # Held on chip for the whole sequence: trans(W) recomputes the gates, W forms dx and dh.
    w_ir, w_iz, w_in, w_hr, w_hz, w_hn = _load_weights(wih_ptr, whh_ptr, offs_h, offs_i, mask_h, mask_i, H, I)
    b_r, b_z, b_in, b_hn = _load_biases(bih_ptr, bhh_ptr, offs_h, mask_h, H, HAS_BIAS_IH, HAS_BIAS_HH)

    L = _load_lengths(len_ptr, offs_b, mask_b, T, HAS_LENGTHS)
    L_max = tl.max(L, axis=0)

    bh_off = offs_b[:, None] * H + offs_h[None, :]
    # Gradient reaching the current h (h_T at start): grad_h_n flows into the last valid step, or
    # straight to dh0 for a row of length 0 (no step touches it).
    dh = tl.load(ghn_ptr + bh_off, mask=mask_bh, other=0.0).to(tl.float32)

    x_rows = x_ptr + offs_b[:, None] * T * I + offs_i[None, :]
    dx_rows = dx_ptr + offs_b[:, None] * T * I + offs_i[None, :]
    seq_rows = offs_b[:, None] * T * H + offs_h[None, :]       # into outputs / grad_outputs
    # Steps past every row's length: no gradient, zero-fill dx (and datt).
    zeros_i = tl.zeros((BLOCK_B, BLOCK_I), dtype=dx_ptr.dtype.element_ty)
    for t in range(L_max, T):
        t64 = tl.cast(t, tl.int64)
        tl.store(dx_rows + t64 * I, zeros_i, mask=mask_bi)
        if HAS_ATT:
            tl.store(datt_ptr + offs_b * T + t64,
                     tl.zeros((BLOCK_B,), dtype=datt_ptr.dtype.element_ty), mask=mask_b)

    acc_wir = tl.zeros((BLOCK_H, BLOCK_I), dtype=tl.float32)
    acc_wiz = tl.zeros((BLOCK_H, BLOCK_I), dtype=tl.float32)
    acc_win = tl.zeros((BLOCK_H, BLOCK_I), dtype=tl.float32)
    acc_whr = tl.zeros((BLOCK_H, BLOCK_H), dtype=tl.float32)
    acc_whz = tl.zeros((BLOCK_H, BLOCK_H), dtype=tl.float32)
    acc_whn = tl.zeros((BLOCK_H, BLOCK_H), dtype=tl.float32)
    acc_br = tl.zeros((BLOCK_H,), dtype=tl.float32)    # db_ir = db_hr
    acc_bz = tl.zeros((BLOCK_H,), dtype=tl.float32)    # db_iz = db_hz
    acc_bin = tl.zeros((BLOCK_H,), dtype=tl.float32)
    acc_bhn = tl.zeros((BLOCK_H,), dtype=tl.float32)

    for s in range(0, L_max):
        t = L_max - 1 - s
        t64 = tl.cast(t, tl.int64)
        valid = t < L
        vmask = valid[:, None]
        vmask_h = vmask & mask_h[None, :]
        # Rows past their length read nothing and get a zero step gradient, so every term they
        # add below is an exact 0 (no 0·garbage = NaN).
        x_t = tl.load(x_rows + t64 * I, mask=vmask & mask_i[None, :], other=0.0).to(tl.float32)
        # h_{t-1}: the saved output of step t−1 for t ≥ 1 (valid there since t−1 < t < L), else h0.
        t_prev = tl.maximum(t64 - 1, 0)
        h_prev = (tl.load(out_ptr + seq_rows + t_prev * H, mask=vmask_h & (t > 0), other=0.0)
                  .to(tl.float32)
                  + tl.load(h0_ptr + bh_off, mask=vmask_h & (t == 0), other=0.0).to(tl.float32))
        g = tl.load(gout_ptr + seq_rows + t64 * H, mask=vmask_h, other=0.0).to(tl.float32)
        dh_t = tl.where(vmask, dh + g, 0.0)

        # Recompute the gates of step t.
        r, z, n, gh_n = _gates(x_t, h_prev, w_ir, w_iz, w_in, w_hr, w_hz, w_hn, b_r, b_z, b_in, b_hn,
                               INPUT_PRECISION)

        if HAS_ATT:
            a = tl.load(att_ptr + offs_b * T + t64, mask=valid, other=0.0).to(tl.float32)
        else:
            a = valid.to(tl.float32)   # not read without att
        dp_r, dp_z, dp_n, dgh_n, zz, da = _gate_grads(dh_t, h_prev, r, z, n, gh_n, a, HAS_ATT)
        if HAS_ATT:
            tl.store(datt_ptr + offs_b * T + t64, da.to(datt_ptr.dtype.element_ty), mask=mask_b)

        dx_t = (tl.dot(dp_r, w_ir, input_precision=INPUT_PRECISION)
                + tl.dot(dp_z, w_iz, input_precision=INPUT_PRECISION)
                + tl.dot(dp_n, w_in, input_precision=INPUT_PRECISION))
        tl.store(dx_rows + t64 * I, dx_t.to(dx_ptr.dtype.element_ty), mask=mask_bi)
        dh_prev = (dh_t * (1.0 - zz)
                   + tl.dot(dp_r, w_hr, input_precision=INPUT_PRECISION)
                   + tl.dot(dp_z, w_hz, input_precision=INPUT_PRECISION)
                   + tl.dot(dgh_n, w_hn, input_precision=INPUT_PRECISION))
        dh = tl.where(vmask, dh_prev, dh)   # a row past its length carries dh through unchanged

        acc_wir = tl.dot(tl.trans(dp_r), x_t, acc_wir, input_precision=INPUT_PRECISION)
        acc_wiz = tl.dot(tl.trans(dp_z), x_t, acc_wiz, input_precision=INPUT_PRECISION)
        acc_win = tl.dot(tl.trans(dp_n), x_t, acc_win, input_precision=INPUT_PRECISION)
        acc_whr = tl.dot(tl.trans(dp_r), h_prev, acc_whr, input_precision=INPUT_PRECISION)
        acc_whz = tl.dot(tl.trans(dp_z), h_prev, acc_whz, input_precision=INPUT_PRECISION)
        acc_whn = tl.dot(tl.trans(dgh_n), h_prev, acc_whn, input_precision=INPUT_PRECISION)
        acc_br += tl.sum(dp_r, axis=0)
        acc_bz += tl.sum(dp_z, axis=0)
        acc_bin += tl.sum(dp_n, axis=0)
        acc_bhn += tl.sum(dgh_n, axis=0)

    tl.store(dh0_ptr + bh_off, dh.to(dh0_ptr.dtype.element_ty), mask=mask_bh)

    # This program's partials; every valid element has exactly one writer.
    mask_hi = mask_h[:, None] & mask_i[None, :]
    mask_hh = mask_h[:, None] & mask_h[None, :]
    wi_off = offs_h[:, None].to(tl.int64) * I + offs_i[None, :]
    wh_off = offs_h[:, None].to(tl.int64) * H + offs_h[None, :]
    pi = dwih_part_ptr + pid * 3 * H * I
    ph = dwhh_part_ptr + pid * 3 * H * H
    tl.store(pi + wi_off, acc_wir, mask=mask_hi)
    tl.store(pi + H * I + wi_off, acc_wiz, mask=mask_hi)
    tl.store(pi + 2 * H * I + wi_off, acc_win, mask=mask_hi)
    tl.store(ph + wh_off, acc_whr, mask=mask_hh)
    tl.store(ph + H * H + wh_off, acc_whz, mask=mask_hh)
    tl.store(ph + 2 * H * H + wh_off, acc_whn, mask=mask_hh)
    pbi = dbih_part_ptr + pid * 3 * H
    pbh = dbhh_part_ptr + pid * 3 * H
    tl.store(pbi + offs_h, acc_br, mask=mask_h)
    tl.store(pbi + H + offs_h, acc_bz, mask=mask_h)
    tl.store(pbi + 2 * H + offs_h, acc_bin, mask=mask_h)
    tl.store(pbh + offs_h, acc_br, mask=mask_h)
    tl.store(pbh + H + offs_h, acc_bz, mask=mask_h)
    tl.store(pbh + 2 * H + offs_h, acc_bhn, mask=mask_h)


@triton.jit
def _load_gate_wt_chunk(w_ptr, gate, offs_k, offs_h, mask_k, mask_h, H, K):
    """`W[gate·H + j, k]` for k in the chunk as an fp32 `[BLOCK_K, BLOCK_H]` tile (i.e. a K-chunk
    of `W_gateᵀ`, read transposed straight from memory)."""
    ptrs = w_ptr + (gate * H + offs_h[None, :]).to(tl.int64) * K + offs_k[:, None]
    w = tl.load(ptrs, mask=mask_k[:, None] & mask_h[None, :], other=0.0)
    return w.to(tl.float32)


@triton.jit
def _load_gate_w_chunk(w_ptr, gate, offs_j, offs_h, mask_j, mask_h, H):
    """Rows `gate·H + j` (j in the chunk) of a `[3H, H]` weight as an fp32 `[BLOCK_K, BLOCK_H]`
    tile."""
    ptrs = w_ptr + (gate * H + offs_j[:, None]).to(tl.int64) * H + offs_h[None, :]
    w = tl.load(ptrs, mask=mask_j[:, None] & mask_h[None, :], other=0.0)
    return w.to(tl.float32)


@triton.jit(do_not_specialize=["T"])
def _augru_fwd_chunked_kernel(
    x_ptr, wih_ptr, whh_ptr, bih_ptr, bhh_ptr, att_ptr, len_ptr, h0_ptr,
    out_ptr, hn_ptr, hbuf_ptr,
    B, T, I, H,
    HAS_BIAS_IH: tl.constexpr,
    HAS_BIAS_HH: tl.constexpr,
    HAS_ATT: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """`_augru_fwd_kernel` for tiles too large to hold on chip (hidden or input size > 64).

    The dots run over K-chunks of `BLOCK_K`, with W re-read (from L2) at every step, so no
    `[128, 128]` operand is ever formed. The `h_{t-1}` chunks come from `hbuf` `[2, B, H]` fp32, a
    double buffer this program owns for its rows: step t reads buffer t % 2 and writes h_t to the
    other, and one barrier per step makes the writes of every thread visible to the next step's
    reads (the buffer a step writes was last read before the previous step's barrier).
    """
    pid = tl.program_id(0).to(tl.int64)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    offs_kc = tl.arange(0, BLOCK_K)
    mask_b = offs_b < B
    mask_h = offs_h < H
    mask_bh = mask_b[:, None] & mask_h[None, :]

    b_r, b_z, b_in, b_hn = _load_biases(bih_ptr, bhh_ptr, offs_h, mask_h, H, HAS_BIAS_IH, HAS_BIAS_HH)

    L = _load_lengths(len_ptr, offs_b, mask_b, T, HAS_LENGTHS)
    L_max = tl.max(L, axis=0)

    bh_off = offs_b[:, None] * H + offs_h[None, :]
    h = tl.load(h0_ptr + bh_off, mask=mask_bh, other=0.0).to(tl.float32)
    # tl.cast, not B.to(): Triton passes an int argument equal to 1 as a plain Python int
    # (specialisation), which has no .to() -- B=1 failed to compile on the H200 (2026-11-28).
    buf_stride = tl.cast(B, tl.int64) * H
    tl.store(hbuf_ptr + bh_off, h, mask=mask_bh)
    tl.debug_barrier()

    x_base = x_ptr + offs_b[:, None] * T * I                   # [BLOCK_B, 1]
    out_rows = out_ptr + offs_b[:, None] * T * H + offs_h[None, :]
    zero_bh = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for t in range(0, L_max):
        valid = t < L
        vmask = valid[:, None]
        t64 = tl.cast(t, tl.int64)
        cur = hbuf_ptr + (t64 % 2) * buf_stride + offs_b[:, None] * H      # [BLOCK_B, 1]
        nxt = hbuf_ptr + ((t64 + 1) % 2) * buf_stride + bh_off
        g_r = zero_bh + b_r[None, :]
        g_z = zero_bh + b_z[None, :]
        gi_n = zero_bh + b_in[None, :]
        gh_n = zero_bh + b_hn[None, :]
        for k0 in range(0, I, BLOCK_K):
            offs_k = k0 + offs_kc
            mask_k = offs_k < I
            xc = tl.load(x_base + t64 * I + offs_k[None, :], mask=vmask & mask_k[None, :],
                         other=0.0).to(tl.float32)
            g_r = tl.dot(xc, _load_gate_wt_chunk(wih_ptr, 0, offs_k, offs_h, mask_k, mask_h, H, I),
                         g_r, input_precision=INPUT_PRECISION)
            g_z = tl.dot(xc, _load_gate_wt_chunk(wih_ptr, 1, offs_k, offs_h, mask_k, mask_h, H, I),
                         g_z, input_precision=INPUT_PRECISION)
            gi_n = tl.dot(xc, _load_gate_wt_chunk(wih_ptr, 2, offs_k, offs_h, mask_k, mask_h, H, I),
                          gi_n, input_precision=INPUT_PRECISION)
        for k0 in range(0, H, BLOCK_K):
            offs_k = k0 + offs_kc
            mask_k = offs_k < H
            hc = tl.load(cur + offs_k[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0)
            g_r = tl.dot(hc, _load_gate_wt_chunk(whh_ptr, 0, offs_k, offs_h, mask_k, mask_h, H, H),
                         g_r, input_precision=INPUT_PRECISION)
            g_z = tl.dot(hc, _load_gate_wt_chunk(whh_ptr, 1, offs_k, offs_h, mask_k, mask_h, H, H),
                         g_z, input_precision=INPUT_PRECISION)
            gh_n = tl.dot(hc, _load_gate_wt_chunk(whh_ptr, 2, offs_k, offs_h, mask_k, mask_h, H, H),
                          gh_n, input_precision=INPUT_PRECISION)
        r, z, n = _activate(g_r, g_z, gi_n, gh_n)
        if HAS_ATT:
            a = tl.load(att_ptr + offs_b * T + t64, mask=valid, other=0.0).to(tl.float32)
            z = a[:, None] * z
        h_new = (1.0 - z) * h + z * n
        h = tl.where(vmask, h_new, h)
        o = tl.where(vmask, h_new, 0.0)
        tl.store(out_rows + t64 * H, o.to(out_ptr.dtype.element_ty), mask=mask_bh)
        tl.store(nxt, h, mask=mask_bh)
        tl.debug_barrier()
    zeros = tl.zeros((BLOCK_B, BLOCK_H), dtype=out_ptr.dtype.element_ty)
    for t in range(L_max, T):
        tl.store(out_rows + tl.cast(t, tl.int64) * H, zeros, mask=mask_bh)
    tl.store(hn_ptr + bh_off, h.to(hn_ptr.dtype.element_ty), mask=mask_bh)


@triton.jit(do_not_specialize=["T"])
def _augru_bwd_chunked_kernel(
    gout_ptr, ghn_ptr, x_ptr, wih_ptr, whh_ptr, bih_ptr, bhh_ptr, att_ptr, len_ptr, h0_ptr,
    out_ptr,
    gbuf_ptr, datt_ptr, dh0_ptr,
    B, T, I, H,
    HAS_BIAS_IH: tl.constexpr,
    HAS_BIAS_HH: tl.constexpr,
    HAS_ATT: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """`_augru_bwd_kernel` for tiles too large to hold on chip (hidden or input size > 64).

    Six `[128, 128]` fp32 dW accumulators cannot live in one SM, so this kernel only runs the
    recurrence: it writes the gate gradients of every step to `gbuf` `[B, T, 4, H]` fp32
    (dp_r, dp_z, dp_n, dp_n ⊙ r; zero-initialised by the host, so steps past a row's length stay
    zero) and the host forms dx, dW and db from them with GEMMs. `dh_{t-1}` needs
    `dp · W_hh` over K-chunks of the gradients just written: a barrier between the write and the
    reads makes every thread's values visible (each step writes its own slot t: no overwrite).
    """
    pid = tl.program_id(0).to(tl.int64)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    offs_kc = tl.arange(0, BLOCK_K)
    mask_b = offs_b < B
    mask_h = offs_h < H
    mask_bh = mask_b[:, None] & mask_h[None, :]

    b_r, b_z, b_in, b_hn = _load_biases(bih_ptr, bhh_ptr, offs_h, mask_h, H, HAS_BIAS_IH, HAS_BIAS_HH)

    L = _load_lengths(len_ptr, offs_b, mask_b, T, HAS_LENGTHS)
    L_max = tl.max(L, axis=0)

    bh_off = offs_b[:, None] * H + offs_h[None, :]
    dh = tl.load(ghn_ptr + bh_off, mask=mask_bh, other=0.0).to(tl.float32)
    if HAS_ATT:
        for t in range(L_max, T):
            tl.store(datt_ptr + offs_b * T + tl.cast(t, tl.int64),
                     tl.zeros((BLOCK_B,), dtype=datt_ptr.dtype.element_ty), mask=mask_b)

    x_base = x_ptr + offs_b[:, None] * T * I
    seq_base = offs_b[:, None] * T * H                        # [BLOCK_B, 1] into outputs
    g_base = gbuf_ptr + offs_b[:, None] * T * 4 * H          # [BLOCK_B, 1] into gbuf
    zero_bh = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for s in range(0, L_max):
        t = L_max - 1 - s
        t64 = tl.cast(t, tl.int64)
        valid = t < L
        vmask = valid[:, None]
        vmask_h = vmask & mask_h[None, :]
        t_prev = tl.maximum(t64 - 1, 0)
        hp_rows = out_ptr + seq_base + t_prev * H             # h_{t-1} for t >= 1
        h0_rows = h0_ptr + offs_b[:, None] * H                # h_{-1} = h0 for t = 0

        g_r = zero_bh + b_r[None, :]
        g_z = zero_bh + b_z[None, :]
        gi_n = zero_bh + b_in[None, :]
        gh_n = zero_bh + b_hn[None, :]
        for k0 in range(0, I, BLOCK_K):
            offs_k = k0 + offs_kc
            mask_k = offs_k < I
            xc = tl.load(x_base + t64 * I + offs_k[None, :], mask=vmask & mask_k[None, :],
                         other=0.0).to(tl.float32)
            g_r = tl.dot(xc, _load_gate_wt_chunk(wih_ptr, 0, offs_k, offs_h, mask_k, mask_h, H, I),
                         g_r, input_precision=INPUT_PRECISION)
            g_z = tl.dot(xc, _load_gate_wt_chunk(wih_ptr, 1, offs_k, offs_h, mask_k, mask_h, H, I),
                         g_z, input_precision=INPUT_PRECISION)
            gi_n = tl.dot(xc, _load_gate_wt_chunk(wih_ptr, 2, offs_k, offs_h, mask_k, mask_h, H, I),
                          gi_n, input_precision=INPUT_PRECISION)
        for k0 in range(0, H, BLOCK_K):
            offs_k = k0 + offs_kc
            mk = vmask & (offs_k < H)[None, :]
            hc = (tl.load(hp_rows + offs_k[None, :], mask=mk & (t > 0), other=0.0).to(tl.float32)
                  + tl.load(h0_rows + offs_k[None, :], mask=mk & (t == 0), other=0.0)
                  .to(tl.float32))
            mask_k = offs_k < H
            g_r = tl.dot(hc, _load_gate_wt_chunk(whh_ptr, 0, offs_k, offs_h, mask_k, mask_h, H, H),
                         g_r, input_precision=INPUT_PRECISION)
            g_z = tl.dot(hc, _load_gate_wt_chunk(whh_ptr, 1, offs_k, offs_h, mask_k, mask_h, H, H),
                         g_z, input_precision=INPUT_PRECISION)
            gh_n = tl.dot(hc, _load_gate_wt_chunk(whh_ptr, 2, offs_k, offs_h, mask_k, mask_h, H, H),
                          gh_n, input_precision=INPUT_PRECISION)
        h_prev = (tl.load(hp_rows + offs_h[None, :], mask=vmask_h & (t > 0), other=0.0)
                  .to(tl.float32)
                  + tl.load(h0_rows + offs_h[None, :], mask=vmask_h & (t == 0), other=0.0)
                  .to(tl.float32))
        r, z, n = _activate(g_r, g_z, gi_n, gh_n)

        g = tl.load(gout_ptr + seq_base + t64 * H + offs_h[None, :], mask=vmask_h,
                    other=0.0).to(tl.float32)
        dh_t = tl.where(vmask, dh + g, 0.0)
        if HAS_ATT:
            a = tl.load(att_ptr + offs_b * T + t64, mask=valid, other=0.0).to(tl.float32)
        else:
            a = valid.to(tl.float32)   # not read without att
        dp_r, dp_z, dp_n, dgh_n, zz, da = _gate_grads(dh_t, h_prev, r, z, n, gh_n, a, HAS_ATT)
        if HAS_ATT:
            tl.store(datt_ptr + offs_b * T + t64, da.to(datt_ptr.dtype.element_ty), mask=mask_b)

        g_t = g_base + t64 * 4 * H                             # [BLOCK_B, 1]
        tl.store(g_t + offs_h[None, :], dp_r, mask=mask_bh)
        tl.store(g_t + H + offs_h[None, :], dp_z, mask=mask_bh)
        tl.store(g_t + 2 * H + offs_h[None, :], dp_n, mask=mask_bh)
        tl.store(g_t + 3 * H + offs_h[None, :], dgh_n, mask=mask_bh)
        tl.debug_barrier()
        dh_prev = dh_t * (1.0 - zz)
        for j0 in range(0, H, BLOCK_K):
            offs_j = j0 + offs_kc
            mask_j = offs_j < H
            mask_bj = mask_b[:, None] & mask_j[None, :]
            c_r = tl.load(g_t + offs_j[None, :], mask=mask_bj, other=0.0)
            c_z = tl.load(g_t + H + offs_j[None, :], mask=mask_bj, other=0.0)
            c_n = tl.load(g_t + 3 * H + offs_j[None, :], mask=mask_bj, other=0.0)
            dh_prev = tl.dot(c_r, _load_gate_w_chunk(whh_ptr, 0, offs_j, offs_h, mask_j, mask_h, H),
                             dh_prev, input_precision=INPUT_PRECISION)
            dh_prev = tl.dot(c_z, _load_gate_w_chunk(whh_ptr, 1, offs_j, offs_h, mask_j, mask_h, H),
                             dh_prev, input_precision=INPUT_PRECISION)
            dh_prev = tl.dot(c_n, _load_gate_w_chunk(whh_ptr, 2, offs_j, offs_h, mask_j, mask_h, H),
                             dh_prev, input_precision=INPUT_PRECISION)
        dh = tl.where(vmask, dh_prev, dh)

    tl.store(dh0_ptr + bh_off, dh.to(dh0_ptr.dtype.element_ty), mask=mask_bh)


# ----------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------


def _block(n):
    return max(triton.next_power_of_2(n), 16)


def _check(x, weight_ih, weight_hh, h0, input_precision):
    if input_precision not in _PRECISIONS:
        raise ValueError(f"augru (triton): input_precision must be one of {_PRECISIONS}, "
                         f"got {input_precision!r}")
    if x.dim() != 3:
        raise ValueError(f"augru (triton): x must be [B, T, I], got shape {tuple(x.shape)}")
    B, T, I = x.shape
    H = weight_hh.shape[1]
    if H > _MAX_DIM:
        raise ValueError(f"augru (triton): hidden_size {H} > {_MAX_DIM} not supported")
    if I > _MAX_DIM:
        raise ValueError(f"augru (triton): input_size {I} > {_MAX_DIM} not supported")
    if tuple(weight_ih.shape) != (3 * H, I) or tuple(weight_hh.shape) != (3 * H, H):
        raise ValueError(f"augru (triton): weight_ih must be [3H, I] = [{3 * H}, {I}] and "
                         f"weight_hh [3H, H] = [{3 * H}, {H}]; got {tuple(weight_ih.shape)} and "
                         f"{tuple(weight_hh.shape)}")
    if tuple(h0.shape) != (B, H):
        raise ValueError(f"augru (triton): h0 must be [B, H] = [{B}, {H}], got {tuple(h0.shape)}")
    return B, T, I, H


@functools.lru_cache(maxsize=None)
def _max_smem(device_type, index):
    if device_type == "cuda":
        props = torch.cuda.get_device_properties(index)
        return getattr(props, "shared_memory_per_block_optin", 0) or props.shared_memory_per_block
    return 1 << 30  # interpreter: no limit


def _smem_estimate(block_i, block_h, input_precision):
    """Shared memory the on-chip kernels need (the backward's, the larger), in bytes.

    Scaled from Triton 3.8's sm_90 compile of `_augru_bwd_kernel` at BLOCK_I = BLOCK_H = 64,
    BLOCK_B = 16 (both kernels hold the converted W tiles in shared memory for the whole loop):
    124 KiB with "ieee" operands, 216 KiB with "tf32" (the MMA wants each W twice, once per
    orientation). 8 KiB of slack covers the smaller tiles' fixed part (checked at 16 and 32).
    """
    full = 126976 if input_precision == "ieee" else 221184
    area = 3 * block_h * block_i + 3 * block_h * block_h
    return full * area // (6 * 64 * 64) + 8192


def _use_chunked(device, block_i, block_h, input_precision):
    """True → the chunked kernels (tiles > 64, or on-chip W does not fit the device's smem)."""
    if _FORCE_CHUNKED:
        return True
    if block_i > _ON_CHIP_MAX or block_h > _ON_CHIP_MAX:
        return True
    return _smem_estimate(block_i, block_h, input_precision) > _max_smem(device.type, device.index)


def _num_warps(block_i, block_h):
    if _INTERPRET:
        return 1
    # ptxas, fp32 "ieee", BLOCK_I = BLOCK_H = 64, 8 warps: forward 254 registers, no spills (sm_80
    # and sm_90); backward 255 registers and 2.8 KB spilled per thread on sm_90, 21 KB on sm_80.
    # 4 warps spill 10–44 KB per thread at that size; at ≤ 32 they spill < 1 KB.
    return 4 if block_h <= 32 and block_i <= 32 else 8


def _c(t):
    return None if t is None else t.contiguous()


def _optional_args(bias_ih, bias_hh, att, lengths, dummy):
    # Any tensor stands in for an absent optional one: its pointer is never dereferenced.
    return (bias_ih if bias_ih is not None else dummy,
            bias_hh if bias_hh is not None else dummy,
            att if att is not None else dummy,
            lengths if lengths is not None else dummy)


def _flags(bias_ih, bias_hh, att, lengths):
    return dict(HAS_BIAS_IH=bias_ih is not None, HAS_BIAS_HH=bias_hh is not None,
                HAS_ATT=att is not None, HAS_LENGTHS=lengths is not None)


def augru_fwd(x, weight_ih, weight_hh, bias_ih, bias_hh, att, lengths, h0, *,
              input_precision: str = "ieee"):
    """AUGRU / GRU forward (DIEN's AUGRU in torch.nn.GRU's gate order r, z, n).

    Args:
        x: `[B, T, I]`. weight_ih: `[3H, I]`. weight_hh: `[3H, H]`. bias_ih, bias_hh: `[3H]` or
            None (zero). att: `[B, T]` or None (a ≡ 1: plain GRU). lengths: `[B]` int64 in
            `[0, T]`, or None (all T). h0: `[B, H]`. Same device and float dtype (float32,
            bfloat16, float16); H, I ≤ 128.
        input_precision: "ieee" (exact fp32 FMA dots, default) or "tf32" (tensor cores).

    Returns:
        `(outputs [B, T, H], h_n [B, H])`, dtype of x; outputs are zero at steps `t >= lengths[b]`.

    Example:
        >>> out, h_n = augru_fwd(x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0)
    """
    B, T, I, H = _check(x, weight_ih, weight_hh, h0, input_precision)
    x, weight_ih, weight_hh, h0 = _c(x), _c(weight_ih), _c(weight_hh), _c(h0)
    bias_ih, bias_hh, att, lengths = _c(bias_ih), _c(bias_hh), _c(att), _c(lengths)
    outputs = torch.empty((B, T, H), device=x.device, dtype=x.dtype)
    h_n = torch.empty((B, H), device=x.device, dtype=x.dtype)
    if B == 0 or H == 0:
        return outputs, h_n
    if T == 0:
        h_n.copy_(h0)
        return outputs, h_n
    # An empty x / W_ih (I = 0) may have a null data pointer: h0 stands in (never read, all masked).
    x_arg = x if x.numel() else h0
    wih_arg = weight_ih if weight_ih.numel() else h0
    opt = _optional_args(bias_ih, bias_hh, att, lengths, h0)
    block_i, block_h = _block(I), _block(H)
    grid = (triton.cdiv(B, _BLOCK_B),)
    if _use_chunked(x.device, block_i, block_h, input_precision):
        hbuf = torch.empty((2, B, H), device=x.device, dtype=torch.float32)
        torch.library.wrap_triton(_augru_fwd_chunked_kernel)[grid](
            x_arg, wih_arg, weight_hh, *opt, h0, outputs, h_n, hbuf,
            B, T, I, H,
            **_flags(bias_ih, bias_hh, att, lengths),
            INPUT_PRECISION=input_precision,
            BLOCK_B=_BLOCK_B, BLOCK_H=block_h, BLOCK_K=_CHUNK_K,
            num_warps=_num_warps(_CHUNK_K, block_h), num_stages=1,
        )
    else:
        torch.library.wrap_triton(_augru_fwd_kernel)[grid](
            x_arg, wih_arg, weight_hh, *opt, h0, outputs, h_n,
            B, T, I, H,
            **_flags(bias_ih, bias_hh, att, lengths),
            INPUT_PRECISION=input_precision,
            BLOCK_B=_BLOCK_B, BLOCK_I=block_i, BLOCK_H=block_h,
            num_warps=_num_warps(block_i, block_h), num_stages=1,
        )
    return outputs, h_n


def augru_bwd(grad_outputs, grad_h_n, x, weight_ih, weight_hh, bias_ih, bias_hh, att, lengths,
              h0, outputs, *, input_precision: str = "ieee"):
    """Backward of `augru_fwd`, recomputing the gates from the saved `outputs` (the h sequence).

    Args:
        grad_outputs: `[B, T, H]` (entries at steps `t >= lengths[b]` are ignored).
        grad_h_n: `[B, H]`.
        x, weight_ih, weight_hh, bias_ih, bias_hh, att, lengths, h0: as in `augru_fwd`.
        outputs: `[B, T, H]`, the forward's outputs.
        input_precision: as in `augru_fwd`.

    Returns:
        `(dx [B, T, I], dw_ih [3H, I], dw_hh [3H, H], db_ih [3H], db_hh [3H], datt [B, T],
        dh0 [B, H])`; datt is zeros when att is None; db_* are returned even without biases.

    Example:
        >>> dx, dw_ih, dw_hh, db_ih, db_hh, datt, dh0 = augru_bwd(
        ...     g_out, g_hn, x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0, out)
    """
    B, T, I, H = _check(x, weight_ih, weight_hh, h0, input_precision)
    grad_outputs, grad_h_n = _c(grad_outputs), _c(grad_h_n)
    x, weight_ih, weight_hh, h0, outputs = _c(x), _c(weight_ih), _c(weight_hh), _c(h0), _c(outputs)
    bias_ih, bias_hh, att, lengths = _c(bias_ih), _c(bias_hh), _c(att), _c(lengths)
    dev = x.device
    att_dtype = att.dtype if att is not None else x.dtype
    bih_dtype = bias_ih.dtype if bias_ih is not None else weight_ih.dtype
    bhh_dtype = bias_hh.dtype if bias_hh is not None else weight_hh.dtype

    datt = (torch.empty if att is not None else torch.zeros)((B, T), device=dev, dtype=att_dtype)
    dh0 = torch.empty((B, H), device=dev, dtype=h0.dtype)
    if B == 0 or H == 0 or T == 0:
        # No step runs: the weights get no gradient and grad_h_n passes straight to h0.
        datt.zero_()
        dh0.copy_(grad_h_n)
        return (torch.zeros_like(x), torch.zeros_like(weight_ih), torch.zeros_like(weight_hh),
                torch.zeros((3 * H,), device=dev, dtype=bih_dtype),
                torch.zeros((3 * H,), device=dev, dtype=bhh_dtype), datt, dh0)

    x_arg = x if x.numel() else h0
    wih_arg = weight_ih if weight_ih.numel() else h0
    opt = _optional_args(bias_ih, bias_hh, att, lengths, h0)
    block_i, block_h = _block(I), _block(H)
    programs = triton.cdiv(B, _BLOCK_B)
    if _use_chunked(dev, block_i, block_h, input_precision):
        # Gate gradients of every step (dp_r, dp_z, dp_n, dp_n ⊙ r); zero where no step runs.
        gbuf = torch.zeros((B, T, 4, H), device=dev, dtype=torch.float32)
        torch.library.wrap_triton(_augru_bwd_chunked_kernel)[(programs,)](
            grad_outputs, grad_h_n, x_arg, wih_arg, weight_hh, *opt, h0, outputs,
            gbuf, datt, dh0,
            B, T, I, H,
            **_flags(bias_ih, bias_hh, att, lengths),
            INPUT_PRECISION=input_precision,
            BLOCK_B=_BLOCK_B, BLOCK_H=block_h, BLOCK_K=_CHUNK_K,
            num_warps=_num_warps(_CHUNK_K, block_h), num_stages=1,
        )
        # dx, dW, db as GEMMs over all B·T steps (deterministic; fp32).
        g = gbuf.view(B * T, 4 * H)
        g_i = g[:, : 3 * H]                                            # dp_r, dp_z, dp_n
        g_h = torch.cat([g[:, : 2 * H], g[:, 3 * H:]], dim=1)          # dp_r, dp_z, dp_n ⊙ r
        x2 = x.float()
        if lengths is not None:
            # Padded steps of x are never read by the kernels (they may hold NaN): 0 · NaN = NaN.
            steps = torch.arange(T, device=dev)
            x2 = torch.where((steps[None, :] < lengths[:, None])[..., None], x2, 0.0)
        x2 = x2.reshape(B * T, I)
        h_prev = torch.cat([h0[:, None].float(), outputs[:, :-1].float()], dim=1)
        dx = (g_i @ weight_ih.float()).view(B, T, I)
        dw_ih = g_i.t() @ x2
        dw_hh = g_h.t() @ h_prev.view(B * T, H)
        db_ih, db_hh = g_i.sum(0), g_h.sum(0)
        return (dx.to(x.dtype), dw_ih.to(weight_ih.dtype), dw_hh.to(weight_hh.dtype),
                db_ih.to(bih_dtype), db_hh.to(bhh_dtype), datt, dh0)

    dx = torch.empty((B, T, I), device=dev, dtype=x.dtype)
    # fp32 partials, fully overwritten by the kernel (every valid element has one writer).
    dwih_part = torch.empty((programs, 3 * H, I), device=dev, dtype=torch.float32)
    dwhh_part = torch.empty((programs, 3 * H, H), device=dev, dtype=torch.float32)
    dbih_part = torch.empty((programs, 3 * H), device=dev, dtype=torch.float32)
    dbhh_part = torch.empty((programs, 3 * H), device=dev, dtype=torch.float32)
    dx_arg = dx if dx.numel() else h0                # I = 0: never written (all lanes masked)
    dwih_arg = dwih_part if dwih_part.numel() else dbih_part
    torch.library.wrap_triton(_augru_bwd_kernel)[(programs,)](
        grad_outputs, grad_h_n, x_arg, wih_arg, weight_hh, *opt, h0, outputs,
        dx_arg, datt, dh0,
        dwih_arg, dwhh_part, dbih_part, dbhh_part,
        B, T, I, H,
        **_flags(bias_ih, bias_hh, att, lengths),
        INPUT_PRECISION=input_precision,
        BLOCK_B=_BLOCK_B, BLOCK_I=block_i, BLOCK_H=block_h,
        num_warps=_num_warps(block_i, block_h), num_stages=1,
    )
    # One deterministic reduction over the programs (no atomics: bit-reproducible run to run).
    dw_ih, dw_hh = dwih_part.sum(0), dwhh_part.sum(0)
    db_ih, db_hh = dbih_part.sum(0), dbhh_part.sum(0)
    return (dx, dw_ih.to(weight_ih.dtype), dw_hh.to(weight_hh.dtype), db_ih.to(bih_dtype),
            db_hh.to(bhh_dtype), datt, dh0)
