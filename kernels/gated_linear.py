"""Triton kernels for the UDG gated linear layer (Eq. 7 of the UDG paper).

    out = act(W · (γ · σ(g) ⊙ x) + b)        act ∈ {ReLU, identity}

with `x`, `g`: `[B, K]`, `W`: `[N, K]`, `b`: `[N]` or None and γ = `gate_scale`.

Three kernels, each reading its inputs once and fusing what eager PyTorch runs as separate
passes (sigmoid, mul, addmm, relu and their backwards):

- `_gated_linear_fwd_kernel`: the scaled input γσ(g)⊙x is formed in the GEMM prologue, bias and
  ReLU in the epilogue, so `σ(g)⊙x` never reaches memory.
- `_gated_linear_bwd_dgrad_kernel`: `dxs = dpre · W` with `dpre = dy ⊙ relu'(out)` formed in the
  prologue; the epilogue writes `dx` and `dg` directly, so `dxs` never reaches memory.
- `_gated_linear_bwd_wgrad_kernel`: `dW = dpreᵀ · (γσ(g) ⊙ x)` recomputing the scaled input (it is
  not saved), with `db = Σ_rows dpre` fused in. The reduction over `B` is split into per-program
  fp32 partials summed afterwards by one torch reduction: no atomics, bit-reproducible.

Only the host launchers `gated_linear_fwd` / `gated_linear_bwd` are public; autograd and
dispatch live in `udg_fast/ops/gated_linear.py`. Every launch goes through
`torch.library.wrap_triton` so the launchers can run inside a `torch.library.triton_op` and be
traced by `torch.compile`.

Numerics: elementwise math and accumulation in fp32. The `tl.dot` operands take the dtype of the
tensor they meet in memory (W's dtype in forward/dgrad, x's in wgrad), so bf16/fp16 use the
tensor cores; for fp32 `input_precision` chooses "ieee" (exact FMA) or "tf32" (GPU tensor cores).
"""
import functools
import os

import torch
import triton
import triton.language as tl

__all__ = ["gated_linear_fwd", "gated_linear_bwd"]

# The interpreter runs one program at a time through numpy: one small config keeps tests fast and
# still walks several K / N tiles on the odd test shapes (130, 257).
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

_ACTIVATIONS = ("relu", "none")
_PRECISIONS = ("ieee", "tf32")

# Rows of the batch that one wgrad program reduces are a multiple of this; every wgrad BLOCK_M
# divides it, so a split boundary never cuts a row tile.
_WGRAD_ROW_GRAIN = 128
# More partials than this costs more workspace traffic (splits · N · K · 8 bytes) than it gains.
_WGRAD_MAX_SPLITS = 32


def _fwd_configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_K": 32}, num_warps=1, num_stages=1)]
    # BLOCK_N comes from the host and covers d_out (≤ 256): each row block is sigmoided once.
    # Small BLOCK_M keeps enough programs alive at B=4096 (BLOCK_M=64 → 64 programs on 132 SMs).
    return [
        triton.Config({"BLOCK_M": 16, "BLOCK_K": 64}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_M": 32, "BLOCK_K": 32}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 32, "BLOCK_K": 64}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    ]


def _dgrad_configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=1, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 128}, num_warps=8, num_stages=3),
    ]


def _wgrad_configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=1, num_stages=1)]
    # BLOCK_M is the same in every config so the batch reduction is cut into the same row tiles
    # whichever config the tuner picks.
    return [
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128}, num_warps=8, num_stages=2),
    ]


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _load_gated_input(x_ptr, g_ptr, off, mask, gate_scale):
    """h = γσ(g) ⊙ x (fp32) of a tile at offsets `off`: formed in registers, never stored; padded
    lanes have x = 0, so h = 0."""
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + off, mask=mask, other=0.0).to(tl.float32)
    return gate_scale * tl.sigmoid(g) * x


