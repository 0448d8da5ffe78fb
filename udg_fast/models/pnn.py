"""PNN (Qu et al. 2016): a product layer over the field embeddings feeds the prediction MLP."""
from __future__ import annotations

import torch
from torch import nn

from udg_fast.models.base import CTRModel, Embedded, ModelError

PRODUCTS = ("inner", "outer", "both")


class PNN(CTRModel):
    """PNN with the paper's base model around it.

    The fields are the F embedding vectors `[B, F, d]`: user id, profile, context, target item
    fields and the pooled history fields (the multi-hot behaviour feature). The product layer
    adds, for every pair i < j of the P = F(F−1)/2 pairs:

    - `product="inner"` (IPNN, the default): ⟨e_i, e_j⟩ — P features, one batched GEMM;
    - `product="outer"` (OPNN, as DeepCTR's kernel_type "mat"): e_iᵀ W_p e_j with a learned
      `[d, d]` kernel per pair — P features, P·d² parameters;
    - `product="both"`: both (2P features).

    The MLP input is Concat(e_mid = pooled history, e_item, e_user, products) — the linear signal
    plus the product signal.
    """

    name = "pnn"
    DEFAULTS = {"hidden": (128, 128), "product": "inner"}

    def _build(self) -> int:
        self.mid_dim = self.behv_dim
        kind = self.hparams["product"]
        if kind not in PRODUCTS:
            raise ModelError(f"pnn: product must be one of {PRODUCTS}, got {kind!r}")
        n = len(self.user_fields) + len(self.item_fields) + len(self.behv_fields)
        i, j = torch.triu_indices(n, n, offset=1)
        self.register_buffer("pair_i", i, persistent=False)
        self.register_buffer("pair_j", j, persistent=False)
        self.n_pairs = n * (n - 1) // 2
        self.inner = kind in ("inner", "both")
        self.outer = kind in ("outer", "both")
        d = self.embed_dim
        if self.outer:
            self.outer_kernel = nn.Parameter(torch.empty(self.n_pairs, d, d))
            nn.init.xavier_uniform_(self.outer_kernel)
        return self.n_pairs * (int(self.inner) + int(self.outer))

    def extra_features(self, e: Embedded) -> list[torch.Tensor]:
        x = torch.cat([e.user, e.item, e.behv], 1)                    # [B, F, d]
        out = []
        if self.inner:
            gram = torch.bmm(x, x.transpose(1, 2))                    # [B, F, F]
            out.append(gram[:, self.pair_i, self.pair_j])             # [B, P]
        if self.outer:
            xi, xj = x[:, self.pair_i], x[:, self.pair_j]             # [B, P, d]
            out.append(torch.einsum("bpd,pde,bpe->bp", xi, self.outer_kernel, xj))
        return out
