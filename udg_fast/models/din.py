"""DIN (Zhou et al. 2018): the local activation unit weighs each history step by its relevance to
the target item."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from udg_fast.models.base import CTRModel, Embedded, ModelError
from udg_fast.ops.din_attention import _din_attention_eager, din_attention
from udg_fast.ops.naive import din_attention_reference

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": F.relu, "prelu": None}
NORMS = ("none", "softmax", "sigmoid")


class AttentionUnit(nn.Module):
    """DIN's local activation unit: score_t = MLP([q, k_t, q − k_t, q ⊙ k_t]) → `[B, T]`, through
    the fused op `udg_fast.ops.din_attention` (its docstring has the factored first layer and the
    backends; the C++ CPU kernel scores only the valid steps).

    The parameters are those of the naive unit (`fc1.weight` is `[h, 4D]`), so a checkpoint of
    any form loads. The PReLU activation (per-layer weights) runs the op's eager factored form.

    Args:
        dim: D, the width of q and k.
        hidden: hidden widths (DIN's code: 80, 40).
        activation: "sigmoid" (DIN's code), "relu" or "prelu".
    """

    def __init__(self, dim: int, hidden=(80, 40), activation: str = "sigmoid"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ModelError(f"attention activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        hidden = [int(h) for h in hidden]
        if not hidden:
            raise ModelError("attention hidden sizes must not be empty")
        self.dim, self.activation = int(dim), activation
        self.fc1 = nn.Linear(4 * self.dim, hidden[0])
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(hidden[:-1], hidden[1:]))
        self.out = nn.Linear(hidden[-1], 1)
        if activation == "prelu":
            # PReLU on the last dim (nn.PReLU's per-channel weight expects channels at dim 1)
            self.prelu_weights = nn.ParameterList(nn.Parameter(torch.full((h,), 0.25)) for h in hidden)

    def _act(self, x: torch.Tensor, i: int) -> torch.Tensor:
        if self.activation == "prelu":
            return torch.where(x >= 0, x, x * self.prelu_weights[i].to(x.dtype))
        return ACTIVATIONS[self.activation](x)

    def forward(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """q `[B, D]`, k `[B, T, D]`, mask `[B, T]` bool (valid steps) or None → raw scores `[B, T]`
        (not normalised; 0 at masked steps when a mask is given). Computed in k's dtype."""
        dt = k.dtype
        layers = [*self.fcs, self.out]
        args = (q.to(dt), k, mask, self.fc1.weight.to(dt), self.fc1.bias.to(dt),
                [fc.weight.to(dt) for fc in layers], [fc.bias.to(dt) for fc in layers])
        if self.activation == "prelu":
            return _din_attention_eager(*args, self._act)
        return din_attention(*args, self.activation)

    def forward_naive(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The same scores from the literal concat [q, k, q − k, q ⊙ k] on every step (the
        reference for tests; any activation, PReLU included)."""
        layers = [*self.fcs, self.out]
        return din_attention_reference(q, k, None, self.fc1.weight, self.fc1.bias, [fc.weight for fc in layers],
                                       [fc.bias for fc in layers], self._act)


def attention_weights(scores: torch.Tensor, mask: torch.Tensor, norm: str) -> torch.Tensor:
    """Masked attention weights `[B, T]`: exactly 0 at padded steps (whatever their scores).

    norm: "none" (DIN's paper: raw scores, keeping the intensity of the user's interest),
    "softmax" over the valid steps (DIN's and DIEN's code), "sigmoid" (each weight in (0, 1)).
    """
    if norm == "none":
        w = scores
    elif norm == "sigmoid":
        w = torch.sigmoid(scores)
    elif norm == "softmax":
        w = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
    else:
        raise ModelError(f"attention norm must be one of {NORMS}, got {norm!r}")
    # where(), not a product: a row with no valid step (softmax → NaN) gives zeros
    return torch.where(mask, w, torch.zeros_like(w))


class DIN(CTRModel):
    """DIN: e_mid = Σ_t a(q, k_t) · k_t over the valid history steps, with q the target item's
    (item_id, item_cat) embedding and k_t the step's (hist_item, hist_cat) embedding; padded steps
    (t ≥ hist_len) get weight 0.

    Hyper-parameters: `att_hidden` (80, 40), `att_activation` "sigmoid", `att_norm` "none"
    (see `attention_weights`).
    """

    name = "din"
    DEFAULTS = {"hidden": (256, 128), "att_hidden": (80, 40), "att_activation": "sigmoid", "att_norm": "none"}

    def _build(self) -> int:
        if self.hparams["att_norm"] not in NORMS:
            raise ModelError(f"din: att_norm must be one of {NORMS}, got {self.hparams['att_norm']!r}")
        self.mid_dim = self.behv_dim
        self.attention = AttentionUnit(self.behv_dim, self.hparams["att_hidden"], self.hparams["att_activation"])
        return 0

    def middle(self, e: Embedded, batch, aux: bool):
        w = attention_weights(self.attention(e.query, e.hist, e.mask), e.mask, self.hparams["att_norm"])
        return e.pool(w, with_behv=self.gates_read_behv), None
