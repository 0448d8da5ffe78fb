"""MovieLens: ml-100k (embedded: fetched by name), ml-1m, ml-20m / ml-latest (by path).

Every rating is a sample, label ``rating > 3``; the history is the user's earlier positives;
"clicked" (what a negative history item must avoid) means *rated at all*, at any time. Category:
the film's first genre. Profile: age (bucketed as ML-1M's groups), gender, occupation (ml-100k,
ml-1m); none for the csv releases.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import cache
from .core import DataError, build_interaction_splits, encode, standard_fields
from .formats import Member, find_in_zip, read_table, resolve_members
from .source import Source

# GroupLens' genre order in u.item (the flags); "first genre" = first flag set in this order.
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
# ML-1M's age groups (1, 18, 25, 35, 45, 50, 56); ml-100k ages are bucketed the same way.
AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])
AGE_GROUPS = 7

RECBOLE_VERSION = "1.2.1"
RECBOLE_WHEEL = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
#: sha256 of the wheel file recbole-1.2.1-py3-none-any.whl on PyPI (checked against the download).
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_DIR = "recbole/dataset_example/ml-100k/"

OPTIONS = {}  # dataset-specific options beyond max_len / seed: none for MovieLens
LABEL_THRESHOLD = 3  # label = rating > 3


def age_bucket(age: np.ndarray) -> np.ndarray:
    """Ages to ML-1M's groups: 1 <18, 2 18-24, 3 25-34, 4 35-44, 5 45-49, 6 50-55, 7 56+."""
    return (np.searchsorted(AGE_EDGES, np.asarray(age), side="right") + 1).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Fetching the embedded ml-100k
# --------------------------------------------------------------------------------------------


