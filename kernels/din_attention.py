"""Triton kernels for DIN's local activation unit (udg_fast.ops.din_attention) on a GPU.

For a sample with target q `[D]` and history keys k_t `[D]` the op scores every step

    s_t = MLP([q, k_t, q − k_t, q ⊙ k_t])      (0 at masked / padded steps)

with fc1 `[H1, 4D]`, then one more hidden layer `[H2, H1]` (DIN's (80, 40)) or none, and the score
layer `[1, H_last]`; sigmoid or ReLU after each hidden layer. The kernels use the op's exact
rewrite of the first layer,

    fc1 · [q, k, q − k, q ⊙ k] + b1 = k · (W_k − W_d)ᵀ + (q ⊙ k) · W_pᵀ + qterm,
    qterm = q · (W_q + W_d)ᵀ + b1                      (one [B, H1] GEMM per call, on the host)

so a step costs 2D inputs instead of 4D and the [B, T, 4D] concat is never built; and the valid
steps are read from the mask in the kernel, not packed with nonzero() (which made the eager form
wait for the GPU).

- `_din_att_fwd_kernel`: one program per sample, the steps in chunks of BLOCK_T rows. The first
  hidden layer a1 is made BLOCK_C (32) columns at a time — both first-layer dots on `[BD, 32]`
  weight tiles, the activation — and consumed at once: into the second layer's dot (a2 accumulates
  over the column chunks), or into the score's row sum with one hidden layer. Whole `[64, 128]`
  weight tiles held on chip took 230 KB of shared memory in the backward at DIN's padded sizes,
  444 KB at the largest and 428 KB with TF32 dots (ptxas, sm_90; a block may use 227 KB); by
  column chunks DIN's sizes take 70 KB forward and 119–131 KB backward. Writes the scores only.
- `_din_att_bwd_kernel`: one program per block of samples. Per step chunk, pass 1 recomputes a2
  (a1 chunk by chunk) and forms g2 = ds · w3 · act'(a2); pass 2 walks a1's column chunks again:
  g1 = (g2 · W2) ⊙ act'(a1) (ds · w3 ⊙ act'(a1) with one hidden layer), dW2 += g2ᵀ a1 (into the
  program's own fp32 workspace, loaded and stored: no atomics), g1 written out, Σ_t g1 per sample,
  and the dots of dk = g1 · (W_k − W_d) + q ⊙ (g1 · W_p) and of Σ_t k ⊙ (g1 · W_p) accumulated
  over the chunks. db2 and the score layer's gradients are fp32 register accumulators, written per
  program. The partials are reduced by one torch sum: reproducible run to run.
- The host (`din_attention_bwd`) finishes with GEMMs over all B·T steps: Gk = g1ᵀ k and
  Gp = g1ᵀ (q ⊙ k); then dW1 = [Σg1ᵀ q, Gk, Σg1ᵀ q − Gk, Gp], db1 = Σ g1 and
  dq = Σ_t k ⊙ (g1 W_p) + (Σ_t g1) · (W_q + W_d).

Sizes: D ≤ 128 and H2 ≤ 64 (padded to powers of two ≥ 16; H1 any), one or two hidden layers,
activation "sigmoid" or "relu"; `udg_fast.ops.din_attention` runs the eager form otherwise.
Inputs float32, bfloat16 or float16; every activation and accumulator fp32; `tl.dot` with input_precision "ieee"
(exact fp32) or "tf32", as torch's float32 matmul precision says (the op picks).

Status: tested under TRITON_INTERPRET=1 against the float64 literal-concat reference and compiled
for sm_90 (tests/ops/triton_compile_sm90.py); not yet run or timed on a GPU.
"""
import os

import torch
import triton
import triton.language as tl

