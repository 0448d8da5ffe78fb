"""The sample format shared by every dataset, and the vectorised pipeline that builds it.

A prepared dataset is a :class:`Dataset` with three :class:`Split` s (``train``, ``valid``,
``test``) of columnar numpy arrays and a :class:`Schema` that says, for every field, its role and
vocabulary size. Field names and dtypes (``N`` samples, ``L = max_len``):

=================  ===========  =========  ==================================================
field              shape        dtype      meaning
=================  ===========  =========  ==================================================
``user_id``        ``[N]``      int64      user id, 1..U (0 = padding / unknown)
``item_id``        ``[N]``      int64      target item id, 1..I
``item_cat``       ``[N]``      int64      target item's category, 1..C (0 = unknown)
profile fields     ``[N]``      int64      one column per user-profile field (schema)
``hist_item``      ``[N, L]``   int64      the user's earlier clicks, oldest first, most
                                           recent at ``hist_len - 1``, zero-padded on the right
``hist_cat``       ``[N, L]``   int64      their categories
``hist_len``       ``[N]``      int64      number of valid history steps (0..L)
``neg_hist_item``  ``[N, L]``   int64      one non-clicked item per history step (0 at padding)
``neg_hist_cat``   ``[N, L]``   int64      its category
``label``          ``[N]``      float32    1.0 click / positive, 0.0 otherwise
``timestamp``      ``[N]``      int64      event time (seconds)
=================  ===========  =========  ==================================================

Every array is C-contiguous, so ``torch.from_numpy`` wraps it without a copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

PAD = 0
ROLES = ("user", "item", "profile", "context", "history", "label", "meta")
SPLITS = ("train", "valid", "test")
HISTORY_FIELDS = ("hist_item", "hist_cat", "neg_hist_item", "neg_hist_cat")


class DataError(ValueError):
    """Bad input: a missing file, a wrong column, a malformed line, an unknown name or option.

    The message names the file (and line) or the option at fault.
    """


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One column of the sample format.

    Args:
        name: the key under which the split stores the column.
        role: one of ``user``, ``item``, ``profile``, ``context``, ``history``, ``label``, ``meta``.
        vocab_size: for id fields, the number of ids *including* the padding id 0 (size an
            ``nn.Embedding`` with it); ``None`` for non-categorical fields (label, timestamp,
            hist_len).
        shape: per-sample shape, ``()`` or ``(max_len,)``.
        dtype: numpy dtype name.
        key: for history fields, the sample field whose ids they hold (and whose embedding table
            they should share): ``hist_item -> item_id``, ``hist_cat -> item_cat``.
    """

    name: str
    role: str
    vocab_size: int | None = None
    shape: tuple[int, ...] = ()
    dtype: str = "int64"
    key: str | None = None
    description: str = ""

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"field {self.name!r}: unknown role {self.role!r} (roles: {ROLES})")

    @property
    def categorical(self) -> bool:
        return self.vocab_size is not None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "role": self.role,
            "vocab_size": self.vocab_size,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "key": self.key,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "Field":
        return cls(
            name=d["name"],
            role=d["role"],
            vocab_size=d.get("vocab_size"),
            shape=tuple(d.get("shape", ())),
            dtype=d.get("dtype", "int64"),
            key=d.get("key"),
            description=d.get("description", ""),
        )