def fetch_recbole_wheel(progress: Callable | None = None) -> Path:
    """The recbole wheel in ``<cache>/downloads``, fetched with pip and sha256-checked."""
    d = cache.cache_root() / "downloads"
    target = d / RECBOLE_WHEEL
    if target.is_file():
        if cache.file_sha256(target) == RECBOLE_SHA256:
            return target
        target.unlink()
    d.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=d, prefix=".pip-"))
    try:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "30",
            "-q", "-d", str(tmp), f"recbole=={RECBOLE_VERSION}",
        ]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
        except OSError as e:
            r = None
            err = str(e)
        else:
            err = (r.stderr or r.stdout or "").strip().splitlines()
            err = err[-1] if err else f"exit code {r.returncode}"
        got = tmp / RECBOLE_WHEEL
        if r is None or r.returncode != 0 or not got.is_file():
            raise DataError(
                f"ml-100k: could not download recbole=={RECBOLE_VERSION} from the package registry "
                f"with pip ({err}). Without registry access, pass path= (--path) to GroupLens' "
                f"ml-100k.zip, its extracted folder, or a copy of {RECBOLE_WHEEL}."
            )
        digest = cache.file_sha256(got)
        if digest != RECBOLE_SHA256:
            raise DataError(
                f"ml-100k: {RECBOLE_WHEEL} from the registry has sha256 {digest}, expected {RECBOLE_SHA256}"
            )
        os.replace(got, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

_HINT_100K = "expected GroupLens' ml-100k.zip or its folder (u.data, u.user, u.item), or the recbole wheel"


def sources_100k(path) -> Source:
    if path is None:
        # known content: the cache key needs no download; the wheel is fetched only to build
        return Source(
            fingerprint={RECBOLE_WHEEL: RECBOLE_SHA256},
            kind="recbole",
            description=f"{RECBOLE_WHEEL} from the package registry",
            fetch=lambda progress: _recbole_members(fetch_recbole_wheel(progress)),
        )
    p = Path(path).expanduser()
    if p.is_file() and zipfile.is_zipfile(p) and find_in_zip(p, "ml-100k.inter"):
        return Source.from_members(_recbole_members(p), "recbole", str(p))
    if p.is_dir() and not (p / "u.data").exists() and (p / "ml-100k.inter").exists():
        names = ["ml-100k.inter", "ml-100k.user", "ml-100k.item"]
        m = resolve_members(p, names, "ml-100k", _HINT_100K)
        return Source.from_members({n.rsplit(".", 1)[1]: m[n] for n in names}, "recbole", str(p))
    m = resolve_members(p, ["u.data", "u.user", "u.item"], "ml-100k", _HINT_100K)
    return Source.from_members({"inter": m["u.data"], "user": m["u.user"], "item": m["u.item"]}, "grouplens", str(p))


def _recbole_members(wheel: Path) -> dict[str, Member]:
    out = {}
    for part in ("inter", "user", "item"):
        name = f"{RECBOLE_DIR}ml-100k.{part}"
        with zipfile.ZipFile(wheel) as zf:
            if name not in zf.namelist():
                raise DataError(f"ml-100k: {wheel} has no member {name!r}")
        out[part] = Member(f"{wheel.name}:{name}", wheel, name)
    return out


def sources_1m(path) -> Source:
    if path is None:
        raise DataError("ml-1m: needs path= (--path) to GroupLens' ml-1m.zip or its extracted folder")
    m = resolve_members(path, ["ratings.dat", "users.dat", "movies.dat"], "ml-1m",
                        "expected GroupLens' ml-1m.zip or its folder (ratings.dat, users.dat, movies.dat)")
    return Source.from_members({"inter": m["ratings.dat"], "user": m["users.dat"], "item": m["movies.dat"]},
                               "ml-1m", str(path))


def sources_csv(name: str):
    def f(path) -> Source:
        if path is None:
            raise DataError(f"{name}: needs path= (--path) to GroupLens' {name}.zip or its folder (ratings.csv, movies.csv)")
        m = resolve_members(path, ["ratings.csv", "movies.csv"], name,
                            f"expected GroupLens' {name}.zip or its folder (ratings.csv, movies.csv)")
        return Source.from_members({"inter": m["ratings.csv"], "item": m["movies.csv"]}, "csv", str(path))

    return f


# --------------------------------------------------------------------------------------------
# Parsers: each returns ratings (user, item, rating, timestamp), items (item, cat) and profile
# --------------------------------------------------------------------------------------------


def _atomic_name(c: str) -> str:
    return c.split(":", 1)[0].strip()


def _parse_recbole(members):
    r = read_table(members["inter"], sep="\t", header_parser=_atomic_name,
                   required=["user_id", "item_id", "rating", "timestamp"],
                   numeric={"user_id": "int", "item_id": "int", "rating": "float", "timestamp": "int"})
    ratings = r.rename(columns={"user_id": "user", "item_id": "item"})
    u = read_table(members["user"], sep="\t", header_parser=_atomic_name,
                   required=["user_id", "age", "gender", "occupation"], numeric={"user_id": "int", "age": "int"})
    it = read_table(members["item"], sep="\t", header_parser=_atomic_name, required=["item_id", "class"],
                    numeric={"item_id": "int"})
    # class: space-separated genre names; first genre = lowest index in GroupLens' order
    gidx = {g: i + 1 for i, g in enumerate(GENRES_100K)}
    tokens = it["class"].astype(str).str.split(" ").explode()
    codes = tokens.map(gidx)
    if codes.isna().any():
        bad_row = int(np.flatnonzero(codes.isna().groupby(level=0).any().to_numpy())[0])
        from .formats import line_of_row

        line = line_of_row(members["item"], bad_row, 1, "utf-8")
        raise DataError(f"{members['item'].label}, line {line}: unknown genre in {it['class'].iloc[bad_row]!r}")
    cat = codes.groupby(level=0).min().to_numpy(np.int64)
    items = pd.DataFrame({"item": it["item_id"].to_numpy(np.int64), "cat": cat})
    profile = _profile_frame(u["user_id"], age_bucket(u["age"].to_numpy()), u["gender"], u["occupation"])
    return ratings[["user", "item", "rating", "timestamp"]], items, profile, np.array(GENRES_100K)


def _parse_grouplens_100k(members):
    ratings = read_table(members["inter"], sep="\t", header=False, columns=["user", "item", "rating", "timestamp"],
                         numeric={"user": "int", "item": "int", "rating": "float", "timestamp": "int"})
    u = read_table(members["user"], sep="|", header=False, columns=["user", "age", "gender", "occupation", "zip"],
                   required=["user", "age", "gender", "occupation"], numeric={"user": "int", "age": "int"})
    flags = [f"g{i}" for i in range(len(GENRES_100K))]
    cols = ["item", "title", "release", "video_release", "url"] + flags
    it = read_table(members["item"], sep="|", header=False, columns=cols, required=["item"] + flags,
                    numeric={"item": "int", **{f: "int" for f in flags}}, encoding="latin-1")
    f = it[flags].to_numpy(np.int64) > 0
    cat = np.where(f.any(1), f.argmax(1) + 1, 0)
    items = pd.DataFrame({"item": it["item"].to_numpy(np.int64), "cat": cat})
    profile = _profile_frame(u["user"], age_bucket(u["age"].to_numpy()), u["gender"], u["occupation"])
    return ratings, items, profile, np.array(GENRES_100K)


def _parse_1m(members):
    ratings = read_table(members["inter"], sep="::", header=False, columns=["user", "item", "rating", "timestamp"],
                         numeric={"user": "int", "item": "int", "rating": "float", "timestamp": "int"})
    u = read_table(members["user"], sep="::", header=False, columns=["user", "gender", "age", "occupation", "zip"],
                   required=["user", "gender", "age", "occupation"],
                   numeric={"user": "int", "age": "int", "occupation": "int"})
    it = read_table(members["item"], sep="::", header=False, columns=["item", "title", "genres"],
                    numeric={"item": "int"}, encoding="latin-1")
    items, cat_names = _first_genre(it)
    profile = _profile_frame(u["user"], age_bucket(u["age"].to_numpy()), u["gender"], u["occupation"])
    return ratings, items, profile, cat_names


def _parse_csv(members):
    r = read_table(members["inter"], sep=",", required=["userId", "movieId", "rating", "timestamp"],
                   numeric={"userId": "int", "movieId": "int", "rating": "float", "timestamp": "int"},
                   usecols=["userId", "movieId", "rating", "timestamp"])
    ratings = r.rename(columns={"userId": "user", "movieId": "item"})
    it = read_table(members["item"], sep=",", required=["movieId", "genres"], numeric={"movieId": "int"},
                    quoting=csv.QUOTE_MINIMAL, usecols=["movieId", "genres"])
    items, cat_names = _first_genre(it.rename(columns={"movieId": "item"}))
    return ratings, items, None, cat_names


def _first_genre(it: pd.DataFrame):
    first = it["genres"].astype(str).str.split("|", n=1).str[0].str.strip()
    first = first.where(~first.isin(["(no genres listed)", "", "nan"]))
    names = np.array(sorted(first.dropna().unique()), dtype=object)
    cat = np.zeros(len(first), np.int64)
    ok = first.notna().to_numpy()
    cat[ok] = np.searchsorted(names, first[ok].to_numpy(dtype=object)) + 1
    return pd.DataFrame({"item": it["item"].to_numpy(np.int64), "cat": cat}), names.astype(str)


def _profile_frame(user, age_group, gender, occupation):
    """Profile ids per raw user id, and each field's vocabulary size (with the 0 id)."""
    g = pd.Series(gender).astype(str).str.strip().str.upper().map({"F": 1, "M": 2}).fillna(0)
    occ = pd.Series(occupation)
    occ_vals = occ.to_numpy(np.int64) if occ.dtype.kind in "iu" else occ.astype(str).str.strip().to_numpy(dtype=object)
    occ_id, occ_vocab = encode(occ_vals)
    frame = pd.DataFrame(
        {
            "user": np.asarray(user, np.int64),
            "age": np.asarray(age_group, np.int64),
            "gender": g.to_numpy(np.int64),
            "occupation": occ_id,
        }
    )
    sizes = {"age": AGE_GROUPS + 1, "gender": 3, "occupation": len(occ_vocab) + 1}
    return frame, sizes, {"age": np.array(["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]),
                          "gender": np.array(["F", "M"]), "occupation": np.asarray(occ_vocab).astype(str)}


PARSERS = {"recbole": _parse_recbole, "grouplens": _parse_grouplens_100k, "ml-1m": _parse_1m, "csv": _parse_csv}


def build(name: str, source: Source, options: dict, progress: Callable | None = None):
    """Parse the raw files and build the splits; returns ``(schema, splits, extra_stats, vocab)``."""
    members = source.resolve(progress)
    ratings, items, profile, cat_names = PARSERS[source.kind](members)
    n_cats = len(cat_names)
    profile_vocab, profile_names = {}, {}
    if profile is not None:
        profile, profile_vocab, profile_names = profile
    if len(ratings) == 0:
        raise DataError(f"{members['inter'].label}: no ratings")

    uid, uvocab = encode(ratings["user"].to_numpy(np.int64))
    iid, ivocab = encode(ratings["item"].to_numpy(np.int64))
    n_users, n_items = len(uvocab), len(ivocab)

    # category per item id (0 when the item file does not list the film)
    item_cat = np.zeros(n_items + 1, np.int64)
    k, _ = encode(items["item"].to_numpy(np.int64), ivocab)
    ok = k > 0
    item_cat[k[ok]] = items["cat"].to_numpy(np.int64)[ok]

    user_columns = {}
    if profile is not None:
        pk, _ = encode(profile["user"].to_numpy(np.int64), uvocab)
        ok = pk > 0
        for f in ("age", "gender", "occupation"):
            col = np.zeros(n_users + 1, np.int64)
            col[pk[ok]] = profile[f].to_numpy(np.int64)[ok]
            user_columns[f] = col

    label = (ratings["rating"].to_numpy(np.float64) > LABEL_THRESHOLD).astype(np.float32)
    splits = build_interaction_splits(
        user=uid,
        item=iid,
        label=label,
        timestamp=ratings["timestamp"].to_numpy(np.int64),
        item_cat=item_cat,
        n_items=n_items,
        clicked_user=uid,  # "clicked" = rated, at any time
        clicked_item=iid,
        max_len=options["max_len"],
        seed=options["seed"],
        user_columns=user_columns,
        progress=progress,
    )
    schema = standard_fields(
        n_users=n_users, n_items=n_items, n_cats=n_cats, profile=profile_vocab, max_len=options["max_len"]
    )
    extra = {"interactions": int(len(ratings)), "source_format": source.kind}
    vocab = {"user_id": uvocab, "item_id": ivocab, "item_cat": cat_names, **profile_names}
    return schema, splits, extra, vocab
