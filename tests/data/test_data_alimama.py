"""Alimama: streamed behaviour log, page-view history before each impression, day split."""
from __future__ import annotations

import numpy as np
import pytest

from udg_fast import data

DAY0 = 1_494_000_000  # 2017-05-06 00:00 Beijing time


def _expected_history(al, user, t, L, strict=True):
    views = [(tt, k, c, b) for k, (u, tt, bt, c, b) in enumerate(al.log)
             if u == user and bt == "pv" and (tt < t if strict else tt <= t)]
    views.sort()
    return [(c, b) for _, _, c, b in views][-L:]


@pytest.mark.parametrize("chunk_rows,n_buckets", [(1_000_000, 1), (7, 3), (13, 5)])
def test_alimama_histories_and_split(tmp_path, raw, rules, chunk_rows, n_buckets):
    al = raw.alimama_data()
    L = 6
    ds = data.load("alimama", raw.alimama(tmp_path, al), max_len=L, chunk_rows=chunk_rows, n_buckets=n_buckets)
    rules.schema(ds)
    assert ds.schema.profile_fields == (
        "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
        "shopping_level", "occupation", "new_user_class_level",  # header's trailing space stripped
    )
    assert "adgroup_id" in ds.schema.item_fields and ds.schema.context_fields == ("pid",)
    assert ds.schema["hist_item"].key == "item_id"

    kept = [s for s in al.samples if 0 <= (s[1] - DAY0) // 86400 <= 7]
    assert ds.stats["samples"] == len(kept) and ds.stats["dropped_rows"] == len(al.samples) - len(kept)
    assert len(ds.valid) == 0
    days = {"train": range(0, 7), "test": [7]}
    ads = {a[0]: a for a in al.ads}
    n_seen = 0
    for name in ("train", "test"):
        s = ds[name]
        assert all((int(t) - DAY0) // 86400 in days[name] for t in s["timestamp"])
        for k in range(len(s)):
            user = int(ds.raw("user_id", s["user_id"][k]))
            t = int(s["timestamp"][k])
            exp = _expected_history(al, user, t, L)
            n = int(s["hist_len"][k])
            assert n == len(exp)
            got_c = [int(ds.raw("item_cat", x)) for x in s["hist_cat"][k][:n]]
            got_b = [None if x == 0 else int(ds.raw("item_id", x)) for x in s["hist_item"][k][:n]]
            assert got_c == [c for c, _ in exp] and got_b == [b for _, b in exp]
            assert not s["hist_item"][k][n:].any() and not s["hist_cat"][k][n:].any()
            # the negatives: catalogue brands absent from this sample's history, 0 at padding
            nb = s["neg_hist_item"][k]
            assert (nb[:n] > 0).all() and not nb[n:].any()
            assert not set(nb[:n].tolist()) & set(s["hist_item"][k][:n].tolist())
            # the ad's fields
            ad = ads[int(ds.raw("adgroup_id", s["adgroup_id"][k]))]
            assert int(ds.raw("item_cat", s["item_cat"][k])) == ad[1]
            assert (s["item_id"][k] == 0) == (ad[4] is None)
            if ad[4] is not None:
                assert int(ds.raw("item_id", s["item_id"][k])) == ad[4]
            n_seen += 1
    assert n_seen == len(kept)

    # the impression sharing its second with a page view does not see it
    u0 = al.users[0]
    t0 = DAY0 + 3 * 86400 + 500
    s = ds.train
    rows = np.flatnonzero((ds.vocab["user_id"][s["user_id"] - 1] == u0) & (s["timestamp"] == t0))
    assert len(rows) == 2
    # (the general check above compared these rows with the strict rule; make sure the fixture's
    # same-second page view would have changed them under a non-strict one)
    assert _expected_history(al, u0, t0, L) != _expected_history(al, u0, t0, L, strict=False)

    # profiles: NaN -> 0, the user without a profile row -> 0 everywhere
    last = al.users[-1]
    for name in ("train", "test"):
        s = ds[name]
        mine = ds.vocab["user_id"][s["user_id"] - 1] == last
        for f in ds.schema.profile_fields:
            assert not s[f][mine].any()


def test_alimama_results_do_not_depend_on_chunking(tmp_path, raw):
    al = raw.alimama_data(seed=4)
    p = raw.alimama(tmp_path, al)
    a = data.load("alimama", p, cache=False, chunk_rows=5, n_buckets=4)
    b = data.load("alimama", p, cache=False)
    for s in ("train", "valid", "test"):
        for k in a[s].fields:
            np.testing.assert_array_equal(a[s][k], b[s][k], err_msg=f"{s}.{k}")
    # perf-only options share one cache entry
    c = data.load("alimama", p, chunk_rows=5)
    d = data.load("alimama", p, chunk_rows=11, n_buckets=2)
    assert not c.meta["from_cache"] and d.meta["from_cache"]


def test_alimama_valid_day_and_sample_frac(tmp_path, raw):
    al = raw.alimama_data(seed=5)
    p = raw.alimama(tmp_path, al)
    ds = data.load("alimama", p, valid_day="0512", cache=False)
    assert len(ds.valid) > 0
    assert all((int(t) - DAY0) // 86400 == 6 for t in ds.valid["timestamp"])
    assert all((int(t) - DAY0) // 86400 < 6 for t in ds.train["timestamp"])
    half = data.load("alimama", p, sample_frac=0.5, cache=False)
    assert 0 < half.stats["users"] < ds.stats["users"]
    with pytest.raises(data.DataError, match="valid_day"):
        data.load("alimama", p, valid_day="0513", cache=False)
