"""Wide & Deep (Cheng et al. 2016): a wide linear model over the sparse ids + the deep MLP."""
from __future__ import annotations

import torch
from torch import nn

from udg_fast.models.base import CTRModel, Embedded
from udg_fast.models.embedding import FieldLinear


class LinearPart(nn.Module):
    """Σ_fields w_f[id] + b: one weight per id of every sparse field, the history as a pooled
    multi-hot feature (its steps share the item / category weights, masked by `hist_len`)."""

    def __init__(self, model: CTRModel):
        super().__init__()
        self.weights = FieldLinear(model.schema, model.hparams["embed_init_std"])
        self.bias = nn.Parameter(torch.zeros(()))
        self.sparse = model.user_fields + model.item_fields
        self.behv_fields = model.behv_fields

    def forward(self, batch, e: Embedded, pooling: str) -> torch.Tensor:
        w = torch.cat([self.weights(f, batch[f]) for f in self.sparse], 1).sum(1)          # [B]
        steps = torch.cat([self.weights(f, batch[f]) for f in self.behv_fields], -1).sum(-1)  # [B, T]
        steps = torch.where(e.mask, steps, torch.zeros_like(steps)).sum(1)
        if pooling == "mean":
            steps = steps / e.lengths.clamp_min(1).to(steps.dtype)
        return w + steps + self.bias


class WDL(CTRModel):
    """Wide & Deep: logit = wide(sparse ids, pooled history) + MLP(Concat(e_mid, e_item, e_user)),
    e_mid the pooled history. Under UDG only the deep part is gated."""

    name = "wdl"
    DEFAULTS = {"hidden": (256, 128)}

    def _build(self) -> int:
        self.mid_dim = self.behv_dim
        self.wide = LinearPart(self)
        return 0

    def extra_logit(self, e: Embedded, batch) -> torch.Tensor:
        return self.wide(batch, e, self.hparams["pooling"])
