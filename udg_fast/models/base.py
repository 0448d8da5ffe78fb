"""`CTRModel`: the paper's base model (Eq. 1–4) and its UDG variant (Eq. 5–7) in one code path.

    e_user = Concat(E[user_id], E[profile…], E[context…])          (Eq. 1)
    e_item = Concat(E[item_id], E[item_cat], E[extra item fields…])
    e_hist = [Concat(E[hist_item_t], E[hist_cat_t])]_t             (shares item_id / item_cat tables)
    e_mid  = middle layer: pooled history (PNN, DeepFM, W&D), DIN attention, DIEN GRU+AUGRU (Eq. 2)
    logit  = MLP(Concat(e_mid, e_item, e_user[, model extras]))    (Eq. 3–4), + FM / wide terms
    UDG:     u = Concat(e_item, e_behv, E^UDG[user_id])            (Eq. 6, e_behv = pooled history)
             g_l = GN^(l)(u);  h_l = act(W_l (γ·σ(g_l) ⊙ h_{l-1}) + b_l)   for every layer (Eq. 7)

A subclass implements the model's own part: `_build()` (its modules; returns the widths it adds to
the MLP input), `middle()`, and optionally `extra_features()` / `extra_logit()`.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from udg_fast.data import Schema
from udg_fast.models.embedding import DEFAULT_INIT_STD, FieldEmbedding, init_embedding_
from udg_fast.models.gating import GatingNetworks
from udg_fast.models.mlp import GatedMLP

BEHAVIOUR_FIELDS = ("hist_item", "hist_cat")
NEGATIVE_FIELDS = {"hist_item": "neg_hist_item", "hist_cat": "neg_hist_cat"}
#: init_new_users refuses ids that would grow the user tables by more than this
MAX_USER_GROWTH_BYTES = 2**30
GATE_INPUTS = ("paper", "official")
POOLING = ("mean", "sum")

#: hyper-parameters every model takes, with their defaults
COMMON_HPARAMS: dict[str, Any] = {
    "embed_dim": 18,            # d; "base with doubled embedding size" (Table 3) = embed_dim=36
    "hidden": (256, 128),       # hidden widths of the prediction MLP (the output layer is added)
    "embed_init_std": DEFAULT_INIT_STD,
    "pooling": "mean",          # how the history is pooled into e_behv (mean or sum over valid steps)
    "l2_embedding": 0.0,        # L2 penalty on every embedding table, added by loss()
    # UDG (ignored when udg=False)
    "gate_scale": 1.0,          # γ in g = γ·σ(·); the paper's 1
    "gate_inputs": "paper",     # "paper": Concat(e_item, e_behv, e_UDG); "official": e_UDG + profile
    "gate_hidden": None,        # hidden width of the gate networks (None: their input width)
    "udg_dim": None,            # size of the UDG user embedding (None: embed_dim)
    "udg_init_std": None,       # std of E^UDG's N(0, std²) initialisation (None: embed_init_std)
}


class ModelError(ValueError):
    """Bad model input: an unknown model or hyper-parameter, a batch missing a field, a schema or
    checkpoint that does not fit. The message names what is wrong."""


@dataclass
class Embedded:
    """What the embedding layer produced for one batch."""

    user: torch.Tensor        # [B, n_user, d]   user id, profile and context fields
    item: torch.Tensor        # [B, n_item, d]   target item fields
    hist: torch.Tensor        # [B, T, D_b]      per-step behaviour embedding (D_b = n_behv · d)
    pool_w: torch.Tensor      # [B, T]           e_behv's pooling weights: 0 at padded steps (1/len for "mean")
    query: torch.Tensor       # [B, D_b]         the target item in the behaviour space (item_id, item_cat)
    mask: torch.Tensor        # [B, T] bool      valid history steps
    lengths: torch.Tensor     # [B] int64
    _behv: torch.Tensor | None = field(default=None, repr=False)

    @property
    def behv(self) -> torch.Tensor:
        """e_behv `[B, n_behv, d]`: the history pooled over the valid steps, computed on first use
        (DIN and DIEN without UDG never use it)."""
        if self._behv is None:
            self._behv = self._as_behv(torch.bmm(self.pool_w.unsqueeze(1), self.hist).squeeze(1))
        return self._behv

    def _as_behv(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled.view(pooled.shape[0], -1, self.item.shape[2])

    def pool(self, w: torch.Tensor, with_behv: bool = False) -> torch.Tensor:
        """Σ_t w[b, t] · hist[b, t] → `[B, D_b]` (w `[B, T]`, 0 at padded steps). `with_behv`
        computes e_behv in the same bmm when it is not computed yet: one pass over hist forward and
        backward, and one gradient for it instead of two to add (3.1 against 5.9 ms at B = 2048,
        T = 50, D_b = 36, one thread, 2026-11-28)."""
        w = w.to(self.hist.dtype)
        if with_behv and self._behv is None:
            both = torch.bmm(torch.stack([w, self.pool_w], 1), self.hist)   # [B, 2, D_b]
            self._behv = self._as_behv(both[:, 1])
            return both[:, 0]
        return torch.bmm(w.unsqueeze(1), self.hist).squeeze(1)

    @property
    def user_flat(self) -> torch.Tensor:
        return self.user.flatten(1)

    @property
    def item_flat(self) -> torch.Tensor:
        return self.item.flatten(1)

    @property
    def behv_flat(self) -> torch.Tensor:
        return self.behv.flatten(1)


def _plain(v):
    """Hyper-parameter values as plain, JSON- and weights_only-safe types (tuples → lists, numpy
    numbers and arrays → Python's: torch.load(weights_only=True) refuses numpy objects)."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


# Hyper-parameters whose default (None, or a number) does not tell their kind.
_POSITIVE_INT_OR_NONE = ("gate_hidden", "udg_dim")
_NONNEGATIVE = ("embed_init_std", "l2_embedding", "udg_init_std", "aux_alpha")
_NONEMPTY = ("att_hidden", "aux_hidden")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_hparam(model: str, k: str, v, default) -> None:
    """Raise ModelError when hyper-parameter `k` = `v` (plain) is not of the kind its default is:
    a positive int (embed_dim), a list of positive ints (hidden), a finite number (gate_scale > 0;
    stds and penalties >= 0), a string, a bool, or None where the default is None."""
    def bad(expected):
        return ModelError(f"{model}: hyper-parameter {k} must be {expected}, got {v!r}")

    if k in _POSITIVE_INT_OR_NONE:
        if v is not None and not (_is_int(v) and v >= 1):
            raise bad("a positive int or None")
    elif isinstance(default, bool):
        if not isinstance(v, bool):
            raise bad("True or False")
    elif _is_int(default):
        if not (_is_int(v) and v >= 1):
            raise bad("a positive int")
    elif isinstance(default, float) or k in _NONNEGATIVE:
        if v is None and default is None:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                or (k == "gate_scale" and v == 0):
            raise bad("a number > 0" if k == "gate_scale" else "a number >= 0")
    elif isinstance(default, (list, tuple)):
        if not isinstance(v, list) or not all(_is_int(x) and x >= 1 for x in v) or (k in _NONEMPTY and not v):
            raise bad("a list of positive ints" + (" (at least one)" if k in _NONEMPTY else ""))
    elif isinstance(default, str):
        if not isinstance(v, str) and not (k == "att_activation" and callable(v)):
            raise bad("a string")


class CTRModel(nn.Module):
    """Base class of the five models; `udg=True` adds E^UDG and the gating networks.

    Args:
        schema: the dataset's `udg_fast.data.Schema` (field roles and vocabulary sizes).
        udg: build the UDG variant.
        **hparams: `COMMON_HPARAMS` plus the model's own `DEFAULTS`; unknown names raise.

    Calls:
        `forward(batch, udg_emb=None)` → logits `[B]`; `loss(batch)` → (loss, logits);
        `score(batch)` → probabilities `[B]` without gradients (unknown ids → padding id 0).

    UDG hooks:
        `model.udg_embedding` — E^UDG, an `nn.Embedding` over user ids (padding row 0 = zeros);
        `model.udg_user_embedding(batch)` → `[B, udg_dim]`; `forward(batch, udg_emb=…)` replaces
        it per sample (differentiably), e.g. by a cold-start generator's output;
        `model.bypass_gates = True` (or `with model.gates_bypassed():`) skips the gates, so the
        UDG model computes exactly its base model from the shared weights.
    """

    name: str = "base"
    DEFAULTS: dict[str, Any] = {}
    #: fields forward() reads in addition to the user / item / profile / context fields
    history_fields: tuple[str, ...] = ("hist_item", "hist_cat", "hist_len")

    def __init__(self, schema: Schema, udg: bool = False, **hparams):
        super().__init__()
        if not isinstance(schema, Schema):
            raise ModelError(f"{self.name}: schema must be a udg_fast.data.Schema, got {type(schema).__name__}")
        if not isinstance(udg, (bool, np.bool_)):
            raise ModelError(f"{self.name}: udg must be True or False, got {udg!r}")
        hp = self.resolve_hparams(hparams)
        self.schema, self.udg, self.hparams = schema, bool(udg), hp
        d = self.embed_dim = int(hp["embed_dim"])
        if d < 1:
            raise ModelError(f"{self.name}: embed_dim must be a positive int, got {hp['embed_dim']!r}")
        if hp["pooling"] not in POOLING:
            raise ModelError(f"{self.name}: pooling must be one of {POOLING}, got {hp['pooling']!r}")
        if hp["gate_inputs"] not in GATE_INPUTS:
            raise ModelError(f"{self.name}: gate_inputs must be one of {GATE_INPUTS}, got {hp['gate_inputs']!r}")
        for f in ("user_id", "item_id"):
            if f not in schema:
                raise ModelError(f"{self.name}: the schema has no {f!r} field (fields: {', '.join(schema.names)})")

        self.user_fields = tuple(schema.user_fields) + tuple(schema.profile_fields) + tuple(schema.context_fields)
        self.item_fields = tuple(schema.item_fields)
        self.behv_fields = tuple(f for f in BEHAVIOUR_FIELDS if f in schema)
        if "hist_item" not in self.behv_fields or "hist_len" not in schema:
            raise ModelError(f"{self.name}: the schema has no behaviour history (needs 'hist_item' and 'hist_len')")
        self.query_fields = tuple(schema[f].key for f in self.behv_fields)
        self.max_len = schema.max_len
        self.embedding = FieldEmbedding(schema, d, hp["embed_init_std"])
        self.behv_dim = d * len(self.behv_fields)

        extra_dim = self._build()  # the model's own modules: the width they add to the MLP input
        self.mlp_in_dim = self.mid_dim + d * (len(self.item_fields) + len(self.user_fields)) + extra_dim
        self.mlp = GatedMLP(self.mlp_in_dim, hp["hidden"], gate_scale=hp["gate_scale"])

        self.bypass_gates = False
        if self.udg:
            udg_dim = int(hp["udg_dim"] or d)
            self.udg_dim = udg_dim
            # E^UDG: a separate user-id table (Eq. 5), initialised like the others.
            self.udg_embedding = nn.Embedding(schema.vocab_size("user_id"), udg_dim, padding_idx=0)
            std = hp["udg_init_std"] if hp["udg_init_std"] is not None else hp["embed_init_std"]
            init_embedding_(self.udg_embedding, std)
            if hp["gate_inputs"] == "paper":
                gate_in = d * len(self.item_fields) + self.behv_dim + udg_dim
            else:  # the authors' TF code: E^UDG[user_id] + the (fixed) profile embeddings
                gate_in = udg_dim + d * len(schema.profile_fields)
            self.gates = GatingNetworks(gate_in, self.mlp.in_dims, hp["gate_hidden"])
        else:
            self.udg_dim = 0
            self.udg_embedding = None
            self.gates = None

    # ---- construction helpers ----------------------------------------------------------------

    @classmethod
    def resolve_hparams(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """`COMMON_HPARAMS` ∪ `DEFAULTS` overridden by `hparams`; unknown names raise ModelError."""
        allowed = {**COMMON_HPARAMS, **cls.DEFAULTS}
        bad = sorted(set(hparams) - set(allowed))
        if bad:
            raise ModelError(f"{cls.name}: unknown hyper-parameter(s) {', '.join(map(repr, bad))} "
                             f"(valid: {', '.join(sorted(allowed))})")
        hp = {k: _plain(v) for k, v in {**allowed, **hparams}.items()}
        for k, v in hp.items():
            if isinstance(allowed[k], tuple) and _is_int(v):  # hidden=64: one layer
                hp[k] = v = [v]
            _check_hparam(cls.name, k, v, allowed[k])
        return hp

    def _build(self) -> int:
        """Create the model's own modules; set `self.mid_dim`; return the extra MLP-input width."""
        self.mid_dim = self.behv_dim
        return 0

    @property
    def config(self) -> dict:
        """Everything `udg_fast.models.build_from_config` needs: plain types only."""
        return {"model": self.name, "udg": self.udg, "hparams": dict(self.hparams), "schema": self.schema.to_dict()}

    # ---- input checks ------------------------------------------------------------------------

    def required_fields(self, training: bool = False) -> tuple[str, ...]:
        """The batch fields `forward` (and, with training=True, `loss`) reads."""
        req = self.user_fields + self.item_fields + tuple(f for f in self.history_fields if f in self.schema)
        if training:
            req = req + ("label",)
        return req

    def check_batch(self, batch: Mapping[str, torch.Tensor], training: bool = False, values: bool = True) -> None:
        """Raise ModelError naming the first field the model needs that `batch` lacks or holds in
        the wrong shape or dtype; with `values`, also a `hist_len` outside [0, T] (CPU tensors)."""
        if not isinstance(batch, Mapping):
            raise ModelError(f"{self.name}: a batch is a dict of tensors keyed by field name, got {type(batch).__name__}")
        fields = self.required_fields(training)
        missing = [f for f in fields if f not in batch]
        if missing:
            raise ModelError(f"{self.name}: the batch lacks field(s) {', '.join(map(repr, missing))} that the model "
                             f"needs (batch has: {', '.join(batch)})")
        # shapes (metadata only: no values are read, no device sync): [B] per sample, [B, T] per
        # history step, one B and one T, integer ids
        B = T = None
        for f in fields:
            t = batch[f]
            if not isinstance(t, torch.Tensor):
                raise ModelError(f"{self.name}: batch field {f!r} must be a torch.Tensor, got {type(t).__name__} "
                                 f"(model.score takes arrays too)")
            step = f in BEHAVIOUR_FIELDS or f in NEGATIVE_FIELDS.values()
            if t.dim() != (2 if step else 1):
                raise ModelError(f"{self.name}: batch field {f!r} must be {'[B, T]' if step else '[B]'}, got shape "
                                 f"{tuple(t.shape)}")
            if f != "label" and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
                raise ModelError(f"{self.name}: batch field {f!r} must hold integer ids, got {t.dtype}")
            if B is None:
                B, first = t.shape[0], f
            elif t.shape[0] != B:
                raise ModelError(f"{self.name}: batch fields {first!r} and {f!r} have {B} and {t.shape[0]} rows")
            if step:
                if T is None:
                    T, first_step = t.shape[1], f
                elif t.shape[1] != T:
                    raise ModelError(f"{self.name}: history fields {first_step!r} and {f!r} have {T} and {t.shape[1]} "
                                     f"steps")
        if B == 0:
            raise ModelError(f"{self.name}: the batch is empty (0 rows)")
        h = batch.get("hist_len")
        if (values and h is not None and T is not None and h.device.type == "cpu" and not torch.compiler.is_compiling()
                and ((h < 0) | (h > T)).any()):  # values: CPU only (no device sync), not while traced
            bad = h[(h < 0) | (h > T)][0].item()
            raise ModelError(f"{self.name}: hist_len must be in [0, T = {T}], got {bad} (model.score clamps it)")

    def inputs(self, batch: Mapping) -> dict[str, torch.Tensor]:
        """The fields the model reads, as tensors on its device (arrays and lists taken too): what
        `score` and `serving.export` feed the model. A non-dict or a missing field is a ModelError;
        shapes are checked by the callers (`check_batch(..., values=False)`)."""
        if not isinstance(batch, Mapping) or any(f not in batch for f in self.required_fields()):
            self.check_batch(batch)  # raises, naming the type or the missing fields
        dev = next(self.parameters()).device
        return {f: torch.as_tensor(batch[f]).to(dev) for f in self.required_fields()}

    def _index_error(self, batch, e: Exception) -> ModelError:
        """The ModelError for an embedding lookup that failed: the first field with an id outside
        its vocabulary (found only after the failure: valid batches pay nothing)."""
        for f in self.embedding.keys:
            if f in batch:
                v = self.schema.vocab_size(self.embedding.keys[f])
                t = batch[f]
                if t.numel() and (t.min() < 0 or t.max() >= v):
                    bad = t[(t < 0) | (t >= v)][0].item()
                    return ModelError(f"{self.name}: batch field {f!r} holds id {bad}, outside its vocabulary "
                                      f"[0, {v}) (model.score maps such ids to the padding id 0)")
        return ModelError(f"{self.name}: an embedding lookup failed ({e})")

    def sanitize(self, batch: Mapping[str, torch.Tensor]) -> dict:
        """A copy of `batch` whose ids outside a field's vocabulary (unknown users, new items) are
        the padding id 0, and `hist_len` clamped to [0, max_len]: serving never raises an index error."""
        out = dict(batch)
        for f in self.embedding.keys:
            if f in out:
                v = self.schema.vocab_size(self.embedding.keys[f])
                ids = torch.as_tensor(out[f])
                out[f] = torch.where((ids >= 0) & (ids < v), ids, torch.zeros_like(ids))
        if "hist_len" in out:
            T = out["hist_item"].shape[1] if "hist_item" in out else self.max_len
            out["hist_len"] = torch.as_tensor(out["hist_len"]).clamp(0, T)
        return out

    # ---- the embedding layer (Eq. 1) ----------------------------------------------------------

    def _stack(self, fields, batch) -> torch.Tensor:
        return torch.stack([self.embedding(f, batch[f]) for f in fields], 1)

    def embed(self, batch: Mapping[str, torch.Tensor]) -> Embedded:
        lengths = batch["hist_len"]
        T = batch["hist_item"].shape[1]
        mask = torch.arange(T, device=lengths.device) < lengths.unsqueeze(1)  # [B, T]
        steps = [self.embedding(f, batch[f]) for f in self.behv_fields]        # each [B, T, d]
        hist = torch.cat(steps, -1) if len(steps) > 1 else steps[0]
        w = mask.to(hist.dtype)
        if self.hparams["pooling"] == "mean":
            w = w / lengths.clamp_min(1).unsqueeze(1).to(hist.dtype)
        # masked pooling (Embedded.behv, on first use): padded steps get weight 0, whatever ids they hold
        item = self._stack(self.item_fields, batch)
        query = item[:, [self.item_fields.index(k) for k in self.query_fields]].flatten(1)
        return Embedded(user=self._stack(self.user_fields, batch), item=item, hist=hist, pool_w=w,
                        query=query, mask=mask, lengths=lengths)

    def embed_steps(self, batch, fields, index=None) -> torch.Tensor:
        """Concat of the embeddings of history-like `fields` (e.g. the negative history), optionally
        only at a boolean `index` `[B, T]` of steps → `[N, D_b]` (or `[B, T, D_b]`)."""
        parts = [self.embedding(f, batch[f] if index is None else batch[f][index]) for f in fields]
        return torch.cat(parts, -1) if len(parts) > 1 else parts[0]

    # ---- the model's own part -----------------------------------------------------------------

    def middle(self, e: Embedded, batch, aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The middle layer (Eq. 2) → (e_mid `[B, mid_dim]`, auxiliary loss or None).
        Default: the pooled history (the multi-hot behaviour feature)."""
        return e.behv_flat, None

    def extra_features(self, e: Embedded) -> list[torch.Tensor]:
        """Model-specific MLP inputs (PNN's products)."""
        return []

    def extra_logit(self, e: Embedded, batch) -> torch.Tensor | None:
        """Model-specific logit terms added to the MLP's (DeepFM's FM, W&D's wide part)."""
        return None

    # ---- UDG ---------------------------------------------------------------------------------

    def udg_user_embedding(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """E^UDG[user_id] `[B, udg_dim]` (the cold-start issue may replace it per sample through
        `forward(batch, udg_emb=...)`)."""
        if not self.udg:
            raise ModelError(f"{self.name}: not a UDG model (build it with udg=True)")
        return self.udg_embedding(batch["user_id"])

    def gate_input(self, e: Embedded, batch, udg_emb: torch.Tensor | None = None) -> torch.Tensor:
        """The gating networks' input u (Eq. 6)."""
        if udg_emb is None:
            udg_emb = self.udg_user_embedding(batch)
        elif udg_emb.shape != (e.item.shape[0], self.udg_dim):
            raise ModelError(f"{self.name}: udg_emb must be [B, udg_dim] = [{e.item.shape[0]}, {self.udg_dim}], "
                             f"got {tuple(udg_emb.shape)}")
        if self.hparams["gate_inputs"] == "paper":
            return torch.cat([e.item_flat, e.behv_flat, udg_emb], 1)
        n = len(self.schema.user_fields)
        profile = e.user[:, n:n + len(self.schema.profile_fields)].flatten(1).detach()  # held fixed, as the TF code
        return torch.cat([udg_emb, profile], 1)

    @property
    def gates_read_behv(self) -> bool:
        """Whether this forward's gates read e_behv (the UDG model, the paper's gate input, gates on):
        a middle layer that pools the history anyway can compute e_behv in the same pass
        (`Embedded.pool(w, with_behv=True)`)."""
        return self.udg and not self.bypass_gates and self.hparams["gate_inputs"] == "paper"

    def gate_logits(self, e: Embedded, batch, udg_emb=None) -> list[torch.Tensor] | None:
        """One `[B, K_l]` logit tensor per MLP layer, or None for the base model / bypassed gates."""
        if not self.udg or self.bypass_gates:
            return None
        return self.gates(self.gate_input(e, batch, udg_emb))

    @torch.no_grad()
    def init_new_users(self, user_ids, profiles=None, generator=None, *, trained_users=None,
                       seed: int | None = None) -> torch.Tensor:
        """Give users without a trained row their initial E^UDG row (the cold-start issue, Eq. 10–11).

        A user unseen in training has no (trained) row in E^UDG. With a `generator` (e.g.
        `udg_fast.coldstart.MetaGenerator`: `generator(profiles) → [n, udg_dim]`), the new users'
        rows become its output for their profiles; without one they are drawn again from the
        table's own initialisation N(0, std²) (`udg_init_std`, else `embed_init_std`) — what the
        table would have given them. Ids at or above the table size grow every user-id table of the
        model (E^UDG, the user-id embedding, the FM / wide user weights; new rows drawn from their
        initialisation) and the schema's `user_id` vocabulary, so `score` does not map them to the
        padding id. Only the rows of the ids written change (tested); a grown table is a new
        `nn.Parameter`, so create optimisers after this call.

        Args:
            user_ids: `[n]` ids ≥ 1 of the new users (no duplicates).
            profiles: `[n, F]` int ids of the users' profile fields in `schema.profile_fields`
                order (or a dict field → `[n]`); needed with a generator, ignored without.
            generator: a callable profiles → `[n, udg_dim]`, or None for the random initialisation.
            trained_users: ids that do have a trained row (e.g. the training set's users): these
                are skipped, never overwritten.
            seed: seeds the random rows (None: torch's global RNG).

        Returns:
            the ids whose row was written (`user_ids` without the `trained_users`), int64.
        """
        if not self.udg:
            raise ModelError(f"{self.name}: init_new_users needs a UDG model (build it with udg=True)")
        ids = torch.as_tensor(np.asarray(user_ids) if not isinstance(user_ids, torch.Tensor) else user_ids)
        if ids.numel() and (ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool):
            raise ModelError(f"{self.name}: init_new_users: user_ids must be integer ids, got {ids.dtype}")
        ids = ids.to(torch.long).reshape(-1).cpu()
        if ids.numel() and int(ids.min()) < 1:
            raise ModelError(f"{self.name}: init_new_users: user ids must be >= 1 (0 is padding), "
                             f"got {int(ids.min())}")
        if ids.unique().numel() != ids.numel():
            raise ModelError(f"{self.name}: init_new_users: user_ids has duplicates")
        keep = torch.ones_like(ids, dtype=torch.bool)
        if trained_users is not None:
            keep = ~torch.isin(ids, torch.as_tensor(trained_users, dtype=torch.long).reshape(-1).cpu())
        if generator is not None:
            if profiles is None:
                raise ModelError(f"{self.name}: init_new_users: a generator needs the users' profiles")
            if isinstance(profiles, Mapping):
                missing = [f for f in self.schema.profile_fields if f not in profiles]
                if missing:
                    raise ModelError(f"{self.name}: init_new_users: profiles lack field(s) {missing}")
                profiles = torch.stack([torch.as_tensor(profiles[f], dtype=torch.long).reshape(-1)
                                        for f in self.schema.profile_fields], 1)
            profiles = torch.as_tensor(np.asarray(profiles) if not isinstance(profiles, torch.Tensor) else profiles)
            if profiles.dtype.is_floating_point or profiles.dtype.is_complex or profiles.dtype == torch.bool:
                raise ModelError(f"{self.name}: init_new_users: profiles must hold integer ids, got {profiles.dtype}")
            profiles = profiles.to(torch.long)
            if profiles.dim() != 2 or profiles.shape[0] != ids.numel():
                raise ModelError(f"{self.name}: init_new_users: profiles must be [n, F] with n = {ids.numel()} "
                                 f"users, got {tuple(profiles.shape)}")
            profiles = profiles[keep]
        ids = ids[keep]
        if ids.numel() == 0:
            return ids
        need = int(ids.max()) + 1
        if need > self.udg_embedding.num_embeddings:
            owners = [m.tables["user_id"] for m in self.modules() if isinstance(m, FieldEmbedding)
                      and "user_id" in m.tables] + [self.udg_embedding]
            grow = (need - self.udg_embedding.num_embeddings) * sum(
                t.embedding_dim * t.weight.element_size() for t in owners)
            if grow > MAX_USER_GROWTH_BYTES:  # id 10**9 once grew the tables until the process was killed
                raise ModelError(f"{self.name}: init_new_users: user id {need - 1} would grow the user tables from "
                                 f"{self.udg_embedding.num_embeddings} to {need} rows ({grow / 2**30:.1f} GiB more); "
                                 f"map external ids to dense ones first (ids are table rows)")
            self._grow_user_tables(need, seed)
        table = self.udg_embedding.weight
        if generator is not None:
            rows = generator(profiles.to(table.device))
            if tuple(rows.shape) != (ids.numel(), self.udg_dim):
                raise ModelError(f"{self.name}: init_new_users: the generator returned {tuple(rows.shape)}, "
                                 f"expected [{ids.numel()}, {self.udg_dim}]")
        else:
            g = torch.Generator().manual_seed(seed) if seed is not None else None
            rows = torch.randn(ids.numel(), self.udg_dim, generator=g) * self._udg_std()
        table[ids.to(table.device)] = rows.to(table.dtype).to(table.device)
        return ids

    def _udg_std(self) -> float:
        hp = self.hparams
        return float(hp["udg_init_std"] if hp["udg_init_std"] is not None else hp["embed_init_std"])

    @torch.no_grad()
    def _grow_user_tables(self, n_rows: int, seed: int | None = None) -> None:
        """Grow every user-id table to `n_rows` rows (new rows from the table's initialisation) and
        the schema's `user_id` vocabulary with it."""
        g = torch.Generator().manual_seed(seed + 1) if seed is not None else None

        def grown(old: nn.Embedding, std: float) -> nn.Embedding:
            new = nn.Embedding(n_rows, old.embedding_dim, padding_idx=old.padding_idx,
                               device=old.weight.device, dtype=old.weight.dtype)
            extra = torch.randn(n_rows - old.num_embeddings, old.embedding_dim, generator=g) * std
            new.weight.copy_(torch.cat([old.weight.detach().cpu(), extra.to(old.weight.dtype)]))
            new.weight.requires_grad_(old.weight.requires_grad)
            return new

        std = float(self.hparams["embed_init_std"])
        owners = [m for m in self.modules() if isinstance(m, FieldEmbedding) and "user_id" in m.tables]
        for m in owners:  # the embedding layer and DeepFM's / W&D's first-order weights
            m.tables["user_id"] = grown(m.tables["user_id"], std)
        self.udg_embedding = grown(self.udg_embedding, self._udg_std())
        fields = [replace(f, vocab_size=n_rows) if f.name == "user_id" else f for f in self.schema]
        self.schema = Schema(fields, max_len=self.schema.max_len)

    @contextlib.contextmanager
    def gates_bypassed(self):
        """Within the block the gates are skipped (g ≡ 1): the UDG model computes its base model."""
        old, self.bypass_gates = self.bypass_gates, True
        try:
            yield self
        finally:
            self.bypass_gates = old

    # ---- forward, loss, score -----------------------------------------------------------------

    def _forward(self, batch, udg_emb, aux: bool):
        e = self.embed(batch)
        mid, aux_loss = self.middle(e, batch, aux)
        x = torch.cat([mid, e.item_flat, e.user_flat, *self.extra_features(e)], 1)
        logit = self.mlp(x, self.gate_logits(e, batch, udg_emb)).squeeze(-1)
        extra = self.extra_logit(e, batch)
        if extra is not None:
            logit = logit + extra
        return logit, aux_loss

    def _checked_forward(self, batch, udg_emb, aux: bool):
        try:
            return self._forward(batch, udg_emb, aux)
        except IndexError as e:  # an id outside its table (embedding lookups raise IndexError)
            raise self._index_error(batch, e) from e

    def forward(self, batch: Mapping[str, torch.Tensor], udg_emb: torch.Tensor | None = None) -> torch.Tensor:
        """batch: dict of `[B]` / `[B, T]` tensors (a `Split.batches` item) → logits `[B]`."""
        self.check_batch(batch)
        return self._checked_forward(batch, udg_emb, aux=False)[0]

    def loss(self, batch: Mapping[str, torch.Tensor], udg_emb: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, logits `[B]`): binary cross-entropy with logits (the paper's 2-way softmax
        CE), + the model's auxiliary loss (DIEN, in training mode) + the embedding L2 penalty."""
        self.check_batch(batch, training=True)
        logits, aux = self._checked_forward(batch, udg_emb, aux=self.training)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())
        if aux is not None:
            loss = loss + aux
        l2 = self.hparams["l2_embedding"]
        if l2:
            tables = list(self.embedding.tables.values())
            if self.udg:
                tables.append(self.udg_embedding)
            loss = loss + l2 * sum(t.weight.pow(2).sum() for t in tables)
        return loss, logits

    def probabilities(self, batch: Mapping[str, torch.Tensor], udg_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Click probabilities `[B]` (float32), ids outside a field's vocabulary mapped to the padding
        id 0 (`sanitize`): what `score` computes, without its mode, gradient and device handling (the
        module `serving.export` traces)."""
        return torch.sigmoid(self._forward(self.sanitize(batch), udg_emb, aux=False)[0].float())

    @torch.no_grad()
    def score(self, batch: Mapping[str, torch.Tensor], udg_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Click probabilities `[B]` (float32) for inference: eval mode, no gradients; ids outside a
        field's vocabulary (e.g. an unknown user) are mapped to the padding id 0."""
        b = self.inputs(batch)
        if b["user_id"].dim() and b["user_id"].shape[0] == 0:
            return torch.zeros(0, device=b["user_id"].device)  # no rows, no scores
        self.check_batch(b, values=False)  # probabilities() maps unknown ids and clamps hist_len
        was = self.training
        self.eval()
        try:
            return self.probabilities(b, udg_emb)
        finally:
            self.train(was)

    def extra_repr(self) -> str:
        return f"udg={self.udg}, embed_dim={self.embed_dim}, hidden={tuple(self.hparams['hidden'])}"
