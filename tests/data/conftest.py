"""Fixtures for the data-layer tests: tiny raw files in every supported format, written here
(never real data in the repo), a private cache folder per test, and a brute-force checker of
the sample rules (history, splits, negatives)."""
from __future__ import annotations

import gzip
import json
import zipfile
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from udg_fast.data.movielens import GENRES_100K


def _zip_folder(d, z):
    """The files of folder `d` into zip `z` under `d.name/`, as the GroupLens archives are laid out."""
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(d.iterdir()):
            zf.write(f, f"{d.name}/{f.name}")
    return z


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    """Every test gets its own cache folder: tests never touch ~/.cache/udg_fast."""
    home = tmp_path / "udg_cache"
    monkeypatch.setenv("UDG_FAST_DATA", str(home))
    return home


# --------------------------------------------------------------------------------------------
# A tiny MovieLens-like table: users 1..U and items 1..I all present, ties in time on purpose
# --------------------------------------------------------------------------------------------

OCCUPATIONS = ["artist", "doctor", "engineer", "student", "writer"]


def tiny_movielens(seed: int = 0, n_users: int = 12, n_items: int = 30, with_ties: bool = True):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        n = int(rng.integers(8, 26))
        items = rng.choice(n_items, size=min(n, n_items), replace=False) + 1
        base = 880_000_000 + int(rng.integers(0, 10_000_000))
        # coarse steps so that several ratings of a user share a second
        steps = rng.integers(0, n // 2 if with_ties else 10_000, size=len(items))
        ts = base + (steps * 10 if with_ties else rng.permutation(10_000)[: len(items)] * 7)
        for it, t in zip(items, ts):
            rows.append((u, int(it), int(rng.integers(1, 6)), int(t)))
    # every item rated at least once (so dense ids equal raw ids)
    rated = {r[1] for r in rows}
    for it in range(1, n_items + 1):
        if it not in rated:
            rows.append((1, it, 4, 880_000_000 + it))
    order = rng.permutation(len(rows))  # source files are not sorted
    rows = [rows[i] for i in order]
    users = []
    for u in range(1, n_users + 1):
        users.append((u, int(rng.integers(7, 70)), "MF"[u % 2], OCCUPATIONS[u % len(OCCUPATIONS)], f"{10000 + u}"))
    items = []
    for it in range(1, n_items + 1):
        k = int(rng.integers(1, 4))
        g = sorted(rng.choice(len(GENRES_100K), size=k, replace=False).tolist())
        items.append((it, f"Movie {it} (1995)", g))
    return SimpleNamespace(ratings=rows, users=users, items=items, n_users=n_users, n_items=n_items)


def write_grouplens_100k(root: Path, ml, as_zip: bool = False) -> Path:
    d = root / "ml-100k"
    d.mkdir(parents=True, exist_ok=True)
    (d / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ml.ratings))
    (d / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in ml.users))
    lines = []
    for it, title, gs in ml.items:
        flags = "|".join("1" if k in gs else "0" for k in range(len(GENRES_100K)))
        lines.append(f"{it}|{title}|01-Jan-1995||http://example.org/{it}|{flags}\n")
    (d / "u.item").write_bytes("".join(lines).encode("latin-1"))
    return _zip_folder(d, root / "ml-100k.zip") if as_zip else d


def recbole_texts(ml) -> dict[str, str]:
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter += "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ml.ratings)
    user = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    user += "".join(f"{u}\t{a}\t{g}\t{o}\t{z}\n" for u, a, g, o, z in ml.users)
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    item += "".join(f"{it}\t{title}\t1995\t{' '.join(GENRES_100K[k] for k in gs)}\n" for it, title, gs in ml.items)
    return {"inter": inter, "user": user, "item": item}


def write_recbole(root: Path, ml, as_wheel: bool = False) -> Path:
    texts = recbole_texts(ml)
    root.mkdir(parents=True, exist_ok=True)
    if as_wheel:
        w = root / "recbole-1.2.1-py3-none-any.whl"
        with zipfile.ZipFile(w, "w") as zf:
            for k, v in texts.items():
                zf.writestr(f"recbole/dataset_example/ml-100k/ml-100k.{k}", v)
        return w
    d = root / "atomic"
    d.mkdir(parents=True, exist_ok=True)
    for k, v in texts.items():
        (d / f"ml-100k.{k}").write_text(v)
    return d


