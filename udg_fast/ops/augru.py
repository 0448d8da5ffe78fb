"""udg_fast.ops.augru: DIEN's GRU with attentional update gate (AUGRU), fused; a plain GRU without
attention scores. Gate order (r, z, n), as in `torch.nn.GRU`; the update is the DIEN paper's:

    r_t  = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t  = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t  = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
    z'_t = a_t · z_t                                   (a_t: attention score; a ≡ 1 without att)
    h_t  = (1 − z'_t) ⊙ h_{t-1} + z'_t ⊙ n_t

`nn.GRU` computes `(1 − z) ⊙ n + z ⊙ h`: the same function once the z rows of its weights and
biases are negated (σ(−v) = 1 − σ(v)); `udg_fast.AUGRU.from_gru` does that conversion. The DIEN
TensorFlow code uses yet another form (at a = 0 it outputs n_t, not h_{t-1}); we follow the paper.

Backends (chosen in udg_fast/_backend.py):
    reference  udg_fast/ops/naive.py::augru_reference (a plain loop over t, autograd by PyTorch)
    cpu, cuda  the C++/CUDA op `torch.ops.udg_fast.augru` (csrc/cpu/augru.cpp, csrc/cuda/augru.cu),
               schema in csrc/ops.cpp; fake impl and autograd are registered below
    triton     `torch.ops.udg_fast.augru_triton`, a `torch.library.triton_op` over the launchers
               `augru_fwd` / `augru_bwd` of kernels/augru.py (installed as udg_fast.kernels.augru)

Backward saves the inputs and the outputs — the outputs are the h sequence (h_{t-1} =
outputs[:, t-1] inside a row's length, h0 at t = 0) — and recomputes the gates in reverse time:
no `[B, T, 3H]` gate storage. Double backward (create_graph=True) returns the reference's
gradient, recomputed under autograd (naive.reference_vjp): correct, at eager speed.

The cpu kernel sorts rows by length and runs blocks of rows through all their steps on one thread
each (no per-step synchronisation), with hand-vectorised steps that keep both weight matrices in
L1/L2; it is compiled for AVX-512, AVX2 and a baseline and picks the best the CPU has
(`UDG_FAST_CPU_ISA=avx2|baseline` caps it). Results are bitwise reproducible, whatever the number
of threads. See csrc/cpu/augru.cpp.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from udg_fast import _backend
from udg_fast.ops.naive import augru_reference, reference_vjp


@_backend.constant_result
def _select(device: torch.device, dtype: torch.dtype) -> str:
    # Decided once per compiled graph: dynamo treats the result as a constant.
    return _backend.select("augru", device, dtype)


def _validate(x, weight_ih, weight_hh, bias_ih, bias_hh, att, lengths, h0):
    for name, t in (("x", x), ("weight_ih", weight_ih), ("weight_hh", weight_hh)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"augru: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("bias_ih", bias_ih), ("bias_hh", bias_hh), ("att", att), ("lengths", lengths), ("h0", h0)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"augru: {name} must be a torch.Tensor or None, got {type(t).__name__}")
    if x.dim() != 3:
        raise ValueError(f"augru: x must be [B, T, I] (batch first), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"augru: x must be a floating-point tensor, got {x.dtype}")
    B, T, I = x.shape
    if weight_hh.dim() != 2 or weight_hh.shape[1] < 1 or weight_hh.shape[0] != 3 * weight_hh.shape[1]:
        raise ValueError(f"augru: weight_hh must be [3H, H] (r, z, n rows; H = hidden size >= 1), "
                         f"got {tuple(weight_hh.shape)}")
    H = weight_hh.shape[1]
    if weight_ih.dim() != 2 or tuple(weight_ih.shape) != (3 * H, I):
        raise ValueError(f"augru: weight_ih must be [3H, I] = [{3 * H}, {I}] (H from weight_hh, I = x.shape[-1]), "
                         f"got {tuple(weight_ih.shape)}")
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None and tuple(b.shape) != (3 * H,):
            raise ValueError(f"augru: {name} must be [3H] = [{3 * H}], got {tuple(b.shape)}")
    if att is not None and tuple(att.shape) != (B, T):
        raise ValueError(f"augru: att must be [B, T] = [{B}, {T}] (one score per step), got {tuple(att.shape)}")
    if h0 is not None and tuple(h0.shape) != (B, H):
        raise ValueError(f"augru: h0 must be [B, H] = [{B}, {H}], got {tuple(h0.shape)}")
    named = [("weight_ih", weight_ih), ("weight_hh", weight_hh), ("bias_ih", bias_ih), ("bias_hh", bias_hh),
             ("att", att), ("h0", h0)]
    for name, t in named:
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"augru: {name} has dtype {t.dtype}, expected the dtype of x ({x.dtype})")
        if t.device != x.device:
            raise ValueError(f"augru: {name} is on {t.device}, expected the device of x ({x.device})")
    if lengths is not None:
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise TypeError(f"augru: lengths must be an integer tensor, got {lengths.dtype}")
        if tuple(lengths.shape) != (B,):
            raise ValueError(f"augru: lengths must be [B] = [{B}], got {tuple(lengths.shape)}")
        if lengths.device != x.device and lengths.device.type != "cpu":
            raise ValueError(f"augru: lengths is on {lengths.device}, expected the device of x ({x.device}) or the CPU")
        # Value check: free on CPU; on CUDA it costs one device sync per call (two scalars read
        # back), kept because an out-of-range length would otherwise read outside x silently.
        # Skipped while torch.compile traces (data-dependent); the C++ CPU kernel checks again.
        if B > 0 and not torch.compiler.is_compiling():
            lo, hi = torch.aminmax(lengths)
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi > T:
                bad = lo if lo < 0 else hi
                raise ValueError(f"augru: lengths must be in [0, T] = [0, {T}], got a length of {bad}")


@_backend.autocast_entry("augru", "x", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "att", "lengths", "h0")
def augru(
    x: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: Optional[torch.Tensor] = None,
    bias_hh: Optional[torch.Tensor] = None,
    att: Optional[torch.Tensor] = None,
    lengths: Optional[torch.Tensor] = None,
    h0: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AUGRU (DIEN, the paper's formula) over a padded batch; a plain GRU when `att` is None.

    `h_t = (1 − a_t z_t) ⊙ h_{t-1} + a_t z_t ⊙ n_t` with r, z, n as in `nn.GRU` (see the module
    docstring). Note `nn.GRU`'s update is `(1 − z) ⊙ n + z ⊙ h`: negate the z rows of its weights
    and biases (`udg_fast.AUGRU.from_gru`) to get the same function. DIEN's TensorFlow code
    differs too (at a = 0 it outputs n_t); this follows the paper.

    Args:
        x: `[B, T, I]`, batch first.
        weight_ih: `[3H, I]` (rows r, z, n), as `nn.GRU.weight_ih_l0`.
        weight_hh: `[3H, H]`, as `nn.GRU.weight_hh_l0`.
        bias_ih, bias_hh: `[3H]` or None.
        att: `[B, T]` attention score of each step, or None (a ≡ 1: a plain GRU).
        lengths: `[B]` integer tensor, values in [0, T], on the CPU or x's device; None = all T.
            Steps t >= lengths[b] leave h unchanged and output zeros; a length of 0 returns h0.
        h0: `[B, H]` initial state, or None (zeros).
    Returns:
        (outputs `[B, T, H]`, h_n `[B, H]`): h_n is the state after step lengths[b] − 1.
        Differentiable in x, att, h0 and all weights and biases.

    NaN/Inf: a NaN in a row's x (at a step inside its length), att or h0 makes that row's later
    states NaN, and every weight gradient NaN, as in eager PyTorch. The fast backends never read
    x or att at steps t >= lengths[b].

    Example:
        >>> x, att = torch.randn(4, 10, 36), torch.rand(4, 10)
        >>> w_ih, w_hh = torch.randn(108, 36) * 0.1, torch.randn(108, 36) * 0.1
        >>> out, h_n = augru(x, w_ih, w_hh, att=att, lengths=torch.tensor([10, 3, 0, 7]))
        >>> out.shape, h_n.shape
        (torch.Size([4, 10, 36]), torch.Size([4, 36]))
    """
    _validate(x, weight_ih, weight_hh, bias_ih, bias_hh, att, lengths, h0)
    if _backend.functorch_transformed((x, weight_ih, weight_hh, bias_ih, bias_hh, att, h0)):  # torch.func
        return augru_reference(x, weight_ih, weight_hh, bias_ih, bias_hh, att, lengths, h0)
    backend = _select(x.device, x.dtype)
    if backend == "reference":
        return augru_reference(x, weight_ih, weight_hh, bias_ih, bias_hh, att, lengths, h0)
    B, H = x.shape[0], weight_hh.shape[1]
    if h0 is None:
        h0 = x.new_zeros(B, H)
    if lengths is not None:
        lengths = lengths.to(device=x.device, dtype=torch.int64)
    args = [t.contiguous() if t is not None else None
            for t in (x, weight_ih, weight_hh, bias_ih, bias_hh, att, lengths, h0)]
    if backend == "triton":
        if not torch.compiler.is_compiling():  # Dynamo cannot trace triton_op's registration
            _register_triton_ops()  # (done at import where Triton is usable; see below)
        return torch.ops.udg_fast.augru_triton(*args)
    # "cpu" or "cuda": one C++ op, the dispatcher picks the kernel by device
    return torch.ops.udg_fast.augru(*args)


