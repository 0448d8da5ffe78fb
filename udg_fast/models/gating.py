"""UDG gating networks GN^(l) (Eq. 6), one per layer of the prediction MLP."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GatingNetworks(nn.Module):
    """The gating networks of all L layers of the prediction MLP, output layer included (Eq. 6).

    Each GN^(l) is three fully connected layers, ReLU, ReLU, then a sigmoid (the authors'
    `DNN_UDG`: hidden width = input width by default). The sigmoid is *not* applied here: the last
    layer returns logits and `udg_fast.GatedLinear` computes γ·σ(logits) ⊙ h inside its fused
    kernel (Eq. 7).

    All gates read the same input u = Concat(e_item, e_behv, e_UDG), so their first layers are
    stacked into one `[L·H, D_u]` weight and run as one GEMM; the second layers (all `[H, H]`) run
    as one batched GEMM (`baddbmm` over L); only the third layers, whose widths are the input
    widths of the MLP layers and differ, are a loop over the L (≤ 4) layers. The parameters are
    exactly those of L separate 3-layer networks:

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
        H = self.hidden
        a = F.relu(self.fc1(u))                                     # [B, L·H]
        # Per layer, a column block of a (a strided view; MKL reads it in place) through its fc2
        # and fc3. `split`/`unbind` rather than indexing: their backward is one cat/stack, where
        # a[:, i] or a [L, B, H] transpose + a[i] (the earlier batched-baddbmm form) made autograd
        # zero-fill and copy a full-size gradient per layer. DIN's gates (90 → 3 × 90 → 144, 256,
        # 128), B = 2048, one thread, fwd + bwd: 22.2 → 20.8 ms.
        w2, b2 = self.fc2_weight.to(a.dtype).unbind(0), self.fc2_bias.to(a.dtype).unbind(0)
        return [fc3(F.relu(torch.addmm(b2[i], part, w2[i])))
                for i, (part, fc3) in enumerate(zip(a.split(H, dim=1), self.fc3))]

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden={self.hidden}, out_dims={self.out_dims}"
