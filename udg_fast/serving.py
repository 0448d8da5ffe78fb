"""Inference helpers: score a list of candidate items for one user from that user's history.

    >>> from udg_fast import data, serving, train
    >>> ds = data.load("ml-100k")
    >>> model, _ = train.load_checkpoint("runs/din/best.pt", ds.schema)
    >>> cats = serving.item_category_table(ds)
    >>> p = serving.score_candidates(model, user_id=42, item_ids=[1, 50, 181],
    ...                              history=[12, 7, 300], item_cat_table=cats,
    ...                              profile={"age": 3, "gender": 1, "occupation": 5})
    >>> serving.recommend(model, 42, range(1, 1683), history=[12, 7, 300], item_cat_table=cats, k=10)

`model.score(batch)` (no gradients, eval mode) does the work; ids a field does not know — an
unknown user, a new item — become the padding id 0 (a zero embedding), never an index error.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from udg_fast.models.base import CTRModel, ModelError


def item_category_table(dataset) -> torch.Tensor:
    """`[vocab(item_id)]` int64: the category of every item id seen in any split (0 if never seen)."""
    n = dataset.schema.vocab_size("item_id")
    table = np.zeros(n, np.int64)
    for split in (dataset.train, dataset.valid, dataset.test):
        if len(split):
            table[split["item_id"]] = split["item_cat"]
            h, c = split["hist_item"], split["hist_cat"]
            table[h[h > 0]] = c[h > 0]
    return torch.from_numpy(table)


def _ids(x, name: str) -> torch.Tensor:
    """`x` (a sequence, array or tensor of integer ids; may be empty) as int64 `[n]`."""
    if isinstance(x, (str, bytes)) or not isinstance(x, (torch.Tensor, np.ndarray, Iterable)):
        raise ModelError(f"{name} must be a sequence of integer ids, got {type(x).__name__}")
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        x = list(x)
        if not x:  # torch.as_tensor([]) is float32: an empty history is no history
            return torch.zeros(0, dtype=torch.int64)
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in x):
            bad = next(v for v in x if not isinstance(v, (int, np.integer)) or isinstance(v, bool))
            raise ModelError(f"{name} must hold integer ids, got {bad!r}")
    t = torch.as_tensor(x)
    if t.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ModelError(f"{name} must hold integer ids, got dtype {t.dtype}")
    return t.to(torch.int64).reshape(-1)


def _id(x, name: str) -> int:
    """One integer id (a user, a profile value)."""
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.dtype.is_floating_point:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise ModelError(f"{name} must be an integer id, got {x!r}")
    return int(x)


def _lookup(table: torch.Tensor | None, ids: torch.Tensor, name: str) -> torch.Tensor:
    if table is None:
        raise ModelError(f"give {name} or an item_cat_table (serving.item_category_table(dataset))")
    table = torch.as_tensor(table)
    if table.dim() != 1 or table.numel() == 0 or table.dtype.is_floating_point or table.dtype == torch.bool:
        raise ModelError(f"item_cat_table must be a non-empty 1-D integer table (item id → category), got "
                         f"{table.dtype} {tuple(table.shape)}")
    table = table.to(torch.int64)
    ok = (ids >= 0) & (ids < len(table))
    return torch.where(ok, table[ids.clamp(0, len(table) - 1)], torch.zeros_like(ids))


def candidate_batch(model: CTRModel, user_id: int, item_ids, *, item_cats=None, item_features: Mapping | None = None,
                    history: Iterable[int] = (), history_cats=None, profile: Mapping | None = None,
                    context: Mapping | None = None, item_cat_table=None) -> dict:
    """The batch that asks `model` about every candidate in `item_ids` for one user.

    Args:
        user_id: the user's id (unknown or out-of-range ids score as the padding user 0).
        item_ids: candidate item ids `[n]`.
        item_cats: their categories, or None to look them up in `item_cat_table`.
        item_features: other item fields of the schema (e.g. Alimama's `adgroup_id`) → `[n]` ids.
        history: the user's clicked items, oldest first (only the last `max_len` are used).
        history_cats: their categories, or None to look them up in `item_cat_table`.
        profile, context: field → id for the schema's profile and context fields (missing: 0).
        item_cat_table: `[vocab(item_id)]` item → category (`item_category_table(dataset)`).
    """
    if not isinstance(model, CTRModel):
        raise ModelError(f"model must be a udg_fast CTRModel, got {type(model).__name__}")
    schema = model.schema
    items = _ids(item_ids, "item_ids")
    n, L = len(items), schema.max_len
    batch: dict[str, torch.Tensor] = {"item_id": items}
    if "item_cat" in schema:
        batch["item_cat"] = _ids(item_cats, "item_cats") if item_cats is not None else \
            _lookup(item_cat_table, items, "item_cats")
        if len(batch["item_cat"]) != n:
            raise ModelError(f"item_cats has {len(batch['item_cat'])} entries for {n} items")
    for f in schema.item_fields:
        if f in ("item_id", "item_cat"):
            continue
        if item_features is None or f not in item_features:
            raise ModelError(f"the model needs the item field {f!r}: pass it in item_features")
        batch[f] = _ids(item_features[f], f)
    given = {**(profile or {}), **(context or {})}
    known = set(schema.profile_fields) | set(schema.context_fields)
    bad = sorted(set(given) - known)
    if bad:
        raise ModelError(f"unknown profile/context field(s) {bad} (the schema has: {sorted(known)})")
    batch["user_id"] = torch.full((n,), _id(user_id, "user_id"), dtype=torch.int64)
    for f in sorted(known):
        batch[f] = torch.full((n,), _id(given.get(f, 0), f"profile/context field {f!r}"), dtype=torch.int64)
    hist = _ids(history, "history")[-L:]
    hcats = (_ids(history_cats, "history_cats")[-L:] if history_cats is not None
             else _lookup(item_cat_table, hist, "history_cats") if "hist_cat" in schema else None)
    if hcats is not None and len(hcats) != len(hist):
        raise ModelError(f"history_cats has {len(hcats)} entries for {len(hist)} history items")
    for f, ids in (("hist_item", hist), ("hist_cat", hcats)):
        if f in schema:
            row = torch.zeros(L, dtype=torch.int64)
            row[:len(ids)] = ids
            batch[f] = row.expand(n, L)
    batch["hist_len"] = torch.full((n,), len(hist), dtype=torch.int64)
    return batch


def score_candidates(model: CTRModel, user_id: int, item_ids, *, batch_size: int = 4096, **kw) -> torch.Tensor:
    """Click probabilities `[n]` of the candidates `item_ids` for `user_id` (float32, CPU);
    keyword arguments as `candidate_batch`. No gradients; the model's train/eval mode is kept."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ModelError(f"batch_size must be a positive int, got {batch_size!r}")
    batch = candidate_batch(model, user_id, item_ids, **kw)
    n = len(batch["item_id"])
    batch_size = int(batch_size)
    out = [model.score({k: v[s:s + batch_size] for k, v in batch.items()}).cpu() for s in range(0, n, batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def recommend(model: CTRModel, user_id: int, item_ids, k: int = 10, *, exclude: Sequence[int] = (),
              **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k item ids, their probabilities) among `item_ids`, leaving out `exclude` (e.g. the
    user's history); keyword arguments as `candidate_batch`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ModelError(f"k must be an int >= 0, got {k!r}")
    items = _ids(item_ids, "item_ids")
    excl = _ids(exclude, "exclude")
    if len(excl):
        items = items[~torch.isin(items, excl)]
    p = score_candidates(model, user_id, items, **kw)
    top = torch.topk(p, min(int(k), len(p)))
    return items[top.indices], top.values


class _Scorer(torch.nn.Module):
    """`model.probabilities` (the core of `model.score`) as a module for torch.export: batch dict →
    click probabilities `[B]`, the mapping of unknown ids to the padding id inside the graph."""

    def __init__(self, model: CTRModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.probabilities(batch)


def export(model: CTRModel, example_batch: Mapping[str, torch.Tensor], dynamic_batch: bool = True,
           kernels: bool = True):
    """`model.score` as a `torch.export.ExportedProgram`, for serving without the model's Python
    code: `torch.export.save(ep, "model.pt2")`, then `torch.export.load("model.pt2").module()(batch)`
    → probabilities `[B]`, unknown ids mapped to the padding id inside the program as `score` does.

    Args:
        model: a built or loaded CTRModel (any of the ten variants); exported in eval mode (the
            caller's mode is restored).
        example_batch: a batch with the fields `model.required_fields()` (others are dropped), on
            any device (moved to the model's); with `dynamic_batch` at least 2 rows (torch.export
            specialises a dimension of size 1).
        dynamic_batch: the batch dimension is dynamic (any size ≥ 1 at run time); False fixes it
            to the example's. The history length T is always the example's.
        kernels: True keeps udg_fast's ops (`torch.ops.udg_fast.*`, the fused C++ / CUDA kernels)
            in the program, so it runs as fast as `model.score` but needs `import udg_fast` before
            `torch.export.load`. False exports every op's `reference` form: ATen operators only,
            loadable with torch alone, slower where the kernels matter (DIN / DIEN attention).
    Returns:
        the ExportedProgram; its `module()` takes a dict of exactly the fields
        `model.required_fields()` (torch.export checks the keys: a split's batch, which also holds
        label, timestamp, …, is refused) and returns float32 `[B]`. Call it under
        `torch.inference_mode()`: the program's parameters still require gradients.

    Example:
        >>> ep = serving.export(model, batch)
        >>> torch.export.save(ep, "din_udg.pt2")
        >>> fields = {f: batch[f] for f in model.required_fields()}
        >>> import udg_fast; torch.export.load("din_udg.pt2").module()(fields)   # == model.score(batch)
    """
    import contextlib

    from udg_fast import use_backend

    if not isinstance(model, CTRModel):
        raise ModelError(f"export: model must be a udg_fast CTRModel, got {type(model).__name__}")
    batch = model.inputs(example_batch)
    model.check_batch(batch, values=False)  # one batch size, [B] / [B, T] integer ids
    n = batch["user_id"].shape[0]
    if dynamic_batch and n < 2:
        raise ModelError(f"export: with dynamic_batch, example_batch needs at least 2 rows (torch.export "
                         f"specialises a dimension of size 1), got {n}")
    dynamic = None
    if dynamic_batch:
        rows = torch.export.Dim("batch", min=1)
        dynamic = ({f: {0: rows} for f in batch},)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), (use_backend("reference") if not kernels else contextlib.nullcontext()):
            return torch.export.export(_Scorer(model), (batch,), dynamic_shapes=dynamic)
    finally:
        model.train(was)
