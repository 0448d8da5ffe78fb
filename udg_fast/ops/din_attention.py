"""udg_fast.ops.din_attention: DIN's local activation unit, the attention of DIN and DIEN, fused.

For a sample with target embedding q `[D]` and history keys k_t `[D]`:

    s_t = MLP([q, k_t, q − k_t, q ⊙ k_t])   on the valid steps (mask), 0 elsewhere

fc1 (`[h1, 4D]`) then the `weights` layers, `activation` after every hidden layer, the last layer
one score (Zhou et al. 2018; the DIEN paper uses the same unit for its AUGRU's attention).

Every fast form uses two exact rewrites (tests compare them with the literal concat):

    fc1 · [q, k, q − k, q ⊙ k] = (W_q + W_d) q + [W_k − W_d, W_p] · [k, q ⊙ k]

so the q term is one `[B, h1]` GEMM per sample instead of per step, and the per-step GEMM has
2D inputs instead of 4D; and only the valid steps are scored (ml-100k histories: 59 % of the
steps are valid, the rest padding; the synthetic benchmark batches: 51 %).

Backends (udg_fast/_backend.py picks one):
    reference  naive.din_attention_reference: the literal 4D concat on every step, then masked
               (the oracle, and what the model costs without udg_fast's kernels)
    cpu        the C++ op `torch.ops.udg_fast.din_attention` (csrc/cpu/din_attention.cpp): the
               valid steps in blocks of whole samples, every layer's GEMM writing into the saved
               activations and its bias + activation applied while the rows are in cache; the
               first layer one GEMM per sample, k · M_bᵀ with M_b = (W_k − W_d) + W_p diag(q_b)
               `[h1, D]`: D inputs per step instead of 2D
    triton     kernels/din_attention.py: one program per sample, both rewrites, the mask read in
               the kernel (no nonzero()), the activations recomputed in the backward; the first
               layer's weight gradient as GEMMs over all steps. One or two hidden layers (D <= 128,
               the second <= 64 wide), sigmoid / ReLU; otherwise the literal concat below. The automatic choice on a
               GPU (`_backend.OP_GPU_PREFERENCE`); tested under TRITON_INTERPRET=1 and compiled for
               sm_90, not yet timed on a GPU
    cuda       no kernel: the reference's literal concat, on cuBLAS. On an H200 it was the faster
               eager form (1.46 vs 2.29 ms forward + backward, B = 2048, T = 50, D = 36): the
               factored form's gather of the valid steps (nonzero) waits for the GPU
Under torch.compile (any backend but reference) the eager factored form runs on every step
(packing the valid steps has a data-dependent size), masked, and inductor fuses it. torch.export
keeps the C++ op (`udg_fast.serving.export`: an exported DIN scores as fast as the eager model).

Double backward (create_graph=True) returns the reference's gradient (naive.reference_vjp).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from udg_fast import _backend
from udg_fast.ops.naive import attention_activation, din_attention_reference, reference_vjp

ACTIVATIONS = ("sigmoid", "relu")


@_backend.constant_result
def _select(device: torch.device, dtype: torch.dtype) -> str:
    return _backend.select("din_attention", device, dtype)


def _validate(query, keys, mask, fc1_weight, fc1_bias, weights, biases, activation):
    named = [("query", query), ("keys", keys), ("fc1_weight", fc1_weight), ("fc1_bias", fc1_bias)]
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"din_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"din_attention: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not isinstance(weights, (list, tuple)) or not isinstance(biases, (list, tuple)):
        raise TypeError("din_attention: weights and biases must be lists of tensors")
    if len(weights) == 0 or len(weights) != len(biases):
        raise ValueError(f"din_attention: weights and biases must be non-empty and of one length (the layers "
                         f"after fc1, the last one the score), got {len(weights)} and {len(biases)}")
    if query.dim() != 2:
        raise ValueError(f"din_attention: query must be [B, D], got shape {tuple(query.shape)}")
    B, D = query.shape
    if D < 1:  # the C++ kernel's per-sample GEMMs have no zero-width case (it crashed)
        raise ValueError(f"din_attention: query must be [B, D] with D >= 1, got shape {tuple(query.shape)}")
    if keys.dim() != 3 or keys.shape[0] != B or keys.shape[2] != D:
        raise ValueError(f"din_attention: keys must be [B={B}, T, D={D}] (query is [B, D]), got {tuple(keys.shape)}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"din_attention: mask must be a bool tensor [B, T] or None, got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != keys.shape[:2]:
            raise ValueError(f"din_attention: mask must be [B, T] = {tuple(keys.shape[:2])}, got {tuple(mask.shape)}")
    if fc1_weight.dim() != 2 or fc1_weight.shape[1] != 4 * D:
        raise ValueError(f"din_attention: fc1_weight must be [h1, 4·D = {4 * D}], got {tuple(fc1_weight.shape)}")
    if fc1_bias.shape != fc1_weight.shape[:1]:
        raise ValueError(f"din_attention: fc1_bias must be [{fc1_weight.shape[0]}], got {tuple(fc1_bias.shape)}")
    width = fc1_weight.shape[0]
    if width < 1:
        raise ValueError(f"din_attention: fc1_weight must have at least one row (h1 >= 1), got "
                         f"{tuple(fc1_weight.shape)}")
    for i, (w, b) in enumerate(zip(weights, biases)):
        if not isinstance(w, torch.Tensor) or not isinstance(b, torch.Tensor):
            raise TypeError(f"din_attention: weights[{i}] and biases[{i}] must be tensors")
        if w.dim() != 2 or w.shape[1] != width:
            raise ValueError(f"din_attention: weights[{i}] must be [out, {width}] (the width of the layer "
                             f"before), got {tuple(w.shape)}")
        if b.shape != w.shape[:1]:
            raise ValueError(f"din_attention: biases[{i}] must be [{w.shape[0]}], got {tuple(b.shape)}")
        if w.shape[0] < 1:
            raise ValueError(f"din_attention: weights[{i}] must have at least one row, got {tuple(w.shape)}")
        width = w.shape[0]
    if width != 1:
        raise ValueError(f"din_attention: the last weight must be [1, h] (one score), got {tuple(weights[-1].shape)}")
    tensors = named[1:] + [(f"weights[{i}]", w) for i, w in enumerate(weights)] + \
        [(f"biases[{i}]", b) for i, b in enumerate(biases)]
    if not query.dtype.is_floating_point:
        raise TypeError(f"din_attention: query must be a floating-point tensor, got {query.dtype}")
    for name, t in tensors:
        if t.dtype != query.dtype:
            raise TypeError(f"din_attention: {name} has dtype {t.dtype}, expected the dtype of query ({query.dtype})")
        if t.device != query.device:
            raise ValueError(f"din_attention: {name} is on {t.device}, expected the device of query ({query.device})")
    if mask is not None and mask.device != query.device:
        raise ValueError(f"din_attention: mask is on {mask.device}, expected the device of query ({query.device})")


@_backend.autocast_entry("din_attention", "query", "keys", "mask", "fc1_weight", "fc1_bias", "weights", "biases")
def din_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    mask: Optional[torch.Tensor],
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    activation: str = "sigmoid",
) -> torch.Tensor:
    """DIN's attention scores `MLP([q, k_t, q − k_t, q ⊙ k_t])` on the valid steps, 0 elsewhere.

    Args:
        query: `[B, D]` target embedding q (DIN: the candidate item's).
        keys: `[B, T, D]` history embeddings k_t.
        mask: `[B, T]` bool, True at valid steps (any pattern), or None (all valid).
        fc1_weight: `[h1, 4D]`, fc1_bias: `[h1]`: the first layer, on [q, k, q − k, q ⊙ k].
        weights, biases: the layers after it, `[h_{l+1}, h_l]` and `[h_{l+1}]`; the last `[1, h_L]`.
        activation: "sigmoid" (DIN's code) or "relu", after every hidden layer.
    Returns:
        raw scores `[B, T]` (not normalised), exactly 0 where mask is False.

    Example:
        >>> B, T, D = 4, 6, 8
        >>> q, k = torch.randn(B, D), torch.randn(B, T, D)
        >>> mask = torch.arange(T) < torch.tensor([6, 2, 0, 3])[:, None]
        >>> w1, b1 = torch.randn(80, 4 * D), torch.randn(80)
        >>> ws, bs = [torch.randn(40, 80), torch.randn(1, 40)], [torch.randn(40), torch.randn(1)]
        >>> din_attention(q, k, mask, w1, b1, ws, bs).shape
        torch.Size([4, 6])
    """
    _validate(query, keys, mask, fc1_weight, fc1_bias, weights, biases, activation)
    if _backend.functorch_transformed((query, keys, fc1_weight, fc1_bias, weights, biases)):  # torch.func
        return din_attention_reference(query, keys, mask, fc1_weight, fc1_bias, weights, biases, activation)
    weights, biases = list(weights), list(biases)
    backend = _select(query.device, query.dtype)
    if backend == "reference":
        return din_attention_reference(query, keys, mask, fc1_weight, fc1_bias, weights, biases, activation)
    if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
        return _din_attention_eager(query, keys, mask, fc1_weight, fc1_bias, weights, biases, activation)
    if backend == "triton" and _triton_supports(query, keys, fc1_weight, weights, activation):
        if not torch.compiler.is_compiling():  # Dynamo cannot trace triton_op's registration
            _register_triton_ops()
        return torch.ops.udg_fast.din_attention_triton(
            query, keys, mask, fc1_weight, fc1_bias, weights, biases, activation, _triton_precision())
    if backend != "cpu":
        # No kernel for this call (the CUDA backend has none; the Triton kernels cover one or two
        # hidden layers, D <= 128, the second <= 64 wide, sigmoid / ReLU). There the literal
        # concat is the faster eager form: 1.46 ms forward + backward against 2.29 ms for the
        # factored one at B = 2048, T = 50, D = 36 on an H200
        # (benchmarks/results/gpu-h200-2026-11-28; the factored form's nonzero() waits for the GPU).
        return din_attention_reference(query, keys, mask, fc1_weight, fc1_bias, weights, biases, activation)
    B, T, _ = keys.shape
    if mask is None:
        idx = torch.arange(B * T, device=keys.device)
    else:
        idx = mask.reshape(-1).nonzero().squeeze(1)
    scores, _ = torch.ops.udg_fast.din_attention(
        query.contiguous(), keys.contiguous(), idx, fc1_weight.contiguous(), fc1_bias.contiguous(),
        [w.contiguous() for w in weights], [b.contiguous() for b in biases], activation)
    return scores


def _din_attention_eager(query, keys, mask, fc1_weight, fc1_bias, weights, biases, activation):
    """The factored form in eager PyTorch (torch.compile, and DIN's PReLU variant, which the
    kernel does not cover). `activation`: as the reference's (a name, or `act(x, i)`).

    Outside compile and with a mask, the valid steps' [k, q ⊙ k] rows are gathered into one
    `[N, 2D]` block and the MLP runs on N rows; otherwise per sample, `[B, T, D] × [B, D, h1]`
    (the q ⊙ k term folded into a per-sample matrix) on every step, then masked."""
    act = attention_activation(activation)
    D = query.shape[1]
    w_q, w_k, w_d, w_p = fc1_weight.split(D, dim=1)                          # each [h1, D]
    q_term = F.linear(query, w_q + w_d, fc1_bias)                            # [B, h1], once per sample

    def rest(a):
        a = act(a, 0)
        for i, (w, b) in enumerate(zip(weights, biases)):
            a = F.linear(a, w, b)
            if i < len(weights) - 1:
                a = act(a, i + 1)
        return a.squeeze(-1)

    B, T, _ = keys.shape
    if mask is not None and not torch.compiler.is_compiling():
        flat = mask.reshape(-1).nonzero().squeeze(1)                         # valid steps in [B·T]
        rows = torch.div(flat, T, rounding_mode="floor")                     # their samples
        kv = keys.reshape(B * T, D).index_select(0, flat)                    # [N, D]
        qv = query.index_select(0, rows)
        a = torch.addmm(q_term.index_select(0, rows), torch.cat([kv, qv * kv], 1),
                        torch.cat([w_k - w_d, w_p], 1).t())
        s = rest(a)
        return s.new_zeros(B * T).index_copy(0, flat, s).view(B, T)
    m = (w_k - w_d).t().unsqueeze(0) + query.unsqueeze(2) * w_p.t().unsqueeze(0)   # [B, D, h1]
    s = rest(torch.baddbmm(q_term.unsqueeze(1), keys, m))                    # [B, T]
    return s if mask is None else torch.where(mask, s, torch.zeros_like(s))


# ---- the C++ op: fake implementations and autograd --------------------------------------------

def _fake_forward(query, keys, idx, fc1_weight, fc1_bias, weights, biases, activation):
    sum_h = fc1_weight.shape[0] + sum(w.shape[0] for w in weights[:-1])
    return query.new_empty(keys.shape[:2]), query.new_empty(idx.shape[0] * sum_h)


def _fake_backward(grad_scores, query, keys, idx, acts, fc1_weight, weights, activation):
    return (torch.empty_like(query), torch.empty_like(keys), torch.empty_like(fc1_weight),
            fc1_weight.new_empty(fc1_weight.shape[:1]), [torch.empty_like(w) for w in weights],
            [w.new_empty(w.shape[:1]) for w in weights])


def _setup_context(ctx, inputs, output):
    query, keys, idx, fc1_weight, fc1_bias, weights, biases, activation = inputs
    ctx.activation, ctx.n_layers = activation, len(weights)
    ctx.shape = keys.shape
    # acts is for the backward only. Without set_materialize_grads(False) autograd would hand the
    # backward a zero-filled [N · Σh] gradient for it (6.3M floats per DIN step at B = 2048,
    # T = 50: 1.2 ms, profiled)
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    # the biases are saved for double backward only (its reference recomputation needs them)
    ctx.save_for_backward(query, keys, idx, output[1], fc1_weight, fc1_bias, *weights, *biases)


def _flat_reference(query, keys, mask, fc1_weight, fc1_bias, activation, n, *params):
    return din_attention_reference(query, keys, mask, fc1_weight, fc1_bias, list(params[:n]), list(params[n:]),
                                   activation)


def _backward(ctx, grad_scores, _grad_acts):
    query, keys, idx, acts, fc1_weight, fc1_bias, *params = ctx.saved_tensors
    n = ctx.n_layers
    if grad_scores is None:  # (grads are not materialised, see _setup_context)
        grad_scores = keys.new_zeros(ctx.shape[:2])
    weights = params[:n]
    if torch.is_grad_enabled():  # only under create_graph=True: keep the gradient differentiable
        B, T = ctx.shape[:2]
        mask = torch.zeros(B * T, dtype=torch.bool, device=keys.device).index_fill_(0, idx, True).view(B, T)
        args = (query, keys, mask, fc1_weight, fc1_bias, ctx.activation, n, *params)
        g = reference_vjp(_flat_reference, args, (grad_scores,), (0, 1, 3, 4, *range(7, 7 + 2 * n)))
        return g[0], g[1], None, g[3], g[4], list(g[7:7 + n]), list(g[7 + n:]), None
    dq, dk, dw1, db1, dws, dbs = torch.ops.udg_fast.din_attention_backward(
        grad_scores.contiguous(), query, keys, idx, acts, fc1_weight, list(weights), ctx.activation)
    return dq, dk, None, dw1, db1, dws, dbs, None


_backend.register_cpp_op("din_attention", _fake_forward, _fake_backward, _backward, _setup_context)


# ---- the Triton op (kernels/din_attention.py) ----------------------------------------------------

def _triton_supports(query, keys, fc1_weight, weights, activation) -> bool:
    from udg_fast.kernels.din_attention import supports

    return supports(query, keys, fc1_weight, weights, activation)


def _triton_precision() -> str:
    from udg_fast.ops.gated_linear import _triton_precision as precision  # one policy for every op

    return precision()


@functools.cache
def _register_triton_ops() -> None:

    @torch.library.triton_op("udg_fast::din_attention_triton", mutates_args=())
    def _din_attention_triton(
        query: torch.Tensor, keys: torch.Tensor, mask: Optional[torch.Tensor], fc1_weight: torch.Tensor,
        fc1_bias: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor], activation: str,
        input_precision: str,
    ) -> torch.Tensor:
        from udg_fast.kernels.din_attention import din_attention_fwd

        return din_attention_fwd(query, keys, mask, fc1_weight, fc1_bias, weights, biases, activation,
                                 input_precision=input_precision)

    @torch.library.triton_op("udg_fast::din_attention_triton_backward", mutates_args=())
    def _din_attention_triton_backward(
        grad_scores: torch.Tensor, query: torch.Tensor, keys: torch.Tensor, mask: Optional[torch.Tensor],
        fc1_weight: torch.Tensor, fc1_bias: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
        activation: str, input_precision: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        from udg_fast.kernels.din_attention import din_attention_bwd

        return din_attention_bwd(grad_scores, query, keys, mask, fc1_weight, fc1_bias, weights, biases,
                                 activation, input_precision=input_precision)

    torch.library.register_autograd("udg_fast::din_attention_triton", _triton_backward,
                                    setup_context=_triton_setup_context)


def _triton_setup_context(ctx, inputs, output):
    query, keys, mask, fc1_weight, fc1_bias, weights, biases, activation, precision = inputs
    ctx.activation, ctx.precision, ctx.n_layers, ctx.has_mask = activation, precision, len(weights), mask is not None
    ctx.save_for_backward(query, keys, *([mask] if mask is not None else []), fc1_weight, fc1_bias, *weights, *biases)


def _triton_backward(ctx, grad_scores):
    query, keys, *rest = ctx.saved_tensors
    mask = rest.pop(0) if ctx.has_mask else None
    fc1_weight, fc1_bias, *params = rest
    n = ctx.n_layers
    weights, biases = list(params[:n]), list(params[n:])
    if torch.is_grad_enabled():  # only under create_graph=True: keep the gradient differentiable
        args = (query, keys, mask, fc1_weight, fc1_bias, ctx.activation, n, *params)
        g = reference_vjp(_flat_reference, args, (grad_scores,), (0, 1, 3, 4, *range(7, 7 + 2 * n)))
        return g[0], g[1], None, g[3], g[4], list(g[7:7 + n]), list(g[7 + n:]), None, None
    dq, dk, dw1, db1, dws, dbs = torch.ops.udg_fast.din_attention_triton_backward(
        grad_scores.contiguous(), query, keys, mask, fc1_weight, fc1_bias, weights, biases, ctx.activation,
        ctx.precision)
    return dq, dk, None, dw1, db1, list(dws), list(dbs), None, None


if _backend.backend_status("triton").usable:
    _register_triton_ops()
