"""The cold-start study's data splits (the paper's Table 5 protocol, Algorithm 1's D^A / D^B).

* `merge_splits`: a user's whole log, all three prepared splits in time order (histories stay as
  prepared: every sample's history holds only strictly earlier clicks).
* `split_users`: users by their number of samples n — *active* (n > upper) and *new*
  (lower ≤ n ≤ upper); the rest (n < lower) take no part.
* `phase_split`: each new user's samples in time order → batch-a, batch-b, batch-c (K each) and
  the rest, held out (≥ K, since lower ≥ 4K); the held-out samples of all new users are the test set.
* `split_halves`: the meta-training halves D^A / D^B — per user, the earlier half of their samples
  in D^A, the later half in D^B, so both cover the same users and are disjoint.

All functions return row indices into the split they were given, never copies of the data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from udg_fast.data import Dataset, Split
from udg_fast.coldstart.generator import ColdStartError

DEFAULT_K = 10
DEFAULT_UPPER = 100


def merge_splits(dataset: Dataset) -> Split:
    """train + valid + test as one split ordered by (user, timestamp), ties in split order (the
    prepared splits are chronological per user, so this is each user's log in time order)."""
    parts = [s for s in (dataset.train, dataset.valid, dataset.test) if len(s)]
    if not parts:
        raise ColdStartError(f"{dataset.name}: the dataset has no samples")
    fields = [f for f in parts[0].fields if all(f in p for p in parts)]
    cols = {f: np.concatenate([np.asarray(p[f]) for p in parts]) for f in fields}
    order = np.lexsort((cols["timestamp"], cols["user_id"]))  # stable: ties keep split order
    return Split("all", {f: a[order] for f, a in cols.items()})


def _user_runs(user: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an array sorted by user: (users, start row, count) of each run."""
    if len(user) and np.any(np.diff(user) < 0):
        raise ColdStartError("rows must be sorted by user (use merge_splits)")
    users, start, count = np.unique(user, return_index=True, return_counts=True)
    return users, start, count


def resolve_thresholds(k: int | None = None, lower: int | None = None, upper: int | None = None) -> tuple[int, int, int]:
    """(K, lower, upper) with the defaults filled in — K = 10, lower = 4K, upper = 100 — and checked:
    K ≥ 1, lower ≥ 4K (batch-a, -b, -c and at least K held-out samples), upper ≥ lower."""
    k = DEFAULT_K if k is None else k
    for name, v in (("k", k), ("lower", lower), ("upper", upper)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ColdStartError(f"{name} must be a positive int, got {v!r}")
    lower = 4 * k if lower is None else lower
    upper = DEFAULT_UPPER if upper is None else upper
    if lower < 4 * k:
        raise ColdStartError(f"lower = {lower} is below 4·K = {4 * k}: a new user needs K samples for each of "
                             f"batch-a, -b, -c and at least K held out")
    if upper < lower:
        raise ColdStartError(f"upper = {upper} is below lower = {lower}: no user can be new")
    return int(k), int(lower), int(upper)


@dataclass
class UserSplit:
    """Active and new users of a merged split (ids sorted) and the rows of the active users."""

    active_users: np.ndarray      # n > upper
    new_users: np.ndarray         # lower ≤ n ≤ upper
    active_rows: np.ndarray       # rows of the active users (all their samples)
    excluded_users: int           # n < lower


def split_users(merged: Split, lower: int, upper: int) -> UserSplit:
    """Users by their number of samples: active (n > upper), new (lower ≤ n ≤ upper)."""
    users, start, count = _user_runs(np.asarray(merged["user_id"]))
    active = count > upper
    new = (count >= lower) & (count <= upper)
    rows = np.concatenate([np.arange(s, s + c) for s, c in zip(start[active], count[active])]) \
        if active.any() else np.zeros(0, np.int64)
    return UserSplit(users[active], users[new], rows.astype(np.int64), int((count < lower).sum()))


@dataclass
class PhaseSplit:
    """Row indices (into the merged split) of the new users' phases, each time-ordered per user."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    held_out: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"a": self.a, "b": self.b, "c": self.c, "held_out": self.held_out}


def phase_split(merged: Split, new_users, k: int) -> PhaseSplit:
    """Each new user's samples in time order: the first K → batch-a, the next K → batch-b, the next
    K → batch-c, the rest → held out (a user with fewer than 4K samples raises)."""
    user = np.asarray(merged["user_id"])
    users, start, count = _user_runs(user)
    pos = np.searchsorted(users, np.asarray(new_users))
    if len(pos) and (np.any(pos >= len(users)) or np.any(users[np.minimum(pos, len(users) - 1)] != new_users)):
        raise ColdStartError("phase_split: some new users have no samples")
    short = count[pos] < 4 * k
    if short.any():
        raise ColdStartError(f"phase_split: {int(short.sum())} new user(s) have fewer than 4·K = {4 * k} samples")
    st, n = start[pos], count[pos]
    rank_rows = [np.arange(s, s + c) for s, c in zip(st, n)]
    rows = np.concatenate(rank_rows) if rank_rows else np.zeros(0, np.int64)
    rank = np.concatenate([np.arange(c) for c in n]) if len(n) else np.zeros(0, np.int64)
    return PhaseSplit(a=rows[rank < k], b=rows[(rank >= k) & (rank < 2 * k)],
                      c=rows[(rank >= 2 * k) & (rank < 3 * k)], held_out=rows[rank >= 3 * k])


def split_halves(split: Split, rows=None) -> tuple[np.ndarray, np.ndarray]:
    """D^A and D^B for meta-training (Algorithm 1): per user, in time order, the first ⌈n/2⌉ of the
    user's rows go to D^A and the other ⌊n/2⌋ to D^B; users with a single row are left out, so both
    halves cover exactly the same users and share no row.

    Args:
        split: samples sorted by user (then time), e.g. `merge_splits(ds)` or a prepared split.
        rows: the rows to use (e.g. the active users' rows); default all.
    Returns:
        (rows of D^A, rows of D^B), int64 indices into `split`.
    """
    rows = np.arange(len(split)) if rows is None else np.asarray(rows, dtype=np.int64)
    user = np.asarray(split["user_id"])[rows]
    ts = np.asarray(split["timestamp"])[rows]
    order = np.lexsort((ts, user))  # stable: ties keep the given order
    rows, user = rows[order], user[order]
    users, start, count = _user_runs(user)
    rank = np.arange(len(rows)) - np.repeat(start, count)
    n = np.repeat(count, count)
    keep = n >= 2
    in_a = rank < n - n // 2
    return rows[keep & in_a], rows[keep & ~in_a]
