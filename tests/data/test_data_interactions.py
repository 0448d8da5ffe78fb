"""Your own interaction log (`data.from_interactions`, the `interactions` dataset): the sample rules
of the built-in datasets, raw ids of any type, every file format, and errors that name the column."""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from udg_fast import data
from udg_fast.data import DataError
from udg_fast.data.movielens import age_bucket


def _log(ml) -> pd.DataFrame:
    """tiny_movielens as one interaction table: string user ids, ratings, a genre name per row,
    the user's profile on every row."""
    first_genre = {it: min(gs) for it, _, gs in ml.items}
    prof = {u: (age, g) for u, age, g, _, _ in ml.users}
    return pd.DataFrame({
        "user": [f"user-{u}" for u, _, _, _ in ml.ratings],
        "movie": [i for _, i, _, _ in ml.ratings],
        "stars": [r for _, _, r, _ in ml.ratings],
        "when": [t for _, _, _, t in ml.ratings],
        "genre": [f"g{first_genre[i]:02d}" for _, i, _, _ in ml.ratings],
        "age": [int(age_bucket(np.array([prof[u][0]]))[0]) for u, _, _, _ in ml.ratings],
        "gender": [prof[u][1] for u, _, _, _ in ml.ratings],
    })


def _from_log(log, **kw):
    args = dict(user="user", item="movie", label="stars", timestamp="when", category="genre",
                profile=["age", "gender"], label_threshold=3, max_len=7)
    return data.from_interactions(log, **{**args, **kw})


def test_follows_the_sample_rules(raw, rules):
    ml = raw.movielens(seed=4)
    log = _log(ml)
    ds = _from_log(log)
    rules.schema(ds)
    # the brute-force checker works on dense ids: map the raw ones through the vocabularies
    uid = {v: k + 1 for k, v in enumerate(ds.vocab["user_id"])}
    iid = {v: k + 1 for k, v in enumerate(ds.vocab["item_id"])}
    cid = {v: k + 1 for k, v in enumerate(ds.vocab["item_cat"])}
    events = [(uid[u], iid[i], 1 if r > 3 else 0, t) for u, i, r, t in zip(log.user, log.movie, log.stars, log.when)]
    clicked = {(e[0], e[1]) for e in events}
    item_cat = np.zeros(len(iid) + 1, np.int64)
    for i, g in zip(log.movie, log.genre):
        item_cat[iid[i]] = cid[g]
    rules.interaction(ds, events, clicked, item_cat, max_len=7)
    from collections import Counter
    rules.chronological(ds, Counter(e[0] for e in events))
    assert ds.schema.profile_fields == ("age", "gender")
    assert ds.stats["interactions"] == len(log) and ds.stats["users"] == ml.n_users
    assert set(ds.vocab["user_id"]) == {f"user-{u}" for u in range(1, ml.n_users + 1)}


def test_matches_the_movielens_loader_on_the_same_ratings(tmp_path, raw):
    """The same ratings through ml-100k's loader and through from_interactions: the same samples,
    sampled negatives included (ids compared through the raw values where the encodings differ)."""
    ml = raw.movielens(seed=5)
    ref = data.load("ml-100k", raw.grouplens_100k(tmp_path, ml), cache=False, max_len=7)
    log = _log(ml)
    log["user"] = [u for u, _, _, _ in ml.ratings]  # ints 1..U, as ml-100k's ids
    ds = _from_log(log)
    for s in ("train", "valid", "test"):
        a, b = ref[s], ds[s]
        for f in ("user_id", "item_id", "hist_item", "hist_len", "neg_hist_item", "label", "timestamp"):
            np.testing.assert_array_equal(a[f], b[f], err_msg=f"{s}.{f}")
        # categories: GroupLens genre index + 1 there, the encoded genre name here
        to_grouplens = np.array([0] + [int(v[1:]) + 1 for v in ds.vocab["item_cat"]])   # "g07" → 8
        for f in ("item_cat", "hist_cat", "neg_hist_cat"):
            np.testing.assert_array_equal(a[f], to_grouplens[b[f]], err_msg=f"{s}.{f}")
        np.testing.assert_array_equal(a["age"], ds.vocab["age"][b["age"] - 1])
        np.testing.assert_array_equal(ref.vocab["gender"][a["gender"] - 1], ds.vocab["gender"][b["gender"] - 1])


@pytest.mark.parametrize("fmt", ["csv", "tsv", "csv.gz", "sep"])
def test_files_load_like_the_frame_and_are_cached(tmp_path, raw, fmt):
    log = _log(raw.movielens(seed=6))
    path = tmp_path / f"log.{'txt' if fmt == 'sep' else fmt}"
    text = log.to_csv(index=False, sep=";" if fmt == "sep" else "\t" if fmt == "tsv" else ",")
    if fmt == "csv.gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    opts = dict(user_col="user", item_col="movie", label_col="stars", time_col="when", cat_col="genre",
                profile_cols="age,gender", label_threshold=3, max_len=7, **({"sep": ";"} if fmt == "sep" else {}))
    ds = data.load("interactions", path, **opts)
    frame = _from_log(log)
    for s in ("train", "valid", "test"):
        for f in frame[s].fields:
            np.testing.assert_array_equal(ds[s][f], frame[s][f], err_msg=f"{s}.{f}")
    assert not ds.meta["from_cache"] and data.load("interactions", path, **opts).meta["from_cache"]


