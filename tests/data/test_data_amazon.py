"""Amazon Electronics with DIN's preprocessing, on a tiny fixture."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from udg_fast import data


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_samples(tmp_path, raw, rules, gz):
    am = raw.amazon_data()
    ds = data.load("amazon-electronics", raw.amazon(tmp_path, am, gz=gz), max_len=4)
    rules.schema(ds)
    users = sorted({u for u, _, _ in am.reviews})
    items = sorted({a for _, a, _ in am.reviews})
    assert ds.vocab["user_id"].tolist() == users and ds.vocab["item_id"].tolist() == items
    uid = {u: k + 1 for k, u in enumerate(users)}
    iid = {a: k + 1 for k, a in enumerate(items)}
    # category = the last entry of categories[-1]; B0003 has no metadata -> 0
    names = sorted({am.cats[a][-1] for a in items if a != "B0003"})
    assert ds.vocab["item_cat"].tolist() == names
    cat = np.zeros(len(items) + 1, np.int64)
    for a in items:
        if a != "B0003":
            cat[iid[a]] = names.index(am.cats[a][-1]) + 1
    assert ds.stats["items_without_category"] == 1

    events = [(uid[u], iid[a], 1, t) for u, a, t in am.reviews]
    clicked = {(uid[u], iid[a]) for u, a, _ in am.reviews}
    rules.interaction(ds, events, clicked, cat, max_len=4)
    rules.chronological(ds)

    # every review is a positive; each has one negative at the same time, with the same history
    # and an item the user never reviewed, in the same split
    assert ds.stats["interactions"] == len(am.reviews) and ds.stats["samples"] == 2 * len(am.reviews)
    n_rev = Counter(uid[u] for u, _, _ in am.reviews)
    for name, s in ds.splits.items():
        assert (s["label"][0::2] == 1).all() and (s["label"][1::2] == 0).all()
        for f in ("user_id", "timestamp", "hist_item", "hist_cat", "hist_len", "neg_hist_item"):
            np.testing.assert_array_equal(s[f][0::2], s[f][1::2], err_msg=f)
        for u, it in zip(s["user_id"][1::2], s["item_id"][1::2]):
            assert (int(u), int(it)) not in clicked
    for u, n in n_rev.items():
        got = [int((ds[s]["user_id"] == u).sum()) // 2 for s in ("train", "valid", "test")]
        assert got == [n - 2 * (n // 10), n // 10, n // 10]


def test_amazon_deterministic(tmp_path, raw):
    am = raw.amazon_data(seed=3)
    p = raw.amazon(tmp_path, am)
    a = data.load("amazon-electronics", p, cache=False)
    b = data.load("amazon-electronics", p, cache=False)
    for s in ("train", "valid", "test"):
        for k in a[s].fields:
            np.testing.assert_array_equal(a[s][k], b[s][k])
