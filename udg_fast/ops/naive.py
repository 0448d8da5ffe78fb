"""Plain eager-PyTorch references of every udg_fast op: the oracles the fast backends are tested
against, and the `reference` backend. Same signatures as the public ops; any device, any dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
