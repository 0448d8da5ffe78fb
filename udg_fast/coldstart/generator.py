"""The meta-embedding generator of the UDG paper's cold-start section (Eq. 10–11).

    ê_u = f_meta(x_prof) = tanh(W_meta · x_prof + b_meta)                           (Eq. 11)

`x_prof` is the one-hot encoding of the user's profile fields (the schema's `profile_fields`,
one block of `vocab_size` entries per field, id 0 = unknown included), so `W_meta · x_prof` is the
sum of one column per field: the generator is a per-field table plus a bias, under a tanh.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from udg_fast.data import Dataset, Schema, Split


class ColdStartError(ValueError):
    """Bad input to the cold-start study or the generator (a dataset without profile fields, a
    non-UDG model, thresholds that leave no users, an unknown option). The message names it."""


def require_profiles(schema: Schema, dataset_name: str = "the dataset") -> tuple[str, ...]:
    """The schema's profile fields; raise ColdStartError when there are none (meta-learned initial
    embeddings read the user's profile, Eq. 11)."""
    fields = tuple(schema.profile_fields)
    if not fields:
        raise ColdStartError(
            f"{dataset_name} has no user-profile fields (its schema has no field of role 'profile'), so a "
            f"meta-learned initial UDG embedding (Eq. 11: f_meta(x_prof)) has nothing to read; use a dataset "
            f"with user profiles (ml-100k, ml-1m, alimama, synthetic) or the random initialisation only")
    return fields


class MetaGenerator(nn.Module):
    """f_meta (Eq. 11): one-hot profile → tanh(W_meta x_prof + b_meta) `[n, out_dim]`.

    Args:
        schema: the dataset's schema; its `profile_fields` (and their vocabulary sizes) are read.
        out_dim: the UDG embedding size (`model.udg_dim`).
        init_std: W_meta starts at N(0, init_std²) and b_meta at 0, so a fresh generator outputs
            vectors of the size of E^UDG's own initialisation (0.01 by default), not ±1.

    Call `generator(profiles)` with `profiles` `[n, F]` int64 (the profile ids in
    `schema.profile_fields` order) or a dict field → `[n]`; ids outside a field's vocabulary
    are the unknown id 0, as `CTRModel.score` treats them.

    Example:
        >>> gen = MetaGenerator.for_model(model)
        >>> e0 = gen(torch.tensor([[3, 1, 5]]))           # age, gender, occupation → [1, udg_dim]
    """

    def __init__(self, schema: Schema, out_dim: int, init_std: float = 0.01):
        super().__init__()
        self.fields = require_profiles(schema)
        self.vocab = tuple(int(schema.vocab_size(f)) for f in self.fields)
        self.out_dim = int(out_dim)
        if self.out_dim < 1:
            raise ColdStartError(f"MetaGenerator: out_dim must be a positive int, got {out_dim!r}")
        self.register_buffer("offsets", torch.tensor(np.concatenate([[0], np.cumsum(self.vocab)[:-1]]),
                                                     dtype=torch.long), persistent=False)
        self.in_dim = int(sum(self.vocab))
        self.linear = nn.Linear(self.in_dim, self.out_dim)   # W_meta, b_meta
        nn.init.normal_(self.linear.weight, 0.0, init_std)
        nn.init.zeros_(self.linear.bias)

    @classmethod
    def for_model(cls, model, init_std: float = 0.01) -> "MetaGenerator":
        """A generator for `model` (a UDG `CTRModel`): its schema's profile fields → `model.udg_dim`."""
        if not getattr(model, "udg", False):
            raise ColdStartError(f"{getattr(model, 'name', type(model).__name__)}: the generator initialises "
                                 f"E^UDG, so the model must be a UDG model (build it with udg=True)")
        return cls(model.schema, model.udg_dim, init_std)

    @property
    def config(self) -> dict:
        return {"fields": list(self.fields), "vocab": list(self.vocab), "out_dim": self.out_dim}

    def as_matrix(self, profiles) -> torch.Tensor:
        """`profiles` (`[n, F]` or a dict field → `[n]`) as an `[n, F]` int64 tensor on the
        generator's device, ids outside a field's vocabulary → 0."""
        if isinstance(profiles, Mapping):
            missing = [f for f in self.fields if f not in profiles]
            if missing:
                raise ColdStartError(f"MetaGenerator: profiles lack field(s) {missing} (needs {list(self.fields)})")
            profiles = torch.stack([torch.as_tensor(profiles[f]).reshape(-1) for f in self.fields], 1)
        p = torch.as_tensor(profiles, device=self.offsets.device).long()
        if p.dim() != 2 or p.shape[1] != len(self.fields):
            raise ColdStartError(f"MetaGenerator: profiles must be [n, {len(self.fields)}] "
                                 f"({', '.join(self.fields)}), got {tuple(p.shape)}")
        vocab = torch.tensor(self.vocab, device=p.device)
        return torch.where((p >= 0) & (p < vocab), p, torch.zeros_like(p))

    def one_hot(self, profiles) -> torch.Tensor:
        """x_prof `[n, in_dim]` (float): one 1 per field block."""
        p = self.as_matrix(profiles)
        x = torch.zeros(p.shape[0], self.in_dim, device=p.device, dtype=self.linear.weight.dtype)
        return x.scatter_(1, p + self.offsets, 1.0)

    def forward(self, profiles) -> torch.Tensor:
        """ê `[n, out_dim]` = tanh(W_meta x_prof + b_meta) (Eq. 11)."""
        return torch.tanh(self.linear(self.one_hot(profiles)))


def user_profiles(data: Dataset | Split | list, schema: Schema) -> torch.Tensor:
    """The profile of every user id: `[vocab_size(user_id), F]` int64 (row u = user u's profile ids
    in `schema.profile_fields` order; 0 for ids with no sample), read from the samples of `data`
    (a Dataset: all three splits; a Split or a list of Splits). A user's profile is the same in
    every sample, so any sample gives it."""
    fields = require_profiles(schema)
    splits = list(data.splits.values()) if isinstance(data, Dataset) else (
        list(data) if isinstance(data, (list, tuple)) else [data])
    table = np.zeros((schema.vocab_size("user_id"), len(fields)), np.int64)
    for s in splits:
        if len(s) == 0:
            continue
        table[np.asarray(s["user_id"])] = np.stack([np.asarray(s[f]) for f in fields], 1)
    return torch.from_numpy(table)