__all__ = ["din_attention_fwd", "din_attention_bwd", "supports"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Largest D (query / key width) and H2 (the second hidden layer); H1 has no limit (a1 is made
# BLOCK_C columns at a time). At D 128 / H2 128 the backward needed 254 KB of shared memory with
# TF32 dots (ptxas, sm_90): H2 stays at 64 (DIN's is 40).
_MAX_D = 128
_MAX_H2 = 64
# Steps per chunk: the M of every dot (16 instead changed the shared memory by < 10 %: the weight
# operands dominate it).
_BLOCK_T = 32
# Samples per backward program: its partials are [programs, H2, H1] + small; 16 samples per
# program gives 128 programs at B = 2048 (one wave on an H100 / H200's 132 SMs).
_SAMPLES_PER_PROGRAM = 16
# Columns of a1 per step of the first layer's loop: the weight tiles are [BLOCK_D, 32], so the dot
# operands fit in shared memory at every supported size and precision (holding whole [64, 128]
# tiles took 230 KB at DIN's padded sizes, 444 KB at the largest, 428 KB with TF32: an H100 / H200
# block may use 227 KB; ptxas, sm_90).
_BLOCK_C = 32
_PRECISIONS = ("ieee", "tf32")


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(max(int(n), 1)))


def supports(query, keys, fc1_weight, weights, activation) -> bool:
    """Whether these kernels cover the call's MLP (else the op runs its eager form); the dtype is
    the backend's check (`_backend.DTYPES["triton"]`)."""
    if activation not in ("sigmoid", "relu") or len(weights) not in (1, 2):
        return False
    H2 = weights[0].shape[0] if len(weights) == 2 else 0
    return query.shape[1] <= _MAX_D and H2 <= _MAX_H2


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _act(x, SIGMOID: tl.constexpr):
    if SIGMOID:
        return tl.sigmoid(x)
    return tl.maximum(x, 0.0)


@triton.jit
def _dact(a, SIGMOID: tl.constexpr):
    """The activation's derivative from its output a: σ' = a(1 − a); ReLU: 1 where a > 0."""
    if SIGMOID:
        return a * (1.0 - a)
    return tl.where(a > 0.0, 1.0, 0.0)


@triton.jit
def _load_mat(ptr, offs_r, offs_c, mask_r, mask_c, stride_r, stride_c):
    """A zero-padded fp32 tile `[len(offs_r), len(offs_c)]` of a strided matrix."""
    p = ptr + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c
    return tl.load(p, mask=mask_r[:, None] & mask_c[None, :], other=0.0).to(tl.float32)


@triton.jit
def _first_layer(k, pk, qt_ptr, wkd_ptr, wp_ptr, bl, c, H1, offs_d, mask_d, offs_c,
                 SIGMOID: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """a1's columns [c, c + BLOCK_C): act(k · (W_k − W_d)ᵀ + (q ⊙ k) · W_pᵀ + qterm) `[BT, BC]`,
    and the column mask. The weight tiles are `[BD, BC]`: small enough that every dot operand of
    both kernels fits in shared memory at any supported size."""
    cols = c + offs_c
    mask_c = cols < H1
    wkd = _load_mat(wkd_ptr, offs_d, cols, mask_d, mask_c, H1, 1)          # (W_k − W_d)ᵀ [D, H1]
    wp = _load_mat(wp_ptr, offs_d, cols, mask_d, mask_c, H1, 1)            # W_pᵀ [D, H1]
    qt = tl.load(qt_ptr + bl * H1 + cols, mask=mask_c, other=0.0)
    a1 = tl.dot(k, wkd, input_precision=INPUT_PRECISION) + tl.dot(pk, wp, input_precision=INPUT_PRECISION)
    return _act(a1 + qt[None, :], SIGMOID), cols, mask_c


@triton.jit
def _load_steps(q_ptr, k_ptr, m_ptr, bl, t0, T, D, offs_t, offs_d, mask_d, HAS_MASK: tl.constexpr):
    """Steps [t0, t0 + BLOCK_T) of sample bl: (t, t < T, valid, q [BD], k [BT, BD], q ⊙ k). Masked
    steps are not read (their keys may hold anything, NaN included): zero rows."""
    t = t0 + offs_t
    in_t = t < T
    valid = in_t
    if HAS_MASK:
        valid = valid & (tl.load(m_ptr + bl * T + t, mask=in_t, other=0) != 0)
    q = tl.load(q_ptr + bl * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    k = _load_mat(k_ptr + bl * T * D, t, offs_d, valid, mask_d, D, 1)
    return t, in_t, valid, q, k, k * q[None, :]


@triton.jit
def _second_layer(k, pk, qt_ptr, wkd_ptr, wp_ptr, w2t_ptr, b2_ptr, bl, H1, H2, offs_d, mask_d, offs_c,
                  offs_h2, mask_h2, SIGMOID: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                  BLOCK_T: tl.constexpr, BLOCK_H2: tl.constexpr, BLOCK_C: tl.constexpr):
    """a2 = act(a1 · W2ᵀ + b2) `[BT, BH2]`, a1 produced and consumed BLOCK_C columns at a time."""
    acc = tl.zeros([BLOCK_T, BLOCK_H2], dtype=tl.float32)
    for c in range(0, H1, BLOCK_C):
        a1, cols, mask_c = _first_layer(k, pk, qt_ptr, wkd_ptr, wp_ptr, bl, c, H1, offs_d, mask_d, offs_c,
                                        SIGMOID, INPUT_PRECISION)
        w2t = _load_mat(w2t_ptr, cols, offs_h2, mask_c, mask_h2, H2, 1)     # W2ᵀ [H1, H2] rows c..
        acc += tl.dot(a1, w2t, input_precision=INPUT_PRECISION)
    b2 = tl.load(b2_ptr + offs_h2, mask=mask_h2, other=0.0).to(tl.float32)
    return _act(acc + b2[None, :], SIGMOID)


@triton.jit
def _din_att_fwd_kernel(
    q_ptr, k_ptr, m_ptr, qt_ptr, wkd_ptr, wp_ptr, w2t_ptr, b2_ptr, w3_ptr, b3_ptr, s_ptr,
    T, D, H1, H2,
    HAS_MASK: tl.constexpr, TWO: tl.constexpr, SIGMOID: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H2: tl.constexpr, BLOCK_C: tl.constexpr,
):
    bl = tl.program_id(0).to(tl.int64)
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    offs_h2 = tl.arange(0, BLOCK_H2)
    mask_d, mask_h2 = offs_d < D, offs_h2 < H2
    b3 = tl.load(b3_ptr).to(tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t, in_t, valid, q, k, pk = _load_steps(q_ptr, k_ptr, m_ptr, bl, t0, T, D, offs_t, offs_d, mask_d, HAS_MASK)
        if TWO:
            a2 = _second_layer(k, pk, qt_ptr, wkd_ptr, wp_ptr, w2t_ptr, b2_ptr, bl, H1, H2, offs_d, mask_d,
                               offs_c, offs_h2, mask_h2, SIGMOID, INPUT_PRECISION, BLOCK_T, BLOCK_H2, BLOCK_C)
            w3 = tl.load(w3_ptr + offs_h2, mask=mask_h2, other=0.0).to(tl.float32)
            s = tl.sum(a2 * w3[None, :], axis=1)
        else:
            s = tl.zeros([BLOCK_T], dtype=tl.float32)
            for c in range(0, H1, BLOCK_C):
                a1, cols, mask_c = _first_layer(k, pk, qt_ptr, wkd_ptr, wp_ptr, bl, c, H1, offs_d, mask_d,
                                                offs_c, SIGMOID, INPUT_PRECISION)
                w3 = tl.load(w3_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
                s += tl.sum(a1 * w3[None, :], axis=1)
        s = tl.where(valid, s + b3, 0.0)
        tl.store(s_ptr + bl * T + t, s.to(s_ptr.dtype.element_ty), mask=in_t)


@triton.jit
def _add_tile(ptr, offs_r, offs_c, mask_r, mask_c, stride_r, value):
    """`ptr[r, c] += value` over a tile of an fp32 matrix that only this program writes."""
    p = ptr + offs_r[:, None] * stride_r + offs_c[None, :]
    m = mask_r[:, None] & mask_c[None, :]
    tl.store(p, tl.load(p, mask=m, other=0.0) + value, mask=m)


@triton.jit
def _din_att_bwd_kernel(
    ds_ptr, q_ptr, k_ptr, m_ptr, qt_ptr, wkd_ptr, wp_ptr, w2t_ptr, b2_ptr, w3_ptr,
    dk_ptr, g1_ptr, sd_ptr, dqp_ptr, dw2_ptr, db2_ptr, dw3_ptr, db3_ptr,
    B, T, D, H1, H2, SAMPLES,
    HAS_MASK: tl.constexpr, TWO: tl.constexpr, SIGMOID: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H2: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """sd, dw2, dw3 must be zero on entry (they are accumulated with loads and stores; every
    element has one writing program)."""
    pid = tl.program_id(0)
    p = pid.to(tl.int64)
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c = tl.arange(0, BLOCK_C)
    offs_h2 = tl.arange(0, BLOCK_H2)
    mask_d, mask_h2 = offs_d < D, offs_h2 < H2
    if TWO:
        w3 = tl.load(w3_ptr + offs_h2, mask=mask_h2, other=0.0).to(tl.float32)
        acc_b2 = tl.zeros([BLOCK_H2], dtype=tl.float32)
        acc_w3 = tl.zeros([BLOCK_H2], dtype=tl.float32)
    acc_b3 = tl.zeros([BLOCK_T], dtype=tl.float32)
    for i in range(0, SAMPLES):
        b = pid * SAMPLES + i
        if b < B:
            bl = b.to(tl.int64)
            dqp = tl.zeros([BLOCK_D], dtype=tl.float32)
            for t0 in range(0, T, BLOCK_T):
                t, in_t, valid, q, k, pk = _load_steps(q_ptr, k_ptr, m_ptr, bl, t0, T, D, offs_t, offs_d, mask_d,
                                                       HAS_MASK)
                ds = tl.load(ds_ptr + bl * T + t, mask=in_t, other=0.0).to(tl.float32)
                ds = tl.where(valid, ds, 0.0)
                acc_b3 += ds
                if TWO:
                    # pass 1: a2 (a1 recomputed chunk by chunk); the score layer's gradients
                    a2 = _second_layer(k, pk, qt_ptr, wkd_ptr, wp_ptr, w2t_ptr, b2_ptr, bl, H1, H2, offs_d,
                                       mask_d, offs_c, offs_h2, mask_h2, SIGMOID, INPUT_PRECISION, BLOCK_T,
                                       BLOCK_H2, BLOCK_C)
                    acc_w3 += tl.sum(ds[:, None] * a2, axis=0)
                    g2 = ds[:, None] * w3[None, :] * _dact(a2, SIGMOID)                    # [BT, BH2]
                    acc_b2 += tl.sum(g2, axis=0)
                gwp = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
                dk = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
                # pass 2, BLOCK_C columns of a1 at a time: g1 = ∂s/∂(a1's pre-activation)
                for c in range(0, H1, BLOCK_C):
                    a1, cols, mask_c = _first_layer(k, pk, qt_ptr, wkd_ptr, wp_ptr, bl, c, H1, offs_d, mask_d,
                                                    offs_c, SIGMOID, INPUT_PRECISION)
                    if TWO:
                        w2 = _load_mat(w2t_ptr, offs_h2, cols, mask_h2, mask_c, 1, H2)       # W2 [H2, H1]
                        g1 = tl.dot(g2, w2, input_precision=INPUT_PRECISION) * _dact(a1, SIGMOID)
                        _add_tile(dw2_ptr + p * H2 * H1, offs_h2, cols, mask_h2, mask_c, H1,
                                  tl.dot(tl.trans(g2), a1, input_precision=INPUT_PRECISION))
                    else:
                        w3c = tl.load(w3_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
                        g1 = ds[:, None] * w3c[None, :] * _dact(a1, SIGMOID)
                        w3p = dw3_ptr + p * H1 + cols
                        tl.store(w3p, tl.load(w3p, mask=mask_c, other=0.0) + tl.sum(ds[:, None] * a1, axis=0),
                                 mask=mask_c)
                    # rows of padded / masked steps are 0 (ds = 0 there), and so are padded columns
                    sdp = sd_ptr + bl * H1 + cols
                    tl.store(sdp, tl.load(sdp, mask=mask_c, other=0.0) + tl.sum(g1, axis=0), mask=mask_c)
                    tl.store(g1_ptr + (bl * T + t[:, None]) * H1 + cols[None, :], g1,
                             mask=in_t[:, None] & mask_c[None, :])
                    wp_t = _load_mat(wp_ptr, cols, offs_d, mask_c, mask_d, 1, H1)          # W_p [H1, D]
                    gwp += tl.dot(g1, wp_t, input_precision=INPUT_PRECISION)
                    wkd_t = _load_mat(wkd_ptr, cols, offs_d, mask_c, mask_d, 1, H1)        # (W_k − W_d) [H1, D]
                    dk += tl.dot(g1, wkd_t, input_precision=INPUT_PRECISION)
                dk += q[None, :] * gwp
                dqp += tl.sum(k * gwp, axis=0)
                tl.store(dk_ptr + bl * T * D + t[:, None] * D + offs_d[None, :], dk.to(dk_ptr.dtype.element_ty),
                         mask=in_t[:, None] & mask_d[None, :])
            tl.store(dqp_ptr + bl * D + offs_d, dqp, mask=mask_d)
    if TWO:
        tl.store(db2_ptr + p * H2 + offs_h2, acc_b2, mask=mask_h2)
        tl.store(dw3_ptr + p * H2 + offs_h2, acc_w3, mask=mask_h2)
    tl.store(db3_ptr + p, tl.sum(acc_b3, axis=0))


# ----------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------


def _prepare(query, keys, mask, fc1_weight, fc1_bias, weights, biases):
    """The kernels' operands: contiguous fp32-or-input-dtype tensors, the first layer split."""
    D = query.shape[1]
    w_q, w_k, w_d, w_p = fc1_weight.split(D, dim=1)                       # each [H1, D]
    qterm = torch.addmm(fc1_bias.float(), query.float(), (w_q + w_d).float().t())   # [B, H1] fp32
    wkd = (w_k - w_d).t().contiguous()                                     # [D, H1]
    wp = w_p.t().contiguous()                                              # [D, H1]
    two = len(weights) == 2
    if two:
        w2t, b2 = weights[0].t().contiguous(), biases[0].contiguous()      # [H1, H2], [H2]
    else:
        w2t, b2 = wkd, fc1_bias                                            # unused by the kernels
    w3, b3 = weights[-1].reshape(-1).contiguous(), biases[-1].reshape(-1).contiguous()
    m = mask.contiguous() if mask is not None else None
    return query.contiguous(), keys.contiguous(), m, qterm, wkd, wp, w2t, b2, w3, b3, two


def _sizes(query, keys, fc1_weight, weights):
    B, T, D = keys.shape
    H1 = fc1_weight.shape[0]
    H2 = weights[0].shape[0] if len(weights) == 2 else 1
    return B, T, D, H1, H2


def _check_precision(input_precision):
    if input_precision not in _PRECISIONS:
        raise ValueError(f"din_attention (triton): input_precision must be one of {_PRECISIONS}, "
                         f"got {input_precision!r}")


def din_attention_fwd(query, keys, mask, fc1_weight, fc1_bias, weights, biases, activation,
                      *, input_precision: str = "ieee"):
    """Scores `[B, T]` (dtype of query), 0 at masked steps. Arguments as
    `udg_fast.ops.din_attention` (validated there); `supports(...)` must hold."""
    _check_precision(input_precision)
    B, T, D, H1, H2 = _sizes(query, keys, fc1_weight, weights)
    scores = torch.empty((B, T), device=keys.device, dtype=query.dtype)
    if B == 0 or T == 0:
        return scores
    q, k, m, qterm, wkd, wp, w2t, b2, w3, b3, two = _prepare(query, keys, mask, fc1_weight, fc1_bias,
                                                             weights, biases)
    torch.library.wrap_triton(_din_att_fwd_kernel)[(B,)](
        q, k, m if m is not None else scores, qterm, wkd, wp, w2t, b2, w3, b3, scores,
        T, D, H1, H2,
        HAS_MASK=m is not None, TWO=two, SIGMOID=activation == "sigmoid", INPUT_PRECISION=input_precision,
        BLOCK_T=min(_BLOCK_T, _block(T)), BLOCK_D=_block(D), BLOCK_H2=_block(H2), BLOCK_C=_BLOCK_C,
        num_warps=4,
    )
    return scores


def din_attention_bwd(grad_scores, query, keys, mask, fc1_weight, fc1_bias, weights, biases, activation,
                      *, input_precision: str = "ieee"):
    """Gradients `(dquery [B, D], dkeys [B, T, D], dfc1_weight [H1, 4D], dfc1_bias [H1],
    dweights, dbiases)` of `din_attention_fwd`'s scores, recomputing the activations."""
    _check_precision(input_precision)
    B, T, D, H1, H2 = _sizes(query, keys, fc1_weight, weights)
    dev = keys.device
    two = len(weights) == 2
    f32 = dict(device=dev, dtype=torch.float32)
    if B == 0 or T == 0:
        dws = [torch.zeros_like(w) for w in weights]
        dbs = [torch.zeros_like(b) for b in biases]
        return (torch.zeros_like(query), torch.zeros_like(keys), torch.zeros_like(fc1_weight),
                torch.zeros_like(fc1_bias), dws, dbs)
    q, k, m, qterm, wkd, wp, w2t, b2, w3, b3, _ = _prepare(query, keys, mask, fc1_weight, fc1_bias,
                                                           weights, biases)
    ds = grad_scores.contiguous()
    samples = 1 if _INTERPRET else _SAMPLES_PER_PROGRAM
    programs = triton.cdiv(B, samples)
    dk = torch.empty((B, T, D), device=dev, dtype=keys.dtype)
    g1 = torch.empty((B, T, H1), **f32)
    sd = torch.zeros((B, H1), **f32)                     # accumulated in the kernel
    dqp = torch.empty((B, D), **f32)
    h_last = H2 if two else H1
    dw2 = torch.zeros((programs, H2, H1) if two else (1,), **f32)   # accumulated in the kernel
    db2 = torch.empty((programs, H2) if two else (1,), **f32)
    dw3 = torch.zeros((programs, h_last), **f32)         # accumulated in the kernel (one hidden layer)
    db3 = torch.empty((programs,), **f32)
    torch.library.wrap_triton(_din_att_bwd_kernel)[(programs,)](
        ds, q, k, m if m is not None else ds, qterm, wkd, wp, w2t, b2, w3,
        dk, g1, sd, dqp, dw2, db2, dw3, db3,
        B, T, D, H1, H2, samples,
        HAS_MASK=m is not None, TWO=two, SIGMOID=activation == "sigmoid", INPUT_PRECISION=input_precision,
        BLOCK_T=min(_BLOCK_T, _block(T)), BLOCK_D=_block(D), BLOCK_H2=_block(H2), BLOCK_C=_BLOCK_C,
        num_warps=4,
    )
    # The first layer's weight gradient: GEMMs over all B·T steps (g1 is 0 at masked steps).
    g1f = g1.view(B * T, H1)
    kf = k.float().view(B * T, D)
    pk = (q.float()[:, None, :] * k.float()).view(B * T, D)
    if m is not None:
        # masked steps of keys are never read by the kernels (they may hold NaN): 0 · NaN = NaN
        kf = torch.where(m.view(B * T, 1), kf, 0.0)
        pk = torch.where(m.view(B * T, 1), pk, 0.0)
    gk, gp = g1f.t() @ kf, g1f.t() @ pk                                   # [H1, D] each
    qf = q.float()
    w_q, _, w_d, _ = fc1_weight.float().split(D, dim=1)
    sdq = sd.t() @ qf                                                      # Σ_b (Σ_t g1) ⊗ q
    dw1 = torch.cat([sdq, gk, sdq - gk, gp], dim=1)
    db1 = sd.sum(0)
    dq = dqp + sd @ (w_q + w_d)
    if two:
        dws = [dw2.sum(0).to(weights[0].dtype), dw3.sum(0).view(1, H2).to(weights[1].dtype)]
        dbs = [db2.sum(0).to(biases[0].dtype), db3.sum().view(1).to(biases[1].dtype)]
    else:
        dws = [dw3.sum(0).view(1, H1).to(weights[0].dtype)]
        dbs = [db3.sum().view(1).to(biases[0].dtype)]
    return (dq.to(query.dtype), dk, dw1.to(fc1_weight.dtype), db1.to(fc1_bias.dtype), dws, dbs)
