"""MovieLens parsing (every raw format), labels, profile, categories and the sample rules."""
from __future__ import annotations

import numpy as np
import pytest

from udg_fast import data
from udg_fast.data.movielens import GENRES_100K, age_bucket


def _events(ml):
    return [(u, i, 1 if r > 3 else 0, t) for u, i, r, t in ml.ratings]


def _item_cat_100k(ml):
    cat = np.zeros(ml.n_items + 1, np.int64)
    for it, _, gs in ml.items:
        cat[it] = min(gs) + 1
    return cat


def _per_user(ml):
    from collections import Counter

    return Counter(u for u, _, _, _ in ml.ratings)


@pytest.mark.parametrize("fmt", ["grouplens-folder", "grouplens-zip", "recbole-folder", "recbole-wheel"])
def test_ml100k_formats_follow_the_rules(tmp_path, raw, rules, fmt):
    ml = raw.movielens(seed=1)
    path = {
        "grouplens-folder": lambda: raw.grouplens_100k(tmp_path, ml),
        "grouplens-zip": lambda: raw.grouplens_100k(tmp_path, ml, as_zip=True),
        "recbole-folder": lambda: raw.recbole(tmp_path, ml),
        "recbole-wheel": lambda: raw.recbole(tmp_path, ml, as_wheel=True),
    }[fmt]()
    ds = data.load("ml-100k", path, max_len=7)
    rules.schema(ds)
    clicked = {(u, i) for u, i, _, _ in ml.ratings}  # MovieLens: "clicked" = rated
    rules.interaction(ds, _events(ml), clicked, _item_cat_100k(ml), max_len=7)
    rules.chronological(ds, _per_user(ml))
    assert ds.stats["interactions"] == len(ml.ratings)
    assert ds.stats["users"] == ml.n_users and ds.stats["items"] == ml.n_items
    assert ds.schema.profile_fields == ("age", "gender", "occupation")
    assert ds.schema.vocab_size("item_cat") == len(GENRES_100K) + 1


def test_all_ml100k_formats_give_identical_arrays(tmp_path, raw):
    ml = raw.movielens(seed=2)
    paths = [
        raw.grouplens_100k(tmp_path / "a", ml),
        raw.grouplens_100k(tmp_path / "b", ml, as_zip=True),
        raw.recbole(tmp_path / "c", ml),
        raw.recbole(tmp_path / "d", ml, as_wheel=True),
    ]
    sets = [data.load("ml-100k", p, cache=False) for p in paths]
    for ds in sets[1:]:
        assert ds.schema == sets[0].schema
        for s in ("train", "valid", "test"):
            for k in sets[0][s].fields:
                np.testing.assert_array_equal(ds[s][k], sets[0][s][k], err_msg=f"{s}.{k}")


def test_labels_profile_and_categories(tmp_path, raw):
    ml = raw.movielens(seed=3)
    ds = data.load("ml-100k", raw.grouplens_100k(tmp_path, ml), cache=False)
    rating = {(u, i): r for u, i, r, _ in ml.ratings}
    users = {u: (a, g, o) for u, a, g, o, _ in ml.users}
    occ_ids = {o: k + 1 for k, o in enumerate(sorted({o for _, _, _, o, _ in ml.users}))}
    cat = _item_cat_100k(ml)
    for r in (x for s in ("train", "valid", "test") for x in _rows(ds[s])):
        u, i = int(r["user_id"]), int(r["item_id"])
        assert r["label"] == (1.0 if rating[(u, i)] > 3 else 0.0)
        a, g, o = users[u]
        assert r["age"] == age_bucket(np.array([a]))[0]
        assert r["gender"] == {"F": 1, "M": 2}[g]
        assert r["occupation"] == occ_ids[o]
        assert r["item_cat"] == cat[i]


def _rows(split):
    for i in range(len(split)):
        yield {k: split[k][i] for k in split.fields}


def test_age_buckets_match_ml1m_groups():
    ages = np.array([1, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 80])
    assert age_bucket(ages).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]


@pytest.mark.parametrize("as_zip", [False, True])
def test_ml1m(tmp_path, raw, rules, as_zip):
    ml = raw.movielens(seed=4)
    ds = data.load("ml-1m", raw.ml1m(tmp_path, ml, as_zip=as_zip), max_len=5)
    rules.schema(ds)
    # ml-1m: first listed genre (the fixture lists them in GroupLens order, 'unknown' dropped)
    names = sorted({GENRES_100K[min(k for k in gs if k)] for _, _, gs in ml.items if any(gs)})
    cat = np.zeros(ml.n_items + 1, np.int64)
    for it, _, gs in ml.items:
        real = [k for k in gs if k]
        cat[it] = names.index(GENRES_100K[min(real)]) + 1 if real else 0
    clicked = {(u, i) for u, i, _, _ in ml.ratings}
    rules.interaction(ds, _events(ml), clicked, cat, max_len=5)
    rules.chronological(ds, _per_user(ml))
    ages = [1, 18, 25, 35, 45, 50, 56]
    s = ds.train
    for k in range(len(s)):
        u = int(s["user_id"][k])
        assert s["age"][k] == ages.index(ages[u % 7]) + 1
        assert s["gender"][k] == (1 if u % 2 else 2)  # fixture: "MF"[u % 2]
        assert s["occupation"][k] >= 1