def test_ids_of_any_type_zero_one_labels_dates_and_defaults():
    log = pd.DataFrame({
        "user_id": ["b", "a", "b", "a", "b", "a", "b"],
        "item_id": [10.0, 20.0, 30.0, 10.0, 20.0, 30.0, 40.0],   # a float column: ids 10, 20, ...
        "label": [True, False, True, True, False, True, True],
        "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05",
                                     "2024-01-06", "2024-01-07"]),
    })
    ds = data.from_interactions(log, max_len=3)
    assert list(ds.vocab["user_id"]) == ["a", "b"] and list(ds.vocab["item_id"]) == [10, 20, 30, 40]
    assert list(ds.vocab["item_cat"]) == ["(all)"] and ds.schema.profile_fields == ()
    rows = {(int(u), int(t)): (int(n), list(h)) for s in ("train", "valid", "test") for u, t, n, h in
            zip(ds[s]["user_id"], ds[s]["timestamp"], ds[s]["hist_len"], ds[s]["hist_item"])}
    day = 86400
    t0 = int(pd.Timestamp("2024-01-01", tz="UTC").timestamp())
    # user b (id 2): clicks on days 1 (item 10), 3 (30), 7 (40); day 5 (20) not clicked
    assert rows[(2, t0 + 6 * day)] == (2, [1, 3, 0])
    assert rows[(2, t0 + 4 * day)] == (2, [1, 3, 0])
    assert rows[(2, t0)] == (0, [0, 0, 0])
    # user a (id 1): days 2 (20, no), 4 (10, yes), 6 (30, yes)
    assert rows[(1, t0 + 5 * day)] == (1, [1, 0, 0])


def test_times_as_text_and_iso_dates_in_mixed_forms():
    """A CSV's numbers read as text are numbers; ISO 8601 dates may mix their forms."""
    text = data.from_interactions(_small().assign(timestamp=["1", "2", "3"]))
    nums = data.from_interactions(_small())
    for s in ("train", "valid", "test"):
        assert np.array_equal(text[s]["timestamp"], nums[s]["timestamp"])
    ds = data.from_interactions(_small().assign(timestamp=["2024-01-01", "2024-01-02 10:00", "2024-01-03T00:00:30Z"]))
    t0 = int(pd.Timestamp("2024-01-01", tz="UTC").timestamp())
    got = sorted(int(t) for s in ("train", "valid", "test") for t in ds[s]["timestamp"])
    assert got == [t0, t0 + 86400 + 36000, t0 + 2 * 86400 + 30]


def test_category_and_profile_come_from_the_latest_row_that_has_one():
    log = pd.DataFrame({
        "user_id": [1, 1, 1, 2], "item_id": [5, 6, 5, 6], "label": [1, 0, 1, 1], "timestamp": [3, 1, 2, 5],
        "cat": ["x", "y", "z", None],           # item 5: z at t=2 then x at t=3 → x; item 6: y (None is later)
        "city": ["paris", None, "rome", None],  # user 1: paris (t=3); user 2: none → unknown 0
        "age": [40, 40, 40, None],               # ints beside None stay numbers: vocab [40]
    })
    ds = data.from_interactions(log, category="cat", profile=["city", "age"], max_len=2)
    assert ds.vocab["age"].tolist() == [40] and ds.vocab["age"].dtype.kind == "i"
    cat = {int(i): ds.vocab["item_cat"][c - 1] for s in ("train", "valid", "test")
           for i, c in zip(ds[s]["item_id"], ds[s]["item_cat"])}
    assert cat == {1: "x", 2: "y"}  # items 5 and 6 are ids 1 and 2
    city = {int(u): int(c) for s in ("train", "valid", "test") for u, c in zip(ds[s]["user_id"], ds[s]["city"])}
    assert ds.vocab["city"][city[1] - 1] == "paris" and city[2] == 0


def _small():
    return pd.DataFrame({"user_id": [1, 1, 2], "item_id": [1, 2, 1], "label": [1, 0, 1], "timestamp": [1, 2, 3],
                         "age": [20, 20, 30]})