class Schema:
    """The fields of a dataset, their roles and vocabulary sizes.

    Example:
        >>> ds = udg_fast.data.load("synthetic")
        >>> ds.schema.profile_fields
        ('age', 'gender', 'occupation')
        >>> ds.schema.vocab_size("item_id")      # includes the padding id 0
        1001
    """

    def __init__(self, fields: Iterable[Field], max_len: int):
        self.fields: tuple[Field, ...] = tuple(fields)
        self.max_len = int(max_len)
        self._by_name = {f.name: f for f in self.fields}
        if len(self._by_name) != len(self.fields):
            raise ValueError("duplicate field names in schema")

    # mapping-like access
    def __getitem__(self, name: str) -> Field:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no field {name!r} in schema (fields: {', '.join(self.names)})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.to_dict() == other.to_dict()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def vocab_size(self, name: str) -> int:
        v = self[name].vocab_size
        if v is None:
            raise KeyError(f"field {name!r} is not categorical")
        return v

    def by_role(self, role: str) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.role == role)

    @property
    def user_fields(self) -> tuple[str, ...]:
        """``('user_id',)``."""
        return self.by_role("user")

    @property
    def item_fields(self) -> tuple[str, ...]:
        """Target-item fields: ``item_id``, ``item_cat`` and any dataset-specific ad fields."""
        return self.by_role("item")

    @property
    def profile_fields(self) -> tuple[str, ...]:
        """User-profile fields (what the cold-start study may use for a new user)."""
        return self.by_role("profile")

    @property
    def context_fields(self) -> tuple[str, ...]:
        return self.by_role("context")

    @property
    def history_fields(self) -> tuple[str, ...]:
        """``hist_item``, ``hist_cat``, ``neg_hist_item``, ``neg_hist_cat`` and ``hist_len``."""
        return self.by_role("history")

    @property
    def sparse_fields(self) -> tuple[str, ...]:
        """Every per-sample categorical ``[N]`` field (user, item, profile, context)."""
        return tuple(
            f.name
            for f in self.fields
            if f.categorical and f.shape == () and f.role in ("user", "item", "profile", "context")
        )

    def to_dict(self) -> dict:
        return {"max_len": self.max_len, "fields": [f.to_dict() for f in self.fields]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Schema":
        return cls((Field.from_dict(f) for f in d["fields"]), max_len=d["max_len"])

    def __repr__(self) -> str:
        rows = [f"Schema(max_len={self.max_len})"]
        for f in self.fields:
            shape = f"[N, {f.shape[0]}]" if f.shape else "[N]"
            vocab = "" if f.vocab_size is None else f" vocab={f.vocab_size}"
            key = f" -> {f.key}" if f.key else ""
            rows.append(f"  {f.name:<24} {f.role:<8} {shape:<9} {f.dtype}{vocab}{key}")
        return "\n".join(rows)


def standard_fields(
    *,
    n_users: int,
    n_items: int,
    n_cats: int,
    profile: Mapping[str, int],
    max_len: int,
    item_extra: Mapping[str, int] | None = None,
    context: Mapping[str, int] | None = None,
    meta_extra: Sequence[Field] = (),
) -> Schema:
    """The schema every dataset shares; ``profile``/``item_extra``/``context`` map name -> vocab."""
    L = (int(max_len),)
    fields = [
        Field("user_id", "user", n_users + 1, description="user id"),
        Field("item_id", "item", n_items + 1, description="target item id"),
        Field("item_cat", "item", n_cats + 1, description="target item category"),
    ]
    fields += [Field(k, "item", v) for k, v in (item_extra or {}).items()]
    fields += [Field(k, "profile", v, description="user profile") for k, v in profile.items()]
    fields += [Field(k, "context", v) for k, v in (context or {}).items()]
    fields += [
        Field("hist_item", "history", n_items + 1, L, key="item_id",
              description="earlier clicks, oldest first, zero-padded on the right"),
        Field("hist_cat", "history", n_cats + 1, L, key="item_cat"),
        Field("neg_hist_item", "history", n_items + 1, L, key="item_id",
              description="one non-clicked item per history step"),
        Field("neg_hist_cat", "history", n_cats + 1, L, key="item_cat"),
        Field("hist_len", "history", None, description="valid history steps, 0..max_len"),
        Field("label", "label", None, dtype="float32"),
        Field("timestamp", "meta", None, description="event time, seconds"),
    ]
    fields += list(meta_extra)
    return Schema(fields, max_len=max_len)


# --------------------------------------------------------------------------------------------
# Splits and the dataset
# --------------------------------------------------------------------------------------------


class Split:
    """One split: a dict of equally long, C-contiguous numpy columns.

    ``split["hist_item"]`` is the ``[N, L]`` array, ``len(split)`` is N. :meth:`to_torch` wraps
    the columns as tensors without copying; :meth:`batches` yields dicts of tensors.
    """

    def __init__(self, name: str, arrays: Mapping[str, np.ndarray]):
        self.name = name
        self.arrays: dict[str, np.ndarray] = {}
        n = None
        for k, a in arrays.items():
            a = np.ascontiguousarray(a)
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise ValueError(f"split {name!r}: field {k!r} has {a.shape[0]} rows, expected {n}")
            self.arrays[k] = a
        self._n = int(n or 0)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(f"split {self.name!r} has no field {name!r} (fields: {', '.join(self.arrays)})") from None

    def __contains__(self, name: object) -> bool:
        return name in self.arrays

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.arrays)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def __repr__(self) -> str:
        return f"Split({self.name!r}, {self._n} samples, {len(self.arrays)} fields)"

    def to_torch(self, device=None, fields: Sequence[str] | None = None) -> dict:
        """The columns as a dict of tensors (``torch.from_numpy``: shared memory, no copy on CPU)."""
        import torch

        out = {}
        for k in fields or self.arrays:
            t = torch.from_numpy(self[k])
            out[k] = t if device is None else t.to(device)
        return out

    def select(self, index) -> "Split":
        """A new split holding the rows ``index`` (integer indices or a boolean mask)."""
        return Split(self.name, {k: a[index] for k, a in self.arrays.items()})

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return self._n // batch_size if drop_last else math.ceil(self._n / batch_size)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        device=None,
        fields: Sequence[str] | None = None,
    ) -> Iterator[dict]:
        """Minibatches as dicts of tensors keyed by field name.

        Without shuffling, batches are views of the columns (no copy). With ``shuffle=True`` the
        order is a permutation drawn from ``numpy.random.default_rng(seed)``: pass the epoch
        number in ``seed`` for a new, reproducible order every epoch.
        """
        import torch

        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        cols = self.to_torch(fields=fields)
        n = self._n
        stop = n - n % batch_size if drop_last else n
        perm = None
        if shuffle:
            perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
        for s in range(0, stop, batch_size):
            e = min(s + batch_size, n)
            if perm is None:
                batch = {k: t[s:e] for k, t in cols.items()}
            else:
                idx = perm[s:e]
                batch = {k: t.index_select(0, idx) for k, t in cols.items()}
            if device is not None:
                batch = {k: t.to(device, non_blocking=True) for k, t in batch.items()}
            yield batch


