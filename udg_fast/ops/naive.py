"""Plain eager-PyTorch references of every udg_fast op: the oracles the fast backends are tested
against, and the `reference` backend. Same signatures as the public ops; any device, any dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from udg_fast._backend import constant_result


def gated_linear_reference(
    x: torch.Tensor,
    gate_logits: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "relu",
    gate_scale: float = 1.0,
) -> torch.Tensor:
    """Eq. 7 of the UDG paper, unfused: `act(W (gate_scale · σ(gate_logits) ⊙ x) + b)`.

    Args:
        x: `[..., K]` layer input h_{l-1}.
        gate_logits: `[..., K]` pre-sigmoid output of the gating network.
        weight: `[N, K]`; bias: `[N]` or None.
        activation: "relu" or "none".
        gate_scale: γ in g = γ·σ(gate_logits).
    Returns:
        `[..., N]`.
    """
    h = x * (torch.sigmoid(gate_logits) * gate_scale)
    y = F.linear(h, weight, bias)
    return torch.relu(y) if activation == "relu" else y


# ---- augru (DIEN's AUGRU; a plain GRU without att) ---------------------------------------------

def augru_reference(
    x: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    att: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AUGRU of the DIEN paper as a plain loop over t (the oracle). Gate order (r, z, n):

        r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
        h_t = (1 − a_t z_t) ⊙ h_{t-1} + a_t z_t ⊙ n_t          (a ≡ 1 when att is None)

    Steps t >= lengths[b] leave h unchanged and output zeros.

    Args:
        x: `[B, T, I]`; weight_ih: `[3H, I]`; weight_hh: `[3H, H]`; bias_ih, bias_hh: `[3H]` or None.
        att: `[B, T]` attention scores or None; lengths: `[B]` integers in [0, T] or None (all T);
        h0: `[B, H]` or None (zeros).
    Returns:
        (outputs `[B, T, H]`, h_n `[B, H]`). float16/bfloat16 inputs are computed in float32.
    """
    dtype = x.dtype
    cdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def c(t):
        return None if t is None else t.to(cdt)

    x, weight_ih, weight_hh, bias_ih, bias_hh, att, h0 = map(c, (x, weight_ih, weight_hh, bias_ih, bias_hh, att, h0))
    B, T, _ = x.shape
    H = weight_hh.shape[1]
    h = x.new_zeros(B, H) if h0 is None else h0
    steps = torch.arange(T, device=x.device)
    mask = None if lengths is None else steps[None, :] < lengths.to(x.device)[:, None]  # [B, T]
    if mask is not None:
        # the padded steps' inputs and scores never reach the state: zeros in their place keep a
        # NaN there out of every gradient too (0 · NaN = NaN through the masked where's backward)
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros_like(x))
        att = None if att is None else torch.where(mask, att, torch.zeros_like(att))
    gi = F.linear(x, weight_ih, bias_ih)  # [B, T, 3H]: the input projection of every step
    # The steps are taken with unbind, not gi[:, t]: the backward of each `[:, t]` slice
    # allocates and zero-fills a whole [B, T, 3H] gradient, T of them per backward (a reference
    # DIEN training step spent 987 of 2,400 ms in that fill_ at B = 2048, T = 50, one thread);
    # unbind's backward stacks the T step gradients once.
    gi_t = gi.unbind(1)
    att_t = None if att is None else att.unbind(1)
    mask_t = None if mask is None else mask.unbind(1)
    outs = []
    for t in range(T):
        gh = F.linear(h, weight_hh, bias_hh)
        i_r, i_z, i_n = gi_t[t].chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        if att is not None:
            z = att_t[t][:, None] * z
        h_new = (1 - z) * h + z * n
        if mask is None:
            h = h_new
            outs.append(h_new)
        else:
            m = mask_t[t][:, None]
            h = torch.where(m, h_new, h)
            outs.append(torch.where(m, h_new, torch.zeros_like(h_new)))
    outputs = torch.stack(outs, dim=1) if T > 0 else x.new_zeros(B, 0, H)
    return outputs.to(dtype), h.to(dtype)


# ---- din_attention (DIN's local activation unit) ---------------------------------------------

def attention_activation(activation):
    """DIN attention's hidden activation as `act(x, i)` (i: the hidden layer's index): "sigmoid",
    "relu", or a callable `act(x, i)` already (DIN's PReLU, whose weights are per layer)."""
    if callable(activation):
        return activation
    act = torch.sigmoid if activation == "sigmoid" else torch.relu
    return lambda x, i: act(x)


def din_attention_reference(
    query: torch.Tensor,
    keys: torch.Tensor,
    mask: torch.Tensor | None,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    weights,
    biases,
    activation: str = "sigmoid",
) -> torch.Tensor:
    """DIN's local activation unit, literally (Zhou et al. 2018, Fig. 2): every step t of every
    sample gets the score

        s_t = MLP([q, k_t, q − k_t, q ⊙ k_t])     (the 4D concat through fc1, then `weights`)

    with `activation` after every hidden layer and none after the last (one score); steps where
    mask is False score exactly 0, and their keys are replaced by zeros before the MLP, so a NaN
    there reaches neither the scores nor any gradient (as in the kernels, which never read them;
    a `where` on the scores alone keeps the forward clean but not the backward: 0 · NaN = NaN in
    the weight gradients).

    Args:
        query: `[B, D]`; keys: `[B, T, D]`; mask: `[B, T]` bool (valid steps) or None (all).
        fc1_weight: `[h1, 4D]`; fc1_bias: `[h1]`.
        weights, biases: the layers after fc1 (`[h_{l+1}, h_l]`, `[h_{l+1}]`), the last `[1, h_L]`.
        activation: "sigmoid" (DIN's code), "relu", or a callable `act(x, i)` for hidden layer i.
    Returns:
        scores `[B, T]`.
    """
    act = attention_activation(activation)
    if mask is not None:
        keys = torch.where(mask.unsqueeze(-1), keys, torch.zeros_like(keys))
    qe = query.unsqueeze(1).expand_as(keys)
    a = act(F.linear(torch.cat([qe, keys, qe - keys, qe * keys], -1), fc1_weight, fc1_bias), 0)
    for i, (w, b) in enumerate(zip(weights, biases)):
        a = F.linear(a, w, b)
        if i < len(weights) - 1:
            a = act(a, i + 1)
    s = a.squeeze(-1)
    return s if mask is None else torch.where(mask, s, torch.zeros_like(s))


