"""udg_fast.ops.gating_networks: the UDG gating networks GN^(l) of all L layers of the prediction
MLP (Eq. 6), fused.

Every GN^(l) reads the same gate input u (Concat(e_item, e_behv, E^UDG[user])) and is three
fully connected layers (the authors' `DNN_UDG`):

    g_l = W3_l ReLU(ReLU(u W1_lᵀ + b1_l) W2_l + b2_l) + b3_l       → gate logits [B, K_l]

(the sigmoid of Eq. 6 is applied inside gated_linear, Eq. 7). The first layers are stacked into one
`[L·H, Du]` weight, the second layers are one `[L, H, H]` parameter (x @ W layout).

Backends (udg_fast/_backend.py picks one):
    reference  naive.gating_networks_reference: L separate three-layer networks (the oracle)
    cpu        the C++ op `torch.ops.udg_fast.gating_networks` (csrc/cpu/gating_networks.cpp):
               rows in blocks, every layer a block GEMM into the saved activations, bias + ReLU in
               cache; the backward without the eager form's [B, L·H] gradient temporaries
    triton,    no GPU kernel: the eager form below (`_gating_networks_eager`: one GEMM for the L
    cuda       first layers, then per network), cuBLAS; not measured on a GPU yet
Under torch.compile the eager form runs (inductor fuses it; torch.export keeps the C++ op), and
under CPU autocast too (its GEMMs then run in the autocast dtype, as nn.Linear's would). Double
backward (create_graph=True: the cold-start meta-gradient, Algorithm 1) returns the reference's
gradient (naive.reference_vjp).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from udg_fast import _backend
from udg_fast.ops.naive import gating_networks_reference, reference_vjp


@_backend.constant_result
def _select(device: torch.device, dtype: torch.dtype) -> str:
    return _backend.select("gating_networks", device, dtype)


def _validate(u, fc1_weight, fc1_bias, fc2_weight, fc2_bias, fc3_weights, fc3_biases):
    named = [("u", u), ("fc1_weight", fc1_weight), ("fc1_bias", fc1_bias), ("fc2_weight", fc2_weight),
             ("fc2_bias", fc2_bias)]
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"gating_networks: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not isinstance(fc3_weights, (list, tuple)) or not isinstance(fc3_biases, (list, tuple)):
        raise TypeError("gating_networks: fc3_weights and fc3_biases must be lists of tensors")
    if u.dim() != 2:
        raise ValueError(f"gating_networks: u must be [B, Du], got shape {tuple(u.shape)}")
    if fc2_weight.dim() != 3 or fc2_weight.shape[0] < 1 or fc2_weight.shape[1] != fc2_weight.shape[2]:
        raise ValueError(f"gating_networks: fc2_weight must be [L, H, H] with L >= 1, got {tuple(fc2_weight.shape)}")
    L, H = fc2_weight.shape[:2]
    Du = u.shape[1]
    if fc1_weight.shape != (L * H, Du):
        raise ValueError(f"gating_networks: fc1_weight must be [L·H = {L * H}, Du = {Du}], got {tuple(fc1_weight.shape)}")
    if fc1_bias.shape != (L * H,):
        raise ValueError(f"gating_networks: fc1_bias must be [{L * H}], got {tuple(fc1_bias.shape)}")
    if fc2_bias.shape != (L, 1, H):
        raise ValueError(f"gating_networks: fc2_bias must be [{L}, 1, {H}], got {tuple(fc2_bias.shape)}")
    if len(fc3_weights) != L or len(fc3_biases) != L:
        raise ValueError(f"gating_networks: fc3_weights and fc3_biases must hold L = {L} tensors, "
                         f"got {len(fc3_weights)} and {len(fc3_biases)}")
    tensors = named[1:]
    for i, (w, b) in enumerate(zip(fc3_weights, fc3_biases)):
        if not isinstance(w, torch.Tensor) or not isinstance(b, torch.Tensor):
            raise TypeError(f"gating_networks: fc3_weights[{i}] and fc3_biases[{i}] must be tensors")
        if w.dim() != 2 or w.shape[1] != H:
            raise ValueError(f"gating_networks: fc3_weights[{i}] must be [K, H = {H}], got {tuple(w.shape)}")
        if b.shape != w.shape[:1]:
            raise ValueError(f"gating_networks: fc3_biases[{i}] must be [{w.shape[0]}], got {tuple(b.shape)}")
        tensors += [(f"fc3_weights[{i}]", w), (f"fc3_biases[{i}]", b)]
    if not u.dtype.is_floating_point:
        raise TypeError(f"gating_networks: u must be a floating-point tensor, got {u.dtype}")
    for name, t in tensors:
        if t.dtype != u.dtype:
            raise TypeError(f"gating_networks: {name} has dtype {t.dtype}, expected the dtype of u ({u.dtype})")
        if t.device != u.device:
            raise ValueError(f"gating_networks: {name} is on {t.device}, expected the device of u ({u.device})")


@_backend.autocast_entry("gating_networks", "u", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias",
                         "fc3_weights", "fc3_biases")
def gating_networks(
    u: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
    fc3_weights: Sequence[torch.Tensor],
    fc3_biases: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """The gate logits of the L gating networks, Eq. 6 (the sigmoid is applied by gated_linear).

    Args:
        u: `[B, Du]` gate input.
        fc1_weight: `[L·H, Du]`, fc1_bias: `[L·H]`: the L first layers, stacked.
        fc2_weight: `[L, H, H]` (x @ W layout), fc2_bias: `[L, 1, H]`: the second layers.
        fc3_weights, fc3_biases: per network `[K_l, H]` and `[K_l]`, K_l the input width of MLP layer l.
    Returns:
        a list of L gate-logit tensors `[B, K_l]`.

    Example:
        >>> L, H, Du, B = 3, 90, 90, 8
        >>> u = torch.randn(B, Du)
        >>> w1, b1 = torch.randn(L * H, Du), torch.randn(L * H)
        >>> w2, b2 = torch.randn(L, H, H), torch.randn(L, 1, H)
        >>> w3 = [torch.randn(k, H) for k in (144, 256, 128)]
        >>> b3 = [torch.randn(k) for k in (144, 256, 128)]
        >>> [g.shape for g in gating_networks(u, w1, b1, w2, b2, w3, b3)]
        [torch.Size([8, 144]), torch.Size([8, 256]), torch.Size([8, 128])]
    """
    _validate(u, fc1_weight, fc1_bias, fc2_weight, fc2_bias, fc3_weights, fc3_biases)
    fc3_weights, fc3_biases = list(fc3_weights), list(fc3_biases)
    backend = _select(u.device, u.dtype)
    if backend == "reference" or _backend.functorch_transformed(  # torch.func transforms: the reference
            (u, fc1_weight, fc1_bias, fc2_weight, fc2_bias, fc3_weights, fc3_biases)):
        return gating_networks_reference(u, fc1_weight, fc1_bias, fc2_weight, fc2_bias, fc3_weights, fc3_biases)
    # Under CPU autocast the inputs arrive in bf16 (above), so the eager form runs its GEMMs in
    # bf16 as autocast does for any nn.Linear: 2.2-2.5x faster than fp32 on a CPU with AVX512-BF16
    # (this 2-core EPYC: 2048x90 @ 90x270 0.48 vs 1.20 ms); the C++ kernel is fp32/fp64.
    if (torch.compiler.is_compiling() and not torch.compiler.is_exporting()) or backend != "cpu":
        return _gating_networks_eager(u, fc1_weight, fc1_bias, fc2_weight, fc2_bias, fc3_weights, fc3_biases)
    logits, _, _ = torch.ops.udg_fast.gating_networks(
        u.contiguous(), fc1_weight.contiguous(), fc1_bias.contiguous(), fc2_weight.contiguous(),
        fc2_bias.contiguous(), [w.contiguous() for w in fc3_weights], [b.contiguous() for b in fc3_biases])
    return list(logits)


def _gating_networks_eager(u, fc1_weight, fc1_bias, fc2_weight, fc2_bias, fc3_weights, fc3_biases):
    """The eager form (GPU backends, torch.compile): the L first layers as one GEMM, then per
    network a column block of its output through fc2 and fc3. `split`/`unbind`, not indexing:
    their backward is one cat/stack, where a [L, B, H] transpose + a[i] made autograd zero-fill
    and copy a full gradient per network (DIN's gates, B = 2048, one thread, fwd + bwd:
    22.2 → 20.8 ms)."""
    H = fc2_weight.shape[1]
    a = F.relu(F.linear(u, fc1_weight, fc1_bias))                        # [B, L·H]
    w2, b2 = fc2_weight.unbind(0), fc2_bias.unbind(0)
    return [F.linear(F.relu(torch.addmm(b2[i], part, w2[i])), w3, b3)
            for i, (part, w3, b3) in enumerate(zip(a.split(H, dim=1), fc3_weights, fc3_biases))]


# ---- the C++ op: fake implementations and autograd --------------------------------------------

def _fake_forward(u, fc1_weight, fc1_bias, fc2_weight, fc2_bias, fc3_weights, fc3_biases):
    LH = fc1_weight.shape[0]
    return ([u.new_empty(u.shape[0], w.shape[0]) for w in fc3_weights], u.new_empty(u.shape[0], LH),
            u.new_empty(u.shape[0], LH))


def _fake_backward(grad_logits, u, a1, a2, fc1_weight, fc2_weight, fc3_weights):
    return (torch.empty_like(u), torch.empty_like(fc1_weight), fc1_weight.new_empty(fc1_weight.shape[:1]),
            torch.empty_like(fc2_weight), fc2_weight.new_empty(fc2_weight.shape[0], 1, fc2_weight.shape[1]),
            [torch.empty_like(w) for w in fc3_weights], [w.new_empty(w.shape[:1]) for w in fc3_weights])


def _setup_context(ctx, inputs, output):
    u, fc1_weight, fc1_bias, fc2_weight, fc2_bias, fc3_weights, fc3_biases = inputs
    _, a1, a2 = output
    ctx.n_layers = len(fc3_weights)
    # a1, a2 are saved for the backward, not results: no gradient, and none zero-filled for them
    # (set_materialize_grads(False); an unused logit's gradient arrives as None, handled there)
    ctx.mark_non_differentiable(a1, a2)
    ctx.set_materialize_grads(False)
    # the biases are saved for double backward only (its reference recomputation needs them)
    ctx.save_for_backward(u, a1, a2, fc1_weight, fc1_bias, fc2_weight, fc2_bias, *fc3_weights, *fc3_biases)


def _flat_reference(u, fc1_weight, fc1_bias, fc2_weight, fc2_bias, n, *params):
    return gating_networks_reference(u, fc1_weight, fc1_bias, fc2_weight, fc2_bias, list(params[:n]),
                                     list(params[n:]))


def _backward(ctx, grad_logits, _grad_a1, _grad_a2):
    u, a1, a2, w1, b1, w2, b2, *params = ctx.saved_tensors
    n = ctx.n_layers
    grad_logits = [u.new_zeros(u.shape[0], w.shape[0]) if g is None else g for g, w in zip(grad_logits, params[:n])]
    if torch.is_grad_enabled():  # only under create_graph=True: keep the gradient differentiable
        args = (u, w1, b1, w2, b2, n, *params)
        g = reference_vjp(_flat_reference, args, tuple(grad_logits), (0, 1, 2, 3, 4, *range(6, 6 + 2 * n)))
        return g[0], g[1], g[2], g[3], g[4], list(g[6:6 + n]), list(g[6 + n:])
    du, dw1, db1, dw2, db2, dw3, db3 = torch.ops.udg_fast.gating_networks_backward(
        [g.contiguous() for g in grad_logits], u, a1, a2, w1, w2, list(params[:n]))
    return du, dw1, db1, dw2, db2, dw3, db3


_backend.register_cpp_op("gating_networks", _fake_forward, _fake_backward, _backward, _setup_context)