def test_ml_csv_formats(tmp_path, raw, rules):
    ml = raw.movielens(seed=5)
    p = raw.ml_csv(tmp_path, ml)
    for name in ("ml-latest", "ml-20m"):
        ds = data.load(name, p, max_len=6)
        rules.schema(ds)
        assert ds.schema.profile_fields == ()
        # half stars: 3.5 > 3 is a positive, 3.0 is not
        ratings = {(u, i): raw.csv_rating(r) for u, i, r, _ in ml.ratings}
        assert 3.5 in ratings.values() and 3.0 in ratings.values()
        for split in ds.splits.values():
            for k in range(len(split)):
                key = (int(split["user_id"][k]), int(split["item_id"][k]))
                assert split["label"][k] == (1.0 if ratings[key] > 3 else 0.0)
        events = [(u, i, 1 if ratings[(u, i)] > 3 else 0, t) for u, i, _, t in ml.ratings]
        names = sorted({GENRES_100K[min(k for k in gs if k)] for _, _, gs in ml.items if any(k for k in gs)})
        cat = np.zeros(ml.n_items + 1, np.int64)
        for it, _, gs in ml.items:
            real = [k for k in gs if k]
            cat[it] = names.index(GENRES_100K[min(real)]) + 1 if real else 0  # "(no genres listed)" -> 0
        rules.interaction(ds, events, {(u, i) for u, i, _, _ in ml.ratings}, cat, max_len=6)


def test_history_is_strictly_earlier_with_ties(tmp_path):
    # user 1 rates items 1, 2 at t=10 (both positive) and 3 at t=20; item 4 at t=20 too
    d = tmp_path / "ml"
    d.mkdir()
    (d / "u.data").write_text("1\t1\t5\t10\n1\t2\t4\t10\n1\t3\t5\t20\n1\t4\t1\t20\n2\t1\t5\t5\n2\t4\t5\t6\n")
    (d / "u.user").write_text("1|30|F|artist|1\n2|40|M|doctor|2\n")
    flags = "|".join(["0", "1"] + ["0"] * 17)
    (d / "u.item").write_text("".join(f"{i}|t|d||u|{flags}\n" for i in range(1, 6)))
    ds = data.load("ml-100k", d, max_len=3, cache=False)
    rows = {}
    for s in ds.splits.values():
        for k in range(len(s)):
            rows[(int(s["user_id"][k]), int(s["item_id"][k]))] = (int(s["hist_len"][k]), s["hist_item"][k].tolist())
    assert rows[(1, 1)] == (0, [0, 0, 0])  # the same-second rating of item 2 is not history
    assert rows[(1, 2)] == (0, [0, 0, 0])
    assert rows[(1, 3)] == (2, [1, 2, 0])  # ties enter the history in source-row order
    assert rows[(1, 4)] == (2, [1, 2, 0])  # item 3 (same second) is not history either
    assert rows[(2, 4)] == (1, [1, 0, 0])
    # item 5 was never rated, so it is not in the vocabulary
    assert ds.stats["items"] == 4


def test_history_keeps_the_most_recent(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "u.data").write_text("".join(f"1\t{i}\t5\t{100 + i}\n" for i in range(1, 21)))
    (d / "u.user").write_text("1|30|F|artist|1\n")
    flags = "|".join(["0", "1"] + ["0"] * 17)
    (d / "u.item").write_text("".join(f"{i}|t|d||u|{flags}\n" for i in range(1, 21)))
    ds = data.load("ml-100k", d, max_len=4, cache=False)
    last = ds.test
    assert last["item_id"].tolist() == [19, 20]
    assert last["hist_item"].tolist() == [[15, 16, 17, 18], [16, 17, 18, 19]]
    assert len(ds.train) == 16 and len(ds.valid) == 2


def test_determinism_and_seed(tmp_path, raw):
    ml = raw.movielens(seed=6)
    p = raw.grouplens_100k(tmp_path, ml)
    a = data.load("ml-100k", p, cache=False)
    b = data.load("ml-100k", p, cache=False)
    c = data.load("ml-100k", p, cache=False, seed=1)
    for s in ("train", "valid", "test"):
        for k in a[s].fields:
            np.testing.assert_array_equal(a[s][k], b[s][k])
        np.testing.assert_array_equal(a[s]["hist_item"], c[s]["hist_item"])
    assert not np.array_equal(a.train["neg_hist_item"], c.train["neg_hist_item"])


def test_user_with_few_ratings_stays_in_train(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    rows = [f"1\t{i}\t4\t{i}\n" for i in range(1, 10)] + [f"2\t{i}\t2\t{i}\n" for i in range(1, 11)]
    (d / "u.data").write_text("".join(rows))
    (d / "u.user").write_text("1|30|F|artist|1\n2|31|M|artist|1\n")
    flags = "|".join(["1"] + ["0"] * 18)
    (d / "u.item").write_text("".join(f"{i}|t|d||u|{flags}\n" for i in range(1, 11)))
    ds = data.load("ml-100k", d, cache=False)
    assert (ds.train["user_id"] == 1).sum() == 9  # 9 ratings: floor(0.9) = 0 held out
    assert (ds.valid["user_id"] == 2).sum() == 1 and (ds.test["user_id"] == 2).sum() == 1
    assert ds.schema.vocab_size("item_cat") == 20 and set(ds.train["item_cat"]) == {1}  # 'unknown'