@dataclass
class Dataset:
    """A prepared dataset: ``train`` / ``valid`` / ``test`` splits, the schema and statistics.

    ``vocab[field]`` holds the raw values behind a field's ids where the source has them: id
    ``k > 0`` stands for ``vocab[field][k - 1]`` (e.g. the MovieLens user id, the Amazon asin, the
    genre name).
    """

    name: str
    schema: Schema
    train: Split
    valid: Split
    test: Split
    stats: dict = dc_field(default_factory=dict)
    meta: dict = dc_field(default_factory=dict)
    vocab: dict = dc_field(default_factory=dict)

    def raw(self, field: str, ids) -> np.ndarray:
        """The raw values of ``ids`` of ``field`` (id 0, padding / unknown, is not allowed)."""
        ids = np.asarray(ids)
        if (ids <= 0).any():
            raise ValueError(f"{field}: id 0 is padding / unknown and has no raw value")
        return self.vocab[field][ids - 1]

    @property
    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "valid": self.valid, "test": self.test}

    def __getitem__(self, split: str) -> Split:
        try:
            return self.splits[split]
        except KeyError:
            raise KeyError(f"no split {split!r} (splits: train, valid, test)") from None

    def summary(self) -> str:
        return format_stats(self.name, self.stats)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train)}, valid={len(self.valid)}, "
            f"test={len(self.test)}, fields={len(self.schema)})"
        )


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def split_stats(split: Split) -> dict:
    n = len(split)
    return {
        "samples": n,
        "users": int(unique(split["user_id"]).size) if n else 0,
        "positive_rate": float(split["label"].mean(dtype=np.float64)) if n else float("nan"),
        "mean_hist_len": float(split["hist_len"].mean()) if n else float("nan"),
    }


def compute_stats(splits: Mapping[str, Split], schema: Schema, extra: Mapping | None = None) -> dict:
    per = {k: split_stats(s) for k, s in splits.items()}
    users = unique(np.concatenate([s["user_id"] for s in splits.values()])) if splits else []
    items = unique(np.concatenate([s["item_id"] for s in splits.values()])) if splits else []
    total = sum(v["samples"] for v in per.values())
    pos = sum(v["positive_rate"] * v["samples"] for v in per.values() if v["samples"])
    hl = sum(v["mean_hist_len"] * v["samples"] for v in per.values() if v["samples"])
    stats = {
        "users": int(len(users)),
        "items": int(len(items)),
        "user_vocab": schema.vocab_size("user_id"),
        "item_vocab": schema.vocab_size("item_id"),
        "cat_vocab": schema.vocab_size("item_cat"),
        "max_len": schema.max_len,
        "samples": total,
        "positive_rate": pos / total if total else float("nan"),
        "mean_hist_len": hl / total if total else float("nan"),
        "splits": per,
    }
    if extra:
        stats.update(extra)
    return stats