# ---- shared autograd glue (C++ op and Triton op have the same conventions) ----------------------

def _setup_context(ctx, inputs, output):
    x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0 = inputs
    outputs, _ = output
    ctx.has = (b_ih is not None, b_hh is not None, att is not None, lengths is not None)
    saved = [x, w_ih, w_hh, h0, outputs] + [t for t in (b_ih, b_hh, att, lengths) if t is not None]
    ctx.save_for_backward(*saved)


def _unpack(ctx):
    x, w_ih, w_hh, h0, outputs, *rest = ctx.saved_tensors
    opt = []
    for present in ctx.has:
        opt.append(rest.pop(0) if present else None)
    b_ih, b_hh, att, lengths = opt
    return x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0, outputs


def _grads(ctx, backward_op, grad_outputs, grad_h_n):
    x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0, outputs = _unpack(ctx)
    if torch.is_grad_enabled():
        # Only under create_graph=True (double backward): the fused backward is not
        # differentiable, so the reference's gradient is returned instead (naive.reference_vjp).
        g = reference_vjp(augru_reference, (x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0),
                          (grad_outputs, grad_h_n), (0, 1, 2, 3, 4, 5, 7))
        return tuple(g)
    if grad_outputs is None:
        grad_outputs = torch.zeros_like(outputs)
    if grad_h_n is None:
        grad_h_n = torch.zeros_like(h0)
    dx, dw_ih, dw_hh, db_ih, db_hh, datt, dh0 = backward_op(
        grad_outputs.contiguous(), grad_h_n.contiguous(), x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0, outputs)
    return (dx, dw_ih, dw_hh, db_ih if b_ih is not None else None, db_hh if b_hh is not None else None,
            datt if att is not None else None, None, dh0)