def write_ml1m(root: Path, ml, as_zip: bool = False) -> Path:
    d = root / "ml-1m"
    d.mkdir(parents=True, exist_ok=True)
    ages = [1, 18, 25, 35, 45, 50, 56]
    (d / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ml.ratings))
    (d / "users.dat").write_text(
        "".join(f"{u}::{g}::{ages[u % 7]}::{u % 21}::{z}\n" for u, a, g, o, z in ml.users)
    )
    (d / "movies.dat").write_bytes(
        "".join(f"{it}::Caf\u00e9 {it}: The Movie (1995)::{'|'.join(GENRES_100K[k] for k in gs if k)}\n"
                for it, title, gs in ml.items).encode("latin-1")
    )
    return _zip_folder(d, root / "ml-1m.zip") if as_zip else d


def csv_rating(r: int) -> float:
    """The csv fixture's half-star ratings: 2 -> 1.5, 4 -> 3.5 (a positive), odd ones kept."""
    return r - 0.5 if r % 2 == 0 else float(r)


def write_ml_csv(root: Path, ml, name: str = "ml-latest-small") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{csv_rating(r):.1f},{t}\n"
                                                         for u, i, r, t in ml.ratings)
    )
    lines = ["movieId,title,genres\n"]
    for it, title, gs in ml.items:
        genres = "|".join(GENRES_100K[k] for k in gs if k) or "(no genres listed)"
        lines.append(f'{it},"Movie {it}, The (1995)",{genres}\n')
    (d / "movies.csv").write_text("".join(lines))
    return d


# --------------------------------------------------------------------------------------------
# Amazon and Alimama
# --------------------------------------------------------------------------------------------


def tiny_amazon(seed: int = 0, n_users: int = 9, n_items: int = 16):
    rng = np.random.default_rng(seed)
    reviews = []
    for u in range(n_users):
        k = int(rng.integers(5, 12))
        items = rng.choice(n_items, size=k, replace=False)
        days = np.sort(rng.integers(0, k, size=k))  # day granularity: same-day ties
        for it, d in zip(items, days):
            reviews.append((f"U{u:03d}X", f"B{it:04d}", 1_300_000_000 + int(d) * 86400))
    order = rng.permutation(len(reviews))
    reviews = [reviews[i] for i in order]
    cats = {f"B{i:04d}": ["Electronics", ["Audio", "Camera", "Phone"][i % 3], f"Leaf{i % 4}"] for i in range(n_items)}
    return SimpleNamespace(reviews=reviews, cats=cats, n_items=n_items)


def write_amazon(root: Path, am, gz: bool = False, drop_meta_for: tuple = ("B0003",)) -> Path:
    d = root / "amazon"
    d.mkdir(parents=True, exist_ok=True)
    rv = "".join(
        json.dumps({"reviewerID": u, "asin": a, "reviewerName": "x", "helpful": [0, 0], "reviewText": "ok",
                    "overall": 5.0, "summary": "s", "unixReviewTime": t, "reviewTime": "01 1, 2011"}) + "\n"
        for u, a, t in am.reviews
    )
    meta_lines = []
    for i, (a, c) in enumerate(sorted(am.cats.items())):
        if a in drop_meta_for:
            continue
        rec = {"asin": a, "title": f"Thing {i}", "categories": [["Electronics"], c]}
        # the 2014 dump is Python literals; mix in JSON lines too
        meta_lines.append((repr(rec) if i % 2 else json.dumps(rec)) + "\n")
    meta_lines.append(repr({"asin": "ZZZ_NOT_REVIEWED", "categories": [["Other"]]}) + "\n")
    meta = "".join(meta_lines)
    if gz:
        with gzip.open(d / "reviews_Electronics_5.json.gz", "wt") as f:
            f.write(rv)
        with gzip.open(d / "meta_Electronics.json.gz", "wt") as f:
            f.write(meta)
    else:
        (d / "reviews_Electronics_5.json").write_text(rv)
        (d / "meta_Electronics.json").write_text(meta)
    return d


