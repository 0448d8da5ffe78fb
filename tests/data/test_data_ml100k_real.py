"""The real MovieLens-100K, fetched by name (the recbole 1.2.1 wheel from the package registry)."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from udg_fast import data
from udg_fast.data import movielens

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def ml_home(tmp_path_factory):
    return tmp_path_factory.mktemp("udg_ml100k_cache")


@pytest.fixture
def ml100k(ml_home, monkeypatch):
    monkeypatch.setenv("UDG_FAST_DATA", str(ml_home))
    return data.load("ml-100k")


def _raw_ratings(ml_home):
    wheel = ml_home / "downloads" / movielens.RECBOLE_WHEEL
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(movielens.RECBOLE_DIR + "ml-100k.inter").decode()
    a = np.array([line.split("\t") for line in text.splitlines()[1:]], dtype=np.float64).astype(np.int64)
    return a[:, 0], a[:, 1], a[:, 2], a[:, 3]


def test_counts(ml100k, ml_home):
    ds = ml100k
    st = ds.stats
    assert (st["users"], st["items"], st["interactions"], st["samples"]) == (943, 1682, 100000, 100000)
    assert sum(len(s) for s in ds.splits.values()) == 100000
    assert (ds.schema.vocab_size("user_id"), ds.schema.vocab_size("item_id")) == (944, 1683)
    assert ds.schema.vocab_size("item_cat") == 20  # 19 genres + padding
    assert ds.schema.profile_fields == ("age", "gender", "occupation")
    assert ds.schema.vocab_size("occupation") == 22  # 21 occupations + unknown
    u, i, r, t = _raw_ratings(ml_home)
    assert st["positive_rate"] == pytest.approx(float((r > 3).mean()))  # 0.55375
    assert ds.vocab["user_id"].tolist() == list(range(1, 944))  # dense ids equal GroupLens' ids
    assert st["prepare_seconds"] < 15


def test_no_leakage_on_every_sample(ml100k, ml_home):
    ds = ml100k
    u, i, r, t = _raw_ratings(ml_home)
    key = u * 2000 + i
    order = np.argsort(key)
    skey, sts, spos = key[order], t[order], (r > 3)[order]
    for name, s in ds.splits.items():
        n, L = s["hist_item"].shape
        valid = np.arange(L)[None, :] < s["hist_len"][:, None]
        uu = np.broadcast_to(s["user_id"][:, None], (n, L))[valid]
        hk = uu * 2000 + s["hist_item"][valid]
        pos = np.searchsorted(skey, hk)
        assert (skey[pos] == hk).all(), name  # every history item was rated by the user
        assert spos[pos].all(), name  # ... positively
        ts_rows = np.broadcast_to(s["timestamp"][:, None], (n, L))[valid]
        assert (sts[pos] < ts_rows).all(), name  # ... strictly before the sample
        h_ts = np.zeros((n, L), np.int64)
        h_ts[valid] = sts[pos]
        assert (np.diff(h_ts, axis=1)[valid[:, 1:]] >= 0).all()  # oldest first
        nk = uu * 2000 + s["neg_hist_item"][valid]
        npos = np.clip(np.searchsorted(skey, nk), 0, len(skey) - 1)
        assert not (skey[npos] == nk).any(), name  # negatives were never rated by the user
        assert not s["hist_item"][~valid].any() and not s["neg_hist_item"][~valid].any()


def test_chronological_split(ml100k):
    ds = ml100k
    per_user = np.bincount(np.concatenate([s["user_id"] for s in ds.splits.values()]), minlength=944)
    for name, frac in (("valid", 10), ("test", 10)):
        got = np.bincount(ds[name]["user_id"], minlength=944)
        np.testing.assert_array_equal(got, per_user // frac)
    last_train = np.zeros(944, np.int64)
    np.maximum.at(last_train, ds.train["user_id"], ds.train["timestamp"])
    first_valid = np.full(944, np.iinfo(np.int64).max)
    np.minimum.at(first_valid, ds.valid["user_id"], ds.valid["timestamp"])
    last_valid = np.zeros(944, np.int64)
    np.maximum.at(last_valid, ds.valid["user_id"], ds.valid["timestamp"])
    first_test = np.full(944, np.iinfo(np.int64).max)
    np.minimum.at(first_test, ds.test["user_id"], ds.test["timestamp"])
    assert (last_train <= first_valid).all() and (last_valid <= first_test).all()


def test_grouplens_format_gives_the_same_dataset(ml100k, ml_home, tmp_path):
    """The same ratings written in GroupLens' own layout (u.data, u.user, u.item) prepare to
    identical arrays (written to tmp_path from the wheel's content; nothing is kept)."""
    wheel = ml_home / "downloads" / movielens.RECBOLE_WHEEL
    with zipfile.ZipFile(wheel) as zf:
        inter, user, item = (zf.read(movielens.RECBOLE_DIR + f"ml-100k.{k}").decode().splitlines()[1:]
                             for k in ("inter", "user", "item"))
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "u.data").write_text("".join(line + "\n" for line in inter))
    (d / "u.user").write_text("".join("|".join(line.split("\t")) + "\n" for line in user))
    rows = []
    for line in item:
        iid, title, year, cls = line.split("\t")
        gs = set(cls.split(" "))
        flags = "|".join("1" if g in gs else "0" for g in movielens.GENRES_100K)
        rows.append(f"{iid}|{title}|01-Jan-{year}||http://x|{flags}\n")
    (d / "u.item").write_text("".join(rows))
    other = data.load("ml-100k", d, cache=False)
    for name in ("train", "valid", "test"):
        for k in ml100k[name].fields:
            np.testing.assert_array_equal(other[name][k], ml100k[name][k], err_msg=f"{name}.{k}")


def test_second_load_is_cached(ml100k, ml_home, monkeypatch):
    monkeypatch.setenv("UDG_FAST_DATA", str(ml_home))
    assert data.load("ml-100k").meta["from_cache"]