def format_stats(name: str, stats: Mapping) -> str:
    lines = [f"dataset {name}"]
    head = [
        ("users", stats.get("users")),
        ("items", stats.get("items")),
        ("interactions", stats.get("interactions")),
        ("samples", stats.get("samples")),
        ("positive rate", _fmt(stats.get("positive_rate"))),
        ("mean history length", _fmt(stats.get("mean_hist_len"))),
        ("max_len", stats.get("max_len")),
    ]
    for k, v in head:
        if v is not None:
            lines.append(f"  {k:<20} {v}")
    per = stats.get("splits", {})
    if per:
        lines.append(f"  {'split':<8} {'samples':>10} {'users':>8} {'pos rate':>9} {'mean hist':>10}")
        for k in SPLITS:
            if k in per:
                v = per[k]
                lines.append(
                    f"  {k:<8} {v['samples']:>10} {v['users']:>8} {_fmt(v['positive_rate']):>9}"
                    f" {_fmt(v['mean_hist_len'], 2):>10}"
                )
    for k in ("prepare_seconds", "dropped_rows", "note"):
        if k in stats:
            lines.append(f"  {k:<20} {stats[k]}")
    return "\n".join(lines)


def _fmt(x, digits: int = 4):
    if x is None:
        return None
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


# --------------------------------------------------------------------------------------------
# Vectorised building blocks
# --------------------------------------------------------------------------------------------


def rng_for(seed: int, purpose: int) -> np.random.Generator:
    """An independent, reproducible stream per (seed, purpose)."""
    return np.random.default_rng([int(seed), int(purpose)])


