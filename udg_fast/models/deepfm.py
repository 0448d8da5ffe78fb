"""DeepFM (Guo et al. 2017): a factorisation machine and the deep MLP on shared embeddings."""
from __future__ import annotations

import torch

from udg_fast.models.base import CTRModel, Embedded
from udg_fast.models.wdl import LinearPart


class DeepFM(CTRModel):
    """DeepFM: logit = FM(first order + pairwise) + MLP(Concat(e_mid, e_item, e_user)).

    The FM's first-order term is `LinearPart` (as W&D's wide part); its second-order term is
    Σ_{i<j} ⟨e_i, e_j⟩ over the F field vectors (user, profile, context, item fields, pooled
    history fields), computed as ½ Σ_k ((Σ_i e_ik)² − Σ_i e_ik²) in O(F·d). The FM shares the
    embeddings with the MLP; under UDG only the MLP is gated.
    """

    name = "deepfm"
    DEFAULTS = {"hidden": (256, 128)}

    def _build(self) -> int:
        self.mid_dim = self.behv_dim
        self.linear = LinearPart(self)
        return 0

    def extra_logit(self, e: Embedded, batch) -> torch.Tensor:
        x = torch.cat([e.user, e.item, e.behv], 1)      # [B, F, d]
        s = x.sum(1)
        fm = 0.5 * (s * s - (x * x).sum(1)).sum(1)
        return self.linear(batch, e, self.hparams["pooling"]) + fm