@triton.jit
def _load_dpre(dy_ptr, out_ptr, off, mask, APPLY_RELU: tl.constexpr):
    """dpre = dy ⊙ relu'(out) (fp32) of a tile: `out <= 0` (not `!(out > 0)`), as torch's
    threshold_backward, so a NaN output passes dy."""
    dpre = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if APPLY_RELU:
        o = tl.load(out_ptr + off, mask=mask, other=0.0)
        dpre = tl.where(o <= 0.0, 0.0, dpre)
    return dpre


@triton.autotune(configs=_fwd_configs(), key=["N", "K"])  # never B: one sweep per layer shape
@triton.jit
def _gated_linear_fwd_kernel(
    x_ptr, g_ptr, w_ptr, b_ptr, out_ptr,
    B, N, K,
    gate_scale,
    HAS_BIAS: tl.constexpr,
    APPLY_RELU: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """`out[B, N] = act(W · (γσ(g) ⊙ x) + b)` (Eq. 7); one program per `[BLOCK_M, BLOCK_N]` tile."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < B
    mask_n = offs_n < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        mask_xk = mask_m[:, None] & mask_k[None, :]
        # Prologue: the gated input is formed in registers.
        h = _load_gated_input(x_ptr, g_ptr, offs_m[:, None] * K + offs_k[None, :], mask_xk, gate_scale)
        # W tile read as Wᵀ `[BLOCK_K, BLOCK_N]`.
        w = tl.load(w_ptr + offs_n[None, :] * K + offs_k[:, None],
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(h.to(w.dtype), w, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc += bias[None, :]
    if APPLY_RELU:
        # `where(acc < 0, 0, acc)` keeps NaN, as torch.relu does (tl.maximum would drop it).
        acc = tl.where(acc < 0.0, 0.0, acc)
    tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.autotune(configs=_dgrad_configs(), key=["N", "K"])
@triton.jit
def _gated_linear_bwd_dgrad_kernel(
    dy_ptr, out_ptr, x_ptr, g_ptr, w_ptr, dx_ptr, dg_ptr,
    B, N, K,
    gate_scale,
    APPLY_RELU: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Input gradients of Eq. 7: `dx`, `dg` `[B, K]`; one program per `[BLOCK_M, BLOCK_K]` tile.

    `dxs = dpre · W` with `dpre = dy ⊙ relu'(out)`; then `dx = dxs ⊙ γσ(g)` and
    `dg = dxs ⊙ x ⊙ γσ(g)(1 − σ(g))`.
    """
    pid_m = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_m = offs_m < B
    mask_k = offs_k < K

    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mask_yn = mask_m[:, None] & mask_n[None, :]
        dpre = _load_dpre(dy_ptr, out_ptr, offs_m[:, None] * N + offs_n[None, :], mask_yn, APPLY_RELU)
        w = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :],
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        acc = tl.dot(dpre.to(w.dtype), w, acc, input_precision=INPUT_PRECISION)

    # Epilogue: recompute σ(g) (cheaper than saving it) and write both gradients from registers.
    mask_xk = mask_m[:, None] & mask_k[None, :]
    xg_off = offs_m[:, None] * K + offs_k[None, :]
    x = tl.load(x_ptr + xg_off, mask=mask_xk, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + xg_off, mask=mask_xk, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    gs = gate_scale * s
    dx = acc * gs
    dg = acc * x * gs * (1.0 - s)
    tl.store(dx_ptr + xg_off, dx.to(dx_ptr.dtype.element_ty), mask=mask_xk)
    tl.store(dg_ptr + xg_off, dg.to(dg_ptr.dtype.element_ty), mask=mask_xk)


@triton.autotune(configs=_wgrad_configs(), key=["N", "K"])
@triton.jit
def _gated_linear_bwd_wgrad_kernel(
    dy_ptr, out_ptr, x_ptr, g_ptr, dw_part_ptr, db_part_ptr,
    B, N, K,
    rows_per_split,
    gate_scale,
    APPLY_RELU: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Weight gradients of Eq. 7, one batch split per program: partials of `dW` and `db`.

    Program `(n, k, s)` reduces rows `[s·rows_per_split, (s+1)·rows_per_split)` of
    `dW = dpreᵀ · (γσ(g) ⊙ x)` into `dw_part[s]` `[N, K]` (fp32); programs with `k == 0` also
    write `db_part[s] = Σ_rows dpre` `[N]`.
    """
    pid_n = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    mask_k = offs_k < K
    row_start = pid_s * rows_per_split

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, rows_per_split, BLOCK_M):
        offs_m = row_start + m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < B
        mask_yn = mask_m[:, None] & mask_n[None, :]
        dpre = _load_dpre(dy_ptr, out_ptr, offs_m[:, None] * N + offs_n[None, :], mask_yn, APPLY_RELU)
        # Prologue: recompute the gated input instead of saving it in forward.
        h = _load_gated_input(x_ptr, g_ptr, offs_m[:, None] * K + offs_k[None, :],
                              mask_m[:, None] & mask_k[None, :], gate_scale).to(x_ptr.dtype.element_ty)
        acc = tl.dot(tl.trans(dpre.to(x_ptr.dtype.element_ty)), h, acc,
                     input_precision=INPUT_PRECISION)
        db_acc += tl.sum(dpre, axis=0)

    tl.store(dw_part_ptr + pid_s * N * K + offs_n[:, None] * K + offs_k[None, :], acc,
             mask=mask_n[:, None] & mask_k[None, :])
    if pid_k == 0:
        tl.store(db_part_ptr + pid_s * N + offs_n, db_acc, mask=mask_n)


# ----------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------


def _check_args(activation, input_precision):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if input_precision not in _PRECISIONS:
        raise ValueError(f"input_precision must be one of {_PRECISIONS}, got {input_precision!r}")


def _fwd_block_n(N):
    # Cover d_out up to 256 in one tile so σ(g)⊙x is formed once per row block; tl.dot needs ≥ 16.
    return min(max(triton.next_power_of_2(N), 16), 256)


@functools.lru_cache(maxsize=None)
def _sm_count(device_type, index):
    if device_type == "cuda":
        return torch.cuda.get_device_properties(index).multi_processor_count
    return 4  # interpreter / CPU: the value only sets how many partials are formed


def _wgrad_split(B, N, K, device):
    """Rows per wgrad program and the number of batch splits: a function of `B, N, K` and the
    device only (not of the tuned config), so the partial sums are always cut the same way."""
    tiles = triton.cdiv(N, 64) * triton.cdiv(K, 64)
    target_programs = 2 * _sm_count(device.type, device.index)
    splits = min(triton.cdiv(B, _WGRAD_ROW_GRAIN), triton.cdiv(target_programs, tiles),
                 _WGRAD_MAX_SPLITS)
    splits = max(splits, 1)
    rows = triton.cdiv(triton.cdiv(B, splits), _WGRAD_ROW_GRAIN) * _WGRAD_ROW_GRAIN
    return rows, triton.cdiv(B, rows)


def _degenerate_fwd(x, g, w, b, activation, gate_scale):
    # A zero-sized dim (B, N or K = 0): nothing for a kernel to do; plain torch on empty tensors.
    h = gate_scale * torch.sigmoid(g.float()) * x.float()
    y = h @ w.float().t()
    if b is not None:
        y = y + b.float()
    if activation == "relu":
        y = torch.relu(y)
    return y.to(x.dtype)


def _degenerate_bwd(dy, x, g, w, out, activation, gate_scale):
    dpre = dy.float()
    if activation == "relu":
        dpre = torch.where(out <= 0, torch.zeros_like(dpre), dpre)
    s = torch.sigmoid(g.float())
    dxs = dpre @ w.float()
    dx = dxs * gate_scale * s
    dg = dxs * x.float() * gate_scale * s * (1 - s)
    dw = dpre.t() @ (gate_scale * s * x.float())
    db = dpre.sum(0)
    return dx.to(x.dtype), dg.to(x.dtype), dw.to(w.dtype), db.to(w.dtype)


def gated_linear_fwd(x, g, w, b, activation: str, gate_scale: float,
                     input_precision: str) -> torch.Tensor:
    """Forward of Eq. 7: `out = act(W · (γσ(g) ⊙ x) + b)`.

    Args:
        x, g: `[B, K]` contiguous, float32 / bfloat16 / float16.
        w: `[N, K]` contiguous. b: `[N]` or None.
        activation: "relu" or "none".
        gate_scale: γ.
        input_precision: "ieee" or "tf32" for fp32 `tl.dot` (ignored for 16-bit inputs).

    Returns:
        out: `[B, N]`, dtype of `x`.

    Example:
        >>> out = gated_linear_fwd(x, g, w, b, "relu", 2.0, "ieee")
    """
    _check_args(activation, input_precision)
    B, K = x.shape
    N = w.shape[0]
    if B == 0 or N == 0 or K == 0:
        return _degenerate_fwd(x, g, w, b, activation, gate_scale)
    out = torch.empty((B, N), device=x.device, dtype=x.dtype)
    block_n = _fwd_block_n(N)
    grid = lambda meta: (triton.cdiv(B, meta["BLOCK_M"]), triton.cdiv(N, block_n))  # noqa: E731
    torch.library.wrap_triton(_gated_linear_fwd_kernel)[grid](
        x, g, w, b if b is not None else x, out,  # any pointer stands in for an absent bias
        B, N, K,
        float(gate_scale),
        HAS_BIAS=b is not None,
        APPLY_RELU=activation == "relu",
        INPUT_PRECISION=input_precision,
        BLOCK_N=block_n,
    )
    return out


def gated_linear_bwd(dy, x, g, w, out, activation: str, gate_scale: float,
                     input_precision: str):
    """Backward of Eq. 7 from the saved `x`, `g`, `W` and `out` (the ReLU mask is `out > 0`).

    Args:
        dy, out: `[B, N]`. x, g: `[B, K]`. w: `[N, K]`. All contiguous.
        activation, gate_scale, input_precision: as in `gated_linear_fwd`.

    Returns:
        `(dx, dg, dw, db)`: `dx`, `dg` `[B, K]` in x's dtype; `dw` `[N, K]` and `db` `[N]` in w's
        dtype. `db = Σ_rows dpre` is always returned; the caller drops it when there is no bias.

    Example:
        >>> dx, dg, dw, db = gated_linear_bwd(dy, x, g, w, out, "relu", 2.0, "ieee")
    """
    _check_args(activation, input_precision)
    B, K = x.shape
    N = w.shape[0]
    if B == 0 or N == 0 or K == 0:
        return _degenerate_bwd(dy, x, g, w, out, activation, gate_scale)
    apply_relu = activation == "relu"
    gate_scale = float(gate_scale)

    dx = torch.empty_like(x)
    dg = torch.empty_like(x)
    grid_d = lambda meta: (triton.cdiv(B, meta["BLOCK_M"]), triton.cdiv(K, meta["BLOCK_K"]))  # noqa: E731
    torch.library.wrap_triton(_gated_linear_bwd_dgrad_kernel)[grid_d](
        dy, out, x, g, w, dx, dg,
        B, N, K,
        gate_scale,
        APPLY_RELU=apply_relu,
        INPUT_PRECISION=input_precision,
    )

    rows, splits = _wgrad_split(B, N, K, x.device)
    # fp32 partials, fully overwritten by the kernel (every valid element has one writer).
    dw_part = torch.empty((splits, N, K), device=x.device, dtype=torch.float32)
    db_part = torch.empty((splits, N), device=x.device, dtype=torch.float32)
    grid_w = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(K, meta["BLOCK_K"]), splits)  # noqa: E731
    torch.library.wrap_triton(_gated_linear_bwd_wgrad_kernel)[grid_w](
        dy, out, x, g, dw_part, db_part,
        B, N, K,
        rows,
        gate_scale,
        APPLY_RELU=apply_relu,
        INPUT_PRECISION=input_precision,
    )
    # One deterministic reduction over the splits (no atomics: bit-reproducible run to run).
    if splits == 1:
        dw, db = dw_part[0], db_part[0]
    else:
        dw, db = dw_part.sum(0), db_part.sum(0)
    return dx, dg, dw.to(w.dtype), db.to(w.dtype)