def _fake_forward(x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0):
    B, T, H = x.shape[0], x.shape[1], w_hh.shape[1]
    return x.new_empty((B, T, H)), x.new_empty((B, H))


def _fake_backward(g_out, g_hn, x, w_ih, w_hh, b_ih, b_hh, att, lengths, h0, outputs):
    B, T, H = x.shape[0], x.shape[1], w_hh.shape[1]
    return (torch.empty_like(x), torch.empty_like(w_ih), torch.empty_like(w_hh), x.new_empty((3 * H,)),
            x.new_empty((3 * H,)), x.new_empty((B, T)), torch.empty_like(h0))


# ---- C++ / CUDA op: fake implementations and autograd -----------------------------------------

def _cpp_backward(ctx, grad_outputs, grad_h_n):
    return _grads(ctx, torch.ops.udg_fast.augru_backward, grad_outputs, grad_h_n)


_backend.register_cpp_op("augru", _fake_forward, _fake_backward, _cpp_backward, _setup_context)


# ---- Triton op ------------------------------------------------------------------------------
# `torch.library.triton_op` pulls in torch._inductor (~3 s at import on the development machine),
# so the Triton ops are registered only where Triton can run: at import when the backend is usable
# (a CUDA GPU, or TRITON_INTERPRET=1), else on first use — as in gated_linear.py.

@functools.cache  # registers once
def _register_triton_ops() -> None:

    @torch.library.triton_op("udg_fast::augru_triton", mutates_args=())
    def _augru_triton(
        x: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor, bias_ih: Optional[torch.Tensor],
        bias_hh: Optional[torch.Tensor], att: Optional[torch.Tensor], lengths: Optional[torch.Tensor],
        h0: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from udg_fast.kernels.augru import augru_fwd

        return augru_fwd(x, weight_ih, weight_hh, bias_ih, bias_hh, att, lengths, h0)

    @torch.library.triton_op("udg_fast::augru_triton_backward", mutates_args=())
    def _augru_triton_backward(
        grad_outputs: torch.Tensor, grad_h_n: torch.Tensor, x: torch.Tensor, weight_ih: torch.Tensor,
        weight_hh: torch.Tensor, bias_ih: Optional[torch.Tensor], bias_hh: Optional[torch.Tensor],
        att: Optional[torch.Tensor], lengths: Optional[torch.Tensor], h0: torch.Tensor, outputs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        from udg_fast.kernels.augru import augru_bwd

        return augru_bwd(grad_outputs, grad_h_n, x, weight_ih, weight_hh, bias_ih, bias_hh, att, lengths, h0,
                         outputs)

    torch.library.register_autograd("udg_fast::augru_triton", _triton_backward, setup_context=_setup_context)


def _triton_backward(ctx, grad_outputs, grad_h_n):
    return _grads(ctx, torch.ops.udg_fast.augru_triton_backward, grad_outputs, grad_h_n)


if _backend.backend_status("triton").usable:
    _register_triton_ops()
