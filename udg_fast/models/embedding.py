"""The embedding layer (Eq. 1): one table per id field; history fields share their key's table."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from udg_fast.data import Schema
from udg_fast.ops.embedding_backward import embedding_backward

# Embeddings start at N(0, 0.01²), not nn.Embedding's N(0, 1). Measured here on ml-100k (W&D, the
# authors' 3-epoch recipe, seed 0, docs/models.md): N(0, 1) → test AUC 0.681, N(0, 0.01²) → 0.791
# (a colleague saw 0.71 vs 0.787 with a pooled-history MLP). With unit variance every rarely seen id
# — most users and items have few rows — enters the MLP as a large random vector that the MLP then
# fits; with a small std an id moves away from ~0 only as far as its own gradients push it.
# DeepCTR-Torch uses 1e-4 (not compared here). `embed_init_std` changes it.
DEFAULT_INIT_STD = 0.01


class _Lookup(torch.autograd.Function):
    """`F.embedding(ids, weight)` whose backward is the op `udg_fast.ops.embedding_backward`: the
    same dense `[V, d]` gradient (the padding row 0); on CPU summed in input order rather than
    sorted-index order (deterministic), on GPUs `embedding_dense_backward`. Measured, ids [2048, 50]
    into a [1683, 18] table, wall clock: one thread 3.4 ms (embedding_dense_backward), 2.4
    (index_put_, the op's eager form), 0.31 (its C++ kernel); two threads 2.8, 2.9 (index_add_),
    0.32 (benchmarks/results/cpu-ops-2026-11-28b.md). The backward is itself differentiable (the
    cold-start meta-gradient differentiates through it: the op then runs its eager form)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, padding_idx: int | None):
        ctx.save_for_backward(ids)
        ctx.num_rows, ctx.padding_idx = weight.shape[0], padding_idx
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        d = grad.shape[-1]
        gw = embedding_backward(grad.reshape(-1, d), ids.reshape(-1), ctx.num_rows, ctx.padding_idx)
        return gw, None, None


def lookup(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """`table(ids)` (padding row included) with `_Lookup`'s faster backward; `ids` `[...]` int64 →
    `[..., d]`. Tables with max_norm, scale_grad_by_freq or sparse gradients go to nn.Embedding."""
    if table.max_norm is not None or table.scale_grad_by_freq or table.sparse:
        return table(ids)
    return _Lookup.apply(table.weight, ids, table.padding_idx)


def init_embedding_(table: nn.Embedding, std: float) -> None:
    """N(0, std²) with the padding row (id 0) set to zero."""
    nn.init.normal_(table.weight, 0.0, std)
    if table.padding_idx is not None:
        with torch.no_grad():
            table.weight[table.padding_idx].zero_()


class FieldEmbedding(nn.Module):
    """One `nn.Embedding(vocab_size, dim, padding_idx=0)` per sparse id field of the schema
    (user, item, profile, context fields); a history field (`hist_item`, `neg_hist_item`, …) looks
    up the table of the field its schema `key` names (`item_id`, `item_cat`), so the target item and
    the behaviour sequence share their item and category embeddings (Eq. 1).

    Id 0 is padding/unknown everywhere in the data layer, and its row is a zero vector that never
    trains (`padding_idx=0`): an unknown user or a padded history step contributes nothing.

    Args:
        schema: the dataset's `udg_fast.data.Schema`.
        dim: embedding size d (the same for every field, as the paper and PNN/FM need).
        init_std: the std of the N(0, std²) initialisation (see DEFAULT_INIT_STD).

    Example:
        >>> emb = FieldEmbedding(ds.schema, 18)
        >>> emb("hist_item", batch["hist_item"]).shape      # [B, L, 18], item_id's table
    """

    def __init__(self, schema: Schema, dim: int, init_std: float = DEFAULT_INIT_STD):
        super().__init__()
        self.dim = int(dim)
        self.fields = tuple(schema.sparse_fields)
        self.tables = nn.ModuleDict({f: nn.Embedding(schema.vocab_size(f), self.dim, padding_idx=0)
                                     for f in self.fields})
        self.keys = {f: f for f in self.fields}
        for f in schema.history_fields:
            key = schema[f].key
            if key is not None and key in self.tables:
                self.keys[f] = key
        for t in self.tables.values():
            init_embedding_(t, init_std)

    def table(self, field: str) -> nn.Embedding:
        return self.tables[self.keys[field]]

    def forward(self, field: str, ids: torch.Tensor) -> torch.Tensor:
        """ids `[...]` (int64) → `[..., dim]` from the table of `field` (or of its key)."""
        return lookup(self.table(field), ids)


class FieldLinear(FieldEmbedding):
    """The first-order (wide / FM linear) weights: a 1-dimensional embedding per field, shared like
    `FieldEmbedding` (`hist_item` uses `item_id`'s weights)."""

    def __init__(self, schema: Schema, init_std: float = DEFAULT_INIT_STD):
        super().__init__(schema, 1, init_std)