DAY0 = 1_494_000_000  # 2017-05-06 00:00 Beijing time


def tiny_alimama(seed: int = 0, n_users: int = 10, n_ads: int = 24):
    rng = np.random.default_rng(seed)
    users = [1000 + 7 * k for k in range(n_users)]
    ads = []
    for a in range(n_ads):
        brand = None if a % 7 == 6 else 300 + a % 10  # some brands unknown (NaN)
        ads.append((5000 + a, 40 + a % 4, 70 + a % 3, 90 + a % 5, brand, float(rng.integers(1, 500))))
    samples = []
    for u in users:
        for _ in range(int(rng.integers(4, 10))):
            day = int(rng.integers(-1, 9))  # -1 (0505) and 8 (0514) are outside the study
            t = DAY0 + day * 86400 + int(rng.integers(0, 86400))
            ad = ads[int(rng.integers(n_ads))]
            samples.append((u, t, ad[0], f"430548_10{int(rng.integers(7, 9))}", int(rng.integers(0, 2))))
    # two impressions at the same second: neither sees the other's time in its history
    samples.append((users[0], DAY0 + 3 * 86400 + 500, ads[0][0], "430548_1007", 1))
    samples.append((users[0], DAY0 + 3 * 86400 + 500, ads[1][0], "430548_1007", 0))
    log = []
    for u in users + [9999]:  # 9999 has no impression: its log is ignored
        for _ in range(int(rng.integers(20, 60))):
            t = DAY0 + int(rng.integers(-5 * 86400, 8 * 86400))
            btag = ["pv", "pv", "pv", "cart", "fav", "buy"][int(rng.integers(6))]
            brand = None if rng.random() < 0.1 else 300 + int(rng.integers(0, 9))
            log.append((u, t, btag, 40 + int(rng.integers(0, 7)), brand))
    # a page view at exactly an impression's time must not be in that impression's history
    log.append((users[0], DAY0 + 3 * 86400 + 500, "pv", 41, 301))
    rng.shuffle(log)
    profiles = []
    for k, u in enumerate(users[:-1]):  # the last user has no profile row
        pvalue = "" if k % 3 == 0 else str(1 + k % 3)
        ncl = "" if k % 4 == 0 else str(1 + k % 4)
        profiles.append((u, k % 3, k % 2, 1 + k % 2, k % 6, pvalue, 1 + k % 3, k % 2, ncl))
    return SimpleNamespace(users=users, ads=ads, samples=samples, log=log, profiles=profiles)


def write_alimama(root: Path, al) -> Path:
    d = root / "alimama"
    d.mkdir(parents=True, exist_ok=True)
    (d / "raw_sample.csv").write_text(
        "user,time_stamp,adgroup_id,pid,nonclk,clk\n"
        + "".join(f"{u},{t},{a},{p},{1 - c},{c}\n" for u, t, a, p, c in al.samples)
    )
    (d / "ad_feature.csv").write_text(
        "adgroup_id,cate_id,campaign_id,customer,brand,price\n"
        + "".join(f"{a},{c},{cp},{cu},{'' if b is None else b},{p}\n" for a, c, cp, cu, b, p in al.ads)
    )
    (d / "user_profile.csv").write_text(
        "userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,occupation,"
        "new_user_class_level \n" + "".join(",".join(str(x) for x in p) + "\n" for p in al.profiles)
    )
    (d / "behavior_log.csv").write_text(
        "user,time_stamp,btag,cate,brand\n"
        + "".join(f"{u},{t},{b},{c},{'' if br is None else br}\n" for u, t, b, c, br in al.log)
    )
    return d


@pytest.fixture
def rules():
    """The brute-force checkers below."""
    return SimpleNamespace(
        interaction=check_interaction_rules, chronological=check_chronological, schema=check_schema, rows=all_rows
    )


@pytest.fixture
def raw():
    """Writers of tiny raw files: ``raw.grouplens_100k(tmp_path, raw.movielens())`` etc."""
    return SimpleNamespace(
        movielens=tiny_movielens,
        csv_rating=csv_rating,
        grouplens_100k=write_grouplens_100k,
        recbole=write_recbole,
        recbole_texts=recbole_texts,
        ml1m=write_ml1m,
        ml_csv=write_ml_csv,
        amazon_data=tiny_amazon,
        amazon=write_amazon,
        alimama_data=tiny_alimama,
        alimama=write_alimama,
    )