def unique(values: np.ndarray, return_inverse: bool = False):
    """``np.unique`` by sorting (numpy 2.4's hash-based unique takes ~3 s for 1M wide int64s)."""
    values = np.asarray(values)
    if values.dtype == object or len(values) == 0:
        return np.unique(values, return_inverse=return_inverse)
    order = np.argsort(values, kind="stable")
    s = values[order]
    new = np.empty(len(s), bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    vocab = s[new]
    if not return_inverse:
        return vocab
    inv = np.empty(len(values), np.int64)
    inv[order] = np.cumsum(new) - 1
    return vocab, inv


def encode(values: np.ndarray, vocab: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Map raw values to dense ids 1..K in sorted order of ``vocab`` (default: the unique values).

    Returns ``(ids, vocab)``; values absent from ``vocab`` get id 0.
    """
    if vocab is None:
        vocab, inv = unique(values, return_inverse=True)
        return (inv.reshape(-1) + 1).astype(np.int64), vocab
    pos = np.searchsorted(vocab, values)
    pos = np.clip(pos, 0, max(len(vocab) - 1, 0))
    hit = vocab[pos] == values if len(vocab) else np.zeros(len(values), bool)
    return np.where(hit, pos + 1, 0).astype(np.int64), vocab


def isin_sorted(x: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(x.shape, bool)
    pos = np.searchsorted(sorted_keys, x)
    np.clip(pos, 0, len(sorted_keys) - 1, out=pos)
    return sorted_keys[pos] == x


def sample_unclicked(
    users: np.ndarray,
    n_items: int,
    clicked_keys: np.ndarray,
    rng: np.random.Generator,
    candidates: np.ndarray | None = None,
    max_rounds: int = 50,
) -> np.ndarray:
    """For each entry of ``users``, one item drawn uniformly from those the user never clicked.

    ``clicked_keys`` is the sorted array ``user * (n_items + 1) + item`` of clicked pairs.
    Items are drawn from ``candidates`` (default ``1..n_items``); collisions are rejected and
    redrawn, vectorised. Users whose clicks cover nearly every candidate fall back to an exact
    draw from their complement; a user who clicked every candidate gets 0 (padding).
    """
    users = np.asarray(users, np.int64)
    n = len(users)
    out = np.zeros(n, np.int64)
    if n == 0 or n_items == 0:
        return out
    base = np.int64(n_items + 1)
    cand = candidates if candidates is not None else None

    def draw(k):
        if cand is None:
            return rng.integers(1, n_items + 1, size=k, dtype=np.int64)
        return cand[rng.integers(0, len(cand), size=k)]

    todo = np.arange(n)
    for _ in range(max_rounds):
        out[todo] = draw(len(todo))
        bad = isin_sorted(users[todo] * base + out[todo], clicked_keys)
        todo = todo[bad]
        if len(todo) == 0:
            return out
    # exact fallback for the few users left (those who clicked nearly everything)
    pool = cand if cand is not None else np.arange(1, n_items + 1, dtype=np.int64)
    for u in np.unique(users[todo]):
        rows = todo[users[todo] == u]
        lo, hi = np.searchsorted(clicked_keys, [u * base, (u + 1) * base])
        mine = clicked_keys[lo:hi] - u * base
        comp = np.setdiff1d(pool, mine)
        out[rows] = rng.choice(comp, size=len(rows)) if len(comp) else PAD
    return out


def chronological_split(user: np.ndarray, event_new: np.ndarray | None = None) -> np.ndarray:
    """Split code per row (0 train, 1 valid, 2 test); rows sorted by user, then time.

    A user with ``n`` events gives ``floor(n/10)`` events to test (the last ones),
    ``floor(n/10)`` to valid (just before) and the rest (>= 80%) to train; rows of one event
    (``event_new`` is False on continuation rows) share a split.
    """
    n = len(user)
    if n == 0:
        return np.zeros(0, np.int8)
    new_user = np.ones(n, bool)
    new_user[1:] = user[1:] != user[:-1]
    ev = np.ones(n, bool) if event_new is None else (event_new | new_user)
    cum = np.cumsum(ev)  # 1-based event counter
    ustart = np.flatnonzero(new_user)
    ucount = np.diff(np.append(ustart, n))
    base = np.repeat(cum[ustart] - 1, ucount)
    rank = cum - 1 - base  # 0-based event rank within the user
    uend = np.append(ustart[1:], n) - 1
    n_ev = np.repeat(cum[uend] - cum[ustart] + 1, ucount)
    n_hold = n_ev // 10
    n_train = n_ev - 2 * n_hold
    code = np.where(rank < n_train, 0, np.where(rank < n_train + n_hold, 1, 2)).astype(np.int8)
    return code


def history_bounds(user: np.ndarray, ts: np.ndarray, label: np.ndarray, max_len: int):
    """Where each row's history lies in the list of positive rows.

    Rows must be sorted by (user, timestamp, tie order). The history of row i is the user's
    positive rows with timestamp strictly earlier than row i's; of these, the last ``max_len``.
    Returns ``(end, hist_len, pos_rows)``: the history is ``pos_rows[end - hist_len : end]``.
    """
    n = len(user)
    pos_rows = np.flatnonzero(label > 0)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), pos_rows
    new_user = np.ones(n, bool)
    new_user[1:] = user[1:] != user[:-1]
    new_group = new_user.copy()
    new_group[1:] |= ts[1:] != ts[:-1]
    ar = np.arange(n)
    gstart = np.maximum.accumulate(np.where(new_group, ar, 0))
    ustart = np.maximum.accumulate(np.where(new_user, ar, 0))
    cp = np.zeros(n + 1, np.int64)
    np.cumsum(label > 0, out=cp[1:])
    end = cp[gstart]
    hist_len = np.minimum(end - cp[ustart], max_len).astype(np.int64)
    return end, hist_len, pos_rows


def fill_history(
    end: np.ndarray,
    hist_len: np.ndarray,
    sources: Sequence[np.ndarray],
    max_len: int,
    chunk: int = 1 << 15,
    progress: Callable | None = None,
) -> list[np.ndarray]:
    """Gather ``[N, L]`` history matrices: row i is ``src[end[i]-hist_len[i] : end[i]]``, padded
    on the right with 0. ``sources`` are 1-D arrays over the positive list; chunked so the
    temporary index matrix stays small."""
    n = len(end)
    L = int(max_len)
    padded = [np.concatenate([np.zeros(1, np.int64), np.asarray(s, np.int64)]) for s in sources]
    outs = [np.zeros((n, L), np.int64) for _ in sources]
    ar = np.arange(L, dtype=np.int64)
    it = range(0, n, chunk)
    if progress is not None:
        it = progress(it, total=math.ceil(n / chunk), desc="history", unit="chunk")
    for s in it:
        e = end[s : s + chunk]
        h = hist_len[s : s + chunk]
        idx = (e - h + 1)[:, None] + ar[None, :]  # +1: index 0 of `padded` is the pad value
        idx[ar[None, :] >= h[:, None]] = 0
        for src, out in zip(padded, outs):
            np.take(src, idx, out=out[s : s + chunk], mode="wrap")  # indices are in range
    return outs


def build_interaction_splits(
    *,
    user: np.ndarray,
    item: np.ndarray,
    label: np.ndarray,
    timestamp: np.ndarray,
    item_cat: np.ndarray,
    n_items: int,
    clicked_user: np.ndarray,
    clicked_item: np.ndarray,
    max_len: int,
    seed: int,
    user_columns: Mapping[str, np.ndarray] | None = None,
    event: np.ndarray | None = None,
    extra_columns: Mapping[str, np.ndarray] | None = None,
    progress: Callable | None = None,
) -> dict[str, Split]:
    """Turn an interaction table (one row per sample, source order) into the three splits.

    Args:
        user, item: dense ids (1-based) per row; ``item_cat[item]`` is the item's category.
        label: 0/1 per row; the history of a row is the same user's label-1 rows with a strictly
            earlier timestamp (the last ``max_len`` of them).
        timestamp: int64 per row.
        clicked_user, clicked_item: the pairs a negative must avoid ("clicked").
        user_columns: profile columns indexed by user id (``col[user]`` is gathered per row).
        event: rows with equal ``event`` (adjacent after sorting) stay in one split, e.g. a
            review and its sampled negative.
        extra_columns: further per-row columns carried along (e.g. ``oracle_logit``).

    Rows are ordered by (user, timestamp, source row order) -- ties keep the order of the input
    -- and the output of each split keeps that order.
    """
    user = np.asarray(user, np.int64)
    timestamp = np.asarray(timestamp, np.int64)
    order = np.lexsort((timestamp, user))  # stable: ties keep the input (source) order
    u = user[order]
    t = timestamp[order]
    it = np.asarray(item, np.int64)[order]
    y = np.asarray(label)[order].astype(np.float32)
    ev_new = None
    if event is not None:
        ev = np.asarray(event)[order]
        ev_new = np.ones(len(ev), bool)
        ev_new[1:] = ev[1:] != ev[:-1]

    code = chronological_split(u, ev_new)
    end, hist_len, pos_rows = history_bounds(u, t, y, max_len)

    # one sampled non-clicked item per positive event; a history step carries its event's one
    keys = unique(np.asarray(clicked_user, np.int64) * (n_items + 1) + np.asarray(clicked_item, np.int64))
    neg = sample_unclicked(u[pos_rows], n_items, keys, rng_for(seed, 1))
    pos_item = it[pos_rows]
    item_cat = np.asarray(item_cat, np.int64)

    # split-major row order: each split is a contiguous slice of every column
    perm = np.argsort(code, kind="stable")
    counts = np.bincount(code, minlength=3)
    cols: dict[str, np.ndarray] = {"user_id": u[perm], "item_id": it[perm]}
    cols["item_cat"] = item_cat[cols["item_id"]]
    for k, c in (user_columns or {}).items():
        cols[k] = np.asarray(c, np.int64)[cols["user_id"]]
    h_item, h_cat, n_item, n_cat = fill_history(
        end[perm],
        hist_len[perm],
        [pos_item, item_cat[pos_item], neg, item_cat[neg]],
        max_len,
        progress=progress,
    )
    cols.update(
        hist_item=h_item,
        hist_cat=h_cat,
        neg_hist_item=n_item,
        neg_hist_cat=n_cat,
        hist_len=hist_len[perm],
        label=y[perm],
        timestamp=t[perm],
    )
    for k, c in (extra_columns or {}).items():
        cols[k] = np.asarray(c)[order][perm]
    return slice_splits(cols, counts)


def slice_splits(cols: Mapping[str, np.ndarray], counts: Sequence[int]) -> dict[str, Split]:
    """Cut split-major columns into train / valid / test views (no copy)."""
    bounds = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    return {
        name: Split(name, {k: c[bounds[i] : bounds[i + 1]] for k, c in cols.items()})
        for i, name in enumerate(SPLITS)
    }


def check_options(name: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
    unknown = [k for k in given if k not in defaults]
    if unknown:
        raise DataError(
            f"unknown option {unknown[0]!r} for dataset {name!r} (options: {', '.join(sorted(defaults))})"
        )
    out = dict(defaults)
    out.update(given)
    return out