@pytest.mark.parametrize("change,kw,match", [
    (lambda f: f.drop(columns="label"), {}, r"no column 'label' \(columns: user_id, item_id, timestamp, age\)"),
    (lambda f: f.assign(user_id=[1, None, 2]), {}, r"column 'user_id' has 1 missing value\(s\), the first in data row 2"),
    (lambda f: f.assign(label=[1, 5, 0]), {}, r"must hold 0 and 1, found 5.0 in data row 2; give label_threshold"),
    (lambda f: f.assign(label=["yes", "no", "yes"]), {}, r"column 'label' \(the label\) must be numeric, got 'yes' in data row 1"),
    (lambda f: f.assign(label=[1, "yes", 0]), {}, r"must be numeric, got 'yes' in data row 2"),
    (lambda f: f.assign(label=[1, None, 0]), {}, r"column 'label' \(the label\) has 1 missing value\(s\), the first in data row 2"),
    (lambda f: f.assign(timestamp=["2024-01-01", "x", "2024-01-03"]), {},
     r"column 'timestamp' \(the time\) must be numbers, or dates in one format .* got 'x' in data row 2"),
    # month-first in row 1, day-first in row 3: refused, not read as two formats
    (lambda f: f.assign(timestamp=["01/02/2020", "05/02/2020", "13/02/2020"]), {},
     r"dates in one format \(data row 1: '01/02/2020'\) or ISO 8601, got '13/02/2020' in data row 3"),
    (lambda f: f.assign(timestamp=[1600000000, 1600000001, "soon"]), {},
     r"must be all numbers or all dates, got 1600000000 in data row 1 and 'soon' in data row 3"),
    (lambda f: f.assign(timestamp=[1, None, 3]), {}, r"column 'timestamp' \(the time\) has 1 missing value\(s\), the first in data row 2"),
    (lambda f: f, {"profile": ["age", "user_id"]}, r"column 'user_id' is given for two roles"),
    (lambda f: f.rename(columns={"age": "hist_len"}), {"profile": ["hist_len"]}, r"profile column 'hist_len' has the name of a sample field"),
    (lambda f: f.iloc[:0], {}, r"no rows"),
    (lambda f: f, {"label_threshold": "3"}, r"label_threshold must be a number or None, got '3'"),
    (lambda f: f, {"profile": [3]}, r"profile_cols must be column names"),
    (lambda f: f, {"max_len": 0}, r"option 'max_len' must be a positive integer"),
])
def test_bad_input_names_the_column(change, kw, match):
    with pytest.raises(DataError, match=match):
        data.from_interactions(change(_small()), **kw)


def test_bad_paths_and_inputs(tmp_path):
    with pytest.raises(DataError, match="needs path= a CSV, TSV or Parquet file"):
        data.load("interactions")
    with pytest.raises(DataError, match="is not a file"):
        data.load("interactions", tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv: file is empty"):
        data.load("interactions", tmp_path / "empty.csv")
    (tmp_path / "log.csv").write_text(_small().to_csv(index=False))
    with pytest.raises(DataError, match=r"unknown option 'user' for dataset 'interactions'"):
        data.load("interactions", tmp_path / "log.csv", user="user_id")
    with pytest.raises(DataError, match=r"log.csv: no column 'uid'"):
        data.load("interactions", tmp_path / "log.csv", user_col="uid")
    with pytest.raises(DataError, match="expected a pandas DataFrame, got dict"):
        data.from_interactions(_small().to_dict())


def test_trains_a_udg_model(tmp_path):
    """End to end: a UDG DIN trains on a dataset from a log (loss goes down on its train split)."""
    import torch

    from udg_fast import models, train

    rng = np.random.default_rng(0)
    n = 20000
    log = pd.DataFrame({"user_id": rng.integers(0, 50, n), "item_id": rng.integers(0, 80, n),
                        "timestamp": rng.integers(0, 10**6, n)})
    log["cat"] = log.item_id % 5
    log["label"] = (log.cat == log.user_id % 5).astype(int)  # each user clicks one category: user-dependent
    ds = data.from_interactions(log, category="cat", max_len=10)
    torch.manual_seed(0)
    # embeddings at std 0.1, not the default 0.01: from 0.01 this small a set sits on the plateau
    # of near-zero interactions for its first epochs (0.01: train loss 0.54, 0.51, 0.50; 0.1:
    # 0.53, 0.38, 0.11)
    m = models.build("din", ds.schema, udg=True, embed_dim=8, hidden=(16, 8), embed_init_std=0.1)
    res = train.fit(m, ds, train.TrainConfig(epochs=3, lr=1e-2, lr_decay=1.0, patience=0, progress=False),
                    log=lambda s: None)
    assert res["history"][-1]["train_loss"] < 0.5 * res["history"][0]["train_loss"]
    assert res["test"]["auc"] > 0.9


def test_integer_times_are_kept_exactly():
    """Nanosecond stamps (beyond float64's 2^53) keep their order: a row 1 ns later has the
    earlier click in its history (read through a float, the two would tie and it would not)."""
    t0 = 1_700_000_000_000_000_000
    log = pd.DataFrame({"user_id": [1] * 12, "item_id": list(range(12)), "label": [1] * 12,
                        "timestamp": [t0 + 1, t0] + [t0 + 10 + i for i in range(10)]})
    ds = data.from_interactions(log, max_len=3)
    rows = {int(t): (int(n), list(h)) for s in ("train", "valid", "test")
            for t, n, h in zip(ds[s]["timestamp"], ds[s]["hist_len"], ds[s]["hist_item"])}
    assert rows[t0] == (0, [0, 0, 0]) and rows[t0 + 1] == (1, [2, 0, 0])  # raw item 1 is id 2