# --------------------------------------------------------------------------------------------
# Brute-force checks of the sample rules
# --------------------------------------------------------------------------------------------


def all_rows(ds):
    """Every sample of every split as dicts, with the split name."""
    out = []
    for name in ("train", "valid", "test"):
        s = ds[name]
        cols = {k: s[k] for k in s.fields}
        for i in range(len(s)):
            out.append({"split": name, **{k: cols[k][i] for k in cols}})
    return out


def check_interaction_rules(ds, events, clicked, item_cat, max_len):
    """``events``: per source row (user, item, label, ts) in source order, dense ids.

    Checks, for every sample: its history is the user's label-1 events strictly earlier in time,
    oldest first (ties in source order), the last ``max_len``; padding is 0; negative history
    items are never clicked by the user and carry their category; per user the splits are
    chronological with floor(n/10) events in valid and in test.
    """
    by_user = defaultdict(list)
    for row, (u, it, y, t) in enumerate(events):
        by_user[u].append((t, row, it, y))
    for u in by_user:
        by_user[u].sort()
    seen = 0
    for r in all_rows(ds):
        u, t = int(r["user_id"]), int(r["timestamp"])
        expect = [it for (tt, _, it, y) in by_user[u] if tt < t and y > 0][-max_len:]
        n = int(r["hist_len"])
        assert n == len(expect), (r, expect)
        assert list(r["hist_item"][:n]) == expect
        assert not r["hist_item"][n:].any() and not r["hist_cat"][n:].any()
        assert list(r["hist_cat"][:n]) == [item_cat[i] for i in expect]
        neg = r["neg_hist_item"]
        assert (neg[:n] > 0).all() and not neg[n:].any() and not r["neg_hist_cat"][n:].any()
        for x in neg[:n]:
            assert (u, int(x)) not in clicked, (u, x)
        assert list(r["neg_hist_cat"][:n]) == [item_cat[int(x)] for x in neg[:n]]
        assert r["item_cat"] == item_cat[int(r["item_id"])]
        seen += 1
    assert seen == sum(len(ds[s]) for s in ("train", "valid", "test"))


def check_chronological(ds, events_per_user=None):
    """Per user: max train time <= min valid time <= min test time; with ``events_per_user``
    (user -> number of events, one sample each) also the sizes n - 2*(n//10), n//10, n//10."""
    per = defaultdict(dict)
    for name in ("train", "valid", "test"):
        s = ds[name]
        for u in np.unique(s["user_id"]):
            per[int(u)][name] = s["timestamp"][s["user_id"] == u]
    for u, d in per.items():
        tr, va, te = (d.get(k, np.zeros(0, np.int64)) for k in ("train", "valid", "test"))
        if len(tr) and len(va):
            assert tr.max() <= va.min(), u
        if len(va) and len(te):
            assert va.max() <= te.min(), u
        if len(tr) and len(te):
            assert tr.max() <= te.min(), u
        if events_per_user is not None:
            n = events_per_user[u]
            assert (len(tr), len(va), len(te)) == (n - 2 * (n // 10), n // 10, n // 10), (u, n)


def check_schema(ds):
    """Every categorical field's ids are within its vocabulary; arrays match the schema."""
    for name in ("train", "valid", "test"):
        s = ds[name]
        assert set(s.fields) == set(ds.schema.names)
        for f in ds.schema:
            a = s[f.name]
            assert a.dtype == np.dtype(f.dtype), (f.name, a.dtype)
            assert a.shape[1:] == tuple(f.shape), (f.name, a.shape)
            assert a.flags.c_contiguous
            if f.vocab_size is not None and len(a):
                assert a.min() >= 0 and a.max() < f.vocab_size, (f.name, a.max(), f.vocab_size)
        if len(s):
            assert set(np.unique(s["label"])) <= {0.0, 1.0}
            assert (s["hist_len"] <= ds.schema.max_len).all()
