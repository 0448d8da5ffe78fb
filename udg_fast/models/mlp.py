"""The prediction MLP (Eq. 3–4), every layer a `udg_fast.GatedLinear` (Eq. 7 under UDG)."""
from __future__ import annotations

import torch
from torch import nn

from udg_fast.modules.gated_linear import GatedLinear


class GatedMLP(nn.Module):
    """`in_dim → hidden[0] → … → hidden[-1] → 1`: ReLU hidden layers, a linear output layer
    (one logit). Every layer is a `GatedLinear`; `forward(x, gate_logits=None)` is the base model's
    plain MLP, `forward(x, [g_0, …, g_L-1])` the UDG model's (Eq. 7: layer l's *input* is scaled by
    γ·σ(g_l), the output layer's included). The base and the UDG model run the same modules.

    Under autocast the op itself casts x, the gate logits, the weight and the bias to the
    autocast dtype, as autocast does for `F.linear` (udg_fast._backend.AUTOCAST_POLICY).
    """

    def __init__(self, in_dim: int, hidden, gate_scale: float = 1.0):
        super().__init__()
        dims = [int(in_dim), *[int(h) for h in hidden], 1]
        self.layers = nn.ModuleList(
            GatedLinear(dims[i], dims[i + 1], activation="relu" if i < len(dims) - 2 else None,
                        gate_scale=gate_scale)
            for i in range(len(dims) - 1))

    @property
    def in_dims(self) -> list[int]:
        """The input width of every layer: the output widths of the gating networks."""
        return [layer.in_features for layer in self.layers]

    def forward(self, x: torch.Tensor, gate_logits: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x `[B, in_dim]`, gate_logits: None or one `[B, K_l]` per layer → logits `[B, 1]`."""
        if gate_logits is not None and len(gate_logits) != len(self.layers):
            raise ValueError(f"GatedMLP: expected {len(self.layers)} gate tensors, got {len(gate_logits)}")
        for i, layer in enumerate(self.layers):
            x = layer(x) if gate_logits is None else layer(x, gate_logits[i])
        return x
