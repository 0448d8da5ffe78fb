"""The study's splits: active / new users, batch-a/b/c/held-out, and Algorithm 1's D^A / D^B."""
from __future__ import annotations

import numpy as np
import pytest

from udg_fast.coldstart import (ColdStartError, phase_split, resolve_thresholds, split_halves,
                                split_users)


def test_merge_splits_is_each_users_log_in_time_order(skewed, merged):
    assert len(merged) == len(skewed.train) + len(skewed.valid) + len(skewed.test)
    u, ts = merged["user_id"], merged["timestamp"]
    assert np.all(np.diff(u) >= 0)
    same = u[1:] == u[:-1]
    assert np.all(np.diff(ts)[same] >= 0)


def test_split_users_by_sample_count(merged):
    k, lower, upper = resolve_thresholds(5, None, 60)
    assert (k, lower, upper) == (5, 20, 60)
    us = split_users(merged, lower, upper)
    counts = np.bincount(merged["user_id"])
    assert len(us.active_users) > 0 and len(us.new_users) > 0 and us.excluded_users > 0
    assert np.all(counts[us.active_users] > upper)
    assert np.all((counts[us.new_users] >= lower) & (counts[us.new_users] <= upper))
    assert len(np.intersect1d(us.active_users, us.new_users)) == 0
    assert us.excluded_users == int(((counts > 0) & (counts < lower)).sum())
    assert np.array_equal(np.unique(merged["user_id"][us.active_rows]), us.active_users)
    assert len(us.active_rows) == counts[us.active_users].sum()


def test_phases_are_disjoint_time_ordered_and_k_each(merged):
    k, lower, upper = 5, 20, 60
    us = split_users(merged, lower, upper)
    ph = phase_split(merged, us.new_users, k)
    parts = ph.as_dict()
    allrows = np.concatenate(list(parts.values()))
    assert len(np.unique(allrows)) == len(allrows), "phases overlap"
    u, ts = merged["user_id"], merged["timestamp"]
    counts = np.bincount(u)
    # every row of every new user is in exactly one phase; nothing of other users
    assert np.array_equal(np.sort(allrows), np.flatnonzero(np.isin(u, us.new_users)))
    for name in ("a", "b", "c"):
        assert np.array_equal(np.bincount(u[parts[name]], minlength=len(counts))[us.new_users],
                              np.full(len(us.new_users), k))
    held = np.bincount(u[ph.held_out], minlength=len(counts))[us.new_users]
    assert np.all(held >= k) and np.array_equal(held, counts[us.new_users] - 3 * k)
    # time order: every a-sample of a user is no later than its b-samples, b than c, c than held-out
    for early, late in (("a", "b"), ("b", "c"), ("c", "held_out")):
        for user in us.new_users:
            e, l_ = parts[early][u[parts[early]] == user], parts[late][u[parts[late]] == user]
            assert ts[e].max() <= ts[l_].min()
            assert e.max() < l_.min()  # and earlier in the user's (tie-stable) log


def test_halves_are_disjoint_and_cover_the_same_users(merged):
    us = split_users(merged, 20, 60)
    a, b = split_halves(merged, us.active_rows)
    assert len(np.intersect1d(a, b)) == 0
    u, ts = merged["user_id"], merged["timestamp"]
    assert np.array_equal(np.unique(u[a]), np.unique(u[b]))
    assert np.array_equal(np.unique(u[a]), us.active_users)
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.sort(us.active_rows))
    ca, cb = np.bincount(u[a]), np.bincount(u[b], minlength=len(np.bincount(u[a])))
    assert np.all(np.abs(ca - cb) <= 1)
    for user in us.active_users[:10]:
        assert ts[a[u[a] == user]].max() <= ts[b[u[b] == user]].min()  # D^A is the earlier half


def test_halves_leave_out_single_sample_users(merged):
    a, b = split_halves(merged, np.array([0]))       # one row of one user: no halves
    assert len(a) == len(b) == 0
    a, b = split_halves(merged, np.array([0, 1]))    # two rows of the same user: one each
    assert merged["user_id"][0] == merged["user_id"][1]
    assert a.tolist() == [0] and b.tolist() == [1]


@pytest.mark.parametrize("k,lower,upper,match", [
    (10, 30, 100, "below 4·K"),
    (5, 40, 30, "below lower"),
    (0, None, None, "k must be a positive int"),
])
def test_bad_thresholds(k, lower, upper, match):
    with pytest.raises(ColdStartError, match=match):
        resolve_thresholds(k, lower, upper)
