"""UDG gating networks GN^(l) (Eq. 6), one per layer of the prediction MLP."""
from __future__ import annotations

import math

import torch
from torch import nn

from udg_fast.ops.gating_networks import gating_networks


class GatingNetworks(nn.Module):
    """The gating networks of all L layers of the prediction MLP, output layer included (Eq. 6).

    Each GN^(l) is three fully connected layers, ReLU, ReLU, then a sigmoid (the authors'
    `DNN_UDG`: hidden width = input width by default). The sigmoid is *not* applied here: the last
    layer returns logits and `udg_fast.GatedLinear` computes γ·σ(logits) ⊙ h inside its fused
    kernel (Eq. 7).

    All gates read the same input u = Concat(e_item, e_behv, e_UDG), so their first layers are
    stacked into one `[L·H, D_u]` weight, the second layers are one `[L, H, H]` parameter, and all
    L networks run as one fused op (`udg_fast.ops.gating_networks`: the C++ kernel on CPU). The
    parameters are exactly those of L separate 3-layer networks:

        L · (D_u·H + H) + L · (H·H + H) + Σ_l (H·K_l + K_l)

    Args:
        in_dim: D_u, the width of the gate input.
        out_dims: K_l, the input width of each MLP layer (its gate's output width).
        hidden: H (default: in_dim, as the authors' code).

    forward(u `[B, D_u]`) → list of L gate-logit tensors, `[B, K_l]`.

    Example:
        >>> gn = GatingNetworks(90, [144, 256, 128])
        >>> [g.shape for g in gn(torch.randn(8, 90))]   # [8, 144], [8, 256], [8, 128]
    """

    def __init__(self, in_dim: int, out_dims, hidden: int | None = None):
        super().__init__()
        self.in_dim, self.out_dims = int(in_dim), tuple(int(k) for k in out_dims)
        self.hidden = int(hidden) if hidden else self.in_dim
        L, H = len(self.out_dims), self.hidden
        self.fc1 = nn.Linear(self.in_dim, L * H)                   # L first layers, one GEMM
        self.fc2_weight = nn.Parameter(torch.empty(L, H, H))       # [L, in, out]: x @ W
        self.fc2_bias = nn.Parameter(torch.empty(L, 1, H))
        self.fc3 = nn.ModuleList(nn.Linear(H, k) for k in self.out_dims)
        self._reset_fc2()

    def _reset_fc2(self) -> None:
        # nn.Linear's initialisation, per gate network.
        bound_w = 1 / math.sqrt(self.hidden)  # kaiming_uniform(a=√5) gives U(±1/√fan_in)
        nn.init.uniform_(self.fc2_weight, -bound_w, bound_w)
        nn.init.uniform_(self.fc2_bias, -bound_w, bound_w)

    @property
    def last_layers(self) -> nn.ModuleList:
        """GN^(l)'s output layers (`fc3[l]`): set `fc3[l].bias` to +inf to open gate l fully."""
        return self.fc3

    def forward(self, u: torch.Tensor) -> list[torch.Tensor]:
        """u `[B, D_u]` → L gate-logit tensors `[B, K_l]`, through `udg_fast.ops.gating_networks`
        (the C++ kernel on CPU). Computed in u's dtype."""
        dt = u.dtype
        return gating_networks(u, self.fc1.weight.to(dt), self.fc1.bias.to(dt), self.fc2_weight.to(dt),
                               self.fc2_bias.to(dt), [fc.weight.to(dt) for fc in self.fc3],
                               [fc.bias.to(dt) for fc in self.fc3])

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden={self.hidden}, out_dims={self.out_dims}"