# ---- gating_networks (the UDG gating networks GN^(l), Eq. 6) --------------------------------

def gating_networks_reference(u, fc1_weight, fc1_bias, fc2_weight, fc2_bias, fc3_weights, fc3_biases):
    """The L gating networks of the UDG paper (Eq. 6) as L separate three-layer networks:

        g_l = W3_l ReLU(ReLU(u W1_lᵀ + b1_l) W2_l + b2_l) + b3_l        (gate logits; Eq. 7's σ
                                                                          is applied in gated_linear)
    Args:
        u: `[B, Du]` the gate input; fc1_weight: `[L·H, Du]` (network l in rows l·H …);
        fc1_bias: `[L·H]`; fc2_weight: `[L, H, H]` (x @ W layout); fc2_bias: `[L, 1, H]`;
        fc3_weights[l]: `[K_l, H]`; fc3_biases[l]: `[K_l]`.
    Returns:
        a list of L tensors `[B, K_l]`.
    """
    L, H = fc2_weight.shape[0], fc2_weight.shape[1]
    out = []
    for l in range(L):
        rows = slice(l * H, (l + 1) * H)
        a1 = torch.relu(F.linear(u, fc1_weight[rows], fc1_bias[rows]))
        a2 = torch.relu(a1 @ fc2_weight[l] + fc2_bias[l])
        out.append(F.linear(a2, fc3_weights[l], fc3_biases[l]))
    return out


# ---- double backward ------------------------------------------------------------------------------

@constant_result
def _cpu_threads() -> int:
    # a constant to torch.compile (decided once per graph, like the ops' backend choice)
    return torch.get_num_threads()


def embedding_backward_reference(grad: torch.Tensor, ids: torch.Tensor, num_rows: int,
                                 padding_idx: int | None = None) -> torch.Tensor:
    """The dense `[num_rows, d]` gradient of an embedding lookup (udg_fast.ops.embedding_backward):
    row v the sum of the `grad` rows whose id is v, the padding row 0. Differentiable in `grad`.
    CPU: index_put_ on one thread, index_add_ on more (each faster there than
    embedding_dense_backward); GPUs: embedding_dense_backward, whose CUDA kernel reduces runs of
    equal ids in parallel (CUDA's index_put_ adds them serially, pytorch/pytorch#41162)."""
    if grad.device.type != "cpu":
        return torch.ops.aten.embedding_dense_backward(grad, ids, num_rows,
                                                       -1 if padding_idx is None else padding_idx, False)
    if _cpu_threads() > 1:
        gw = grad.new_zeros(num_rows, grad.shape[1]).index_add_(0, ids, grad)
    else:
        gw = grad.new_zeros(num_rows, grad.shape[1]).index_put_((ids,), grad, accumulate=True)
    if padding_idx is not None:
        gw = gw.index_fill(0, ids.new_tensor([padding_idx]), 0)
    return gw


def reference_vjp(reference, args, grad_outputs, differentiable):
    """Gradients of `reference(*args)` against `grad_outputs`, themselves differentiable: what the
    fast ops' backward returns when autograd asks for a graph of the gradient (create_graph=True,
    e.g. the meta-gradient of the cold-start Algorithm 1, Eq. 10–11, or a gradient penalty).

    The fused backward kernels are not differentiable; a custom op whose backward calls them would
    give second-order terms of exactly 0 with only a warning. Instead, under create_graph the
    forward is recomputed with the eager reference (from the saved inputs, which keep their
    autograd history) and differentiated by autograd.

    Args:
        reference: the op's reference function.
        args: its positional arguments (the saved inputs).
        grad_outputs: one gradient per output (None = zeros).
        differentiable: indices into args of the tensors that need a gradient.
    Returns:
        a list as long as args: the gradient of each index in `differentiable`, else None.
    """
    with torch.enable_grad():
        outs = reference(*args)
    outs = (outs,) if isinstance(outs, torch.Tensor) else tuple(outs)
    grads_in = [torch.zeros_like(o) if g is None else g for o, g in zip(outs, grad_outputs)]
    pairs = [(o, g) for o, g in zip(outs, grads_in) if o.requires_grad]
    result = [None] * len(args)
    wanted = [i for i in differentiable if args[i] is not None and args[i].requires_grad]
    if not pairs or not wanted:
        return result
    got = torch.autograd.grad([o for o, _ in pairs], [args[i] for i in wanted], [g for _, g in pairs],
                              create_graph=True, allow_unused=True)
    for i, g in zip(wanted, got):
        result[i] = torch.zeros_like(args[i]) if g is None else g
    return result
