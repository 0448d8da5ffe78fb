"""`udg_fast.GatedLinear`: the drop-in module for one layer of the UDG-gated MLP (Eq. 7)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from udg_fast.ops.gated_linear import ACTIVATIONS, gated_linear


class GatedLinear(nn.Module):
    """`act(W (γ·σ(gate_logits) ⊙ x) + b)` — a linear layer whose input is gated (Eq. 7).

    Initialised like `nn.Linear`, with the same parameter names (`weight` `[out, in]`, `bias`
    `[out]`), so an `nn.Linear` state_dict loads into it. `forward(x, gate_logits=None)`: with
    `gate_logits=None` it is a plain linear + activation, so a base model and its UDG variant
    share the module.

    Args:
        in_features, out_features: K and N.
        bias: learn an additive bias.
        activation: "relu" for hidden layers, "none" (or None) for the output layer.
        gate_scale: γ (the paper: 1; 2 makes a fresh gate start near 1).

    Example:
        >>> layer = GatedLinear(400, 200)
        >>> y = layer(torch.randn(8, 400), gate_logits=torch.randn(8, 400))   # [8, 200]
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str | None = "relu", gate_scale: float = 1.0,
                 device=None, dtype=None):
        super().__init__()
        if activation is None:
            activation = "none"
        if activation not in ACTIVATIONS:
            raise ValueError(f"GatedLinear: activation must be one of {ACTIVATIONS} (or None), got {activation!r}")
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"GatedLinear: {name} must be a positive int, got {v!r}")
        if isinstance(gate_scale, bool) or not isinstance(gate_scale, (int, float)):
            raise TypeError(f"GatedLinear: gate_scale must be a number, got {gate_scale!r}")
        self.in_features, self.out_features = in_features, out_features
        self.activation, self.gate_scale = activation, float(gate_scale)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **kw))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Exactly nn.Linear's initialisation.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, gate_logits: torch.Tensor | None = None) -> torch.Tensor:
        """x, gate_logits: `[..., in_features]` → `[..., out_features]`."""
        if gate_logits is None:
            y = F.linear(x, self.weight, self.bias)
            return F.relu(y) if self.activation == "relu" else y
        return gated_linear(x, gate_logits, self.weight, self.bias, self.activation, self.gate_scale)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, activation={self.activation!r}, gate_scale={self.gate_scale}")
