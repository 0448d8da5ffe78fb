"""Amazon Electronics (McAuley's 2014 release) with DIN's preprocessing.

Files, by path (a folder, plain or ``.gz``): ``reviews_Electronics_5.json`` (one JSON object per
line: ``reviewerID``, ``asin``, ``unixReviewTime``, ...) and ``meta_Electronics.json`` (one
object per line, as JSON or as the Python literal the 2014 dump uses; ``asin``, ``categories``).

Every review is a positive sample whose history is the user's earlier reviews (strictly earlier
``unixReviewTime``); each positive gets one negative sample at the same time with the same
history, its item drawn uniformly from the reviewed items the user never reviewed. Category: the
last entry of ``categories[-1]``. A review and its negative stay in the same split.
"""
from __future__ import annotations

import ast
import gzip
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .core import DataError, build_interaction_splits, encode, rng_for, sample_unclicked, standard_fields, unique
from .formats import Member
from .source import Source

OPTIONS = {}
REVIEWS = "reviews_Electronics_5.json"
META = "meta_Electronics.json"
_CHUNK_LINES = 200_000


def _find(p: Path, name: str) -> Path:
    for c in (p / name, p / (name + ".gz")):
        if c.is_file():
            return c
    raise DataError(f"amazon-electronics: missing file {str(p / name)!r} (or {name}.gz)")


def sources(path, progress=None) -> Source:
    if path is None:
        raise DataError(
            f"amazon-electronics: needs path= (--path) to the folder holding {REVIEWS}(.gz) and {META}(.gz)"
        )
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"amazon-electronics: {str(p)!r} is not a folder (expected one holding {REVIEWS} and {META})")
    members = {"reviews": Member(str(_find(p, REVIEWS)), _find(p, REVIEWS)),
               "meta": Member(str(_find(p, META)), _find(p, META))}
    return Source.from_members(members, "amazon", str(p), progress)


def _lines(member: Member):
    """(line number, text) of the non-blank lines, in batches."""
    opener = gzip.open if member.path.suffix == ".gz" else open
    with opener(member.path, "rb") as f:
        text = io.TextIOWrapper(f, encoding="utf-8", errors="strict")
        batch_no, batch = [], []
        try:
            for lineno, line in enumerate(text, start=1):
                s = line.strip()
                if not s:
                    continue
                batch_no.append(lineno)
                batch.append(s)
                if len(batch) >= _CHUNK_LINES:
                    yield batch_no, batch
                    batch_no, batch = [], []
        except UnicodeDecodeError as e:
            raise DataError(f"{member.label}, after line {lineno}: not UTF-8 ({e})") from None
        if batch:
            yield batch_no, batch


def _bad_json_line(member, nos, lines):
    for no, s in zip(nos, lines):
        try:
            json.loads(s)
        except ValueError as e:
            return DataError(f"{member.label}, line {no}: malformed JSON ({e})")
    return DataError(f"{member.label}, lines {nos[0]}-{nos[-1]}: malformed JSON")


def read_reviews(member: Member, progress=None) -> pd.DataFrame:
    cols = ["reviewerID", "asin", "unixReviewTime"]
    parts = []
    it = _lines(member)
    if progress is not None:
        it = progress(it, desc="reviews", unit="chunk")
    for nos, lines in it:
        try:
            df = pd.read_json(io.StringIO("\n".join(lines)), lines=True, dtype=False)
        except ValueError:
            raise _bad_json_line(member, nos, lines) from None
        for c in cols:
            if c not in df.columns:
                raise DataError(f"{member.label}, line {nos[0]}: missing field {c!r}")
            na = df[c].isna().to_numpy()
            if na.any():
                raise DataError(f"{member.label}, line {nos[int(np.flatnonzero(na)[0])]}: missing field {c!r}")
        t = pd.to_numeric(df["unixReviewTime"], errors="coerce")
        if t.isna().any():
            row = int(np.flatnonzero(t.isna().to_numpy())[0])
            raise DataError(f"{member.label}, line {nos[row]}: 'unixReviewTime' is not a number")
        parts.append(pd.DataFrame({"user": df["reviewerID"].astype(str).to_numpy(dtype=object),
                                   "item": df["asin"].astype(str).to_numpy(dtype=object),
                                   "timestamp": t.to_numpy(np.int64)}))
    if not parts:
        raise DataError(f"{member.label}: no reviews")
    return pd.concat(parts, ignore_index=True)


def read_categories(member: Member, wanted: np.ndarray, progress=None) -> dict:
    """``{asin: category}`` for the asins in ``wanted``; category = categories[-1][-1]. Only the
    lines of wanted asins are parsed (the asin is found by a regular expression first)."""
    out = {}
    wanted = set(wanted.tolist())
    asin_re = r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]"""
    it = _lines(member)
    if progress is not None:
        it = progress(it, desc="meta", unit="chunk")
    for nos, lines in it:
        s = pd.Series(lines, dtype=object)
        asin = s.str.extract(asin_re, expand=False)
        keep = (asin.isna() | asin.isin(wanted)).to_numpy()
        for k in np.flatnonzero(keep):
            line = lines[k]
            try:
                rec = json.loads(line)
            except ValueError:
                try:
                    rec = ast.literal_eval(line)
                except (ValueError, SyntaxError) as e:
                    raise DataError(f"{member.label}, line {nos[k]}: malformed record ({e.__class__.__name__})") from None
            if not isinstance(rec, dict) or "asin" not in rec:
                raise DataError(f"{member.label}, line {nos[k]}: missing field 'asin'")
            cats = rec.get("categories")
            cat = None
            if isinstance(cats, list) and cats and isinstance(cats[-1], list) and cats[-1]:
                cat = str(cats[-1][-1])
            out[str(rec["asin"])] = cat
    return out


def build(name: str, source: Source, options: dict, progress: Callable | None = None):
    members = source.resolve(progress)
    rv = read_reviews(members["reviews"], progress)
    uid, uvocab = encode(rv["user"].to_numpy(dtype=object))
    iid, ivocab = encode(rv["item"].to_numpy(dtype=object))
    n_users, n_items = len(uvocab), len(ivocab)

    cats = read_categories(members["meta"], ivocab, progress)
    names = np.array(sorted({c for c in cats.values() if c is not None}), dtype=object)
    item_cat = np.zeros(n_items + 1, np.int64)
    if len(names):
        item_names = np.array([cats.get(a) for a in ivocab], dtype=object)
        known = np.array([c is not None for c in item_names], bool)
        item_cat[1:][known] = np.searchsorted(names, item_names[known].astype(str)) + 1

    ts = rv["timestamp"].to_numpy(np.int64)
    n = len(rv)
    keys = unique(uid * (n_items + 1) + iid)
    neg_item = sample_unclicked(uid, n_items, keys, rng_for(options["seed"], 2))
    # rows: review 0, its negative, review 1, its negative, ... (a negative follows its review)
    user = np.repeat(uid, 2)
    item = np.empty(2 * n, np.int64)
    item[0::2], item[1::2] = iid, neg_item
    label = np.tile(np.array([1, 0], np.float32), n)
    splits = build_interaction_splits(
        user=user,
        item=item,
        label=label,
        timestamp=np.repeat(ts, 2),
        item_cat=item_cat,
        n_items=n_items,
        clicked_user=uid,  # "clicked" = reviewed, at any time
        clicked_item=iid,
        max_len=options["max_len"],
        seed=options["seed"],
        event=np.repeat(np.arange(n), 2),
        progress=progress,
    )
    schema = standard_fields(n_users=n_users, n_items=n_items, n_cats=len(names), profile={},
                             max_len=options["max_len"])
    extra = {"interactions": int(n), "items_without_category": int((item_cat[1:] == 0).sum())}
    vocab = {"user_id": uvocab.astype(str), "item_id": ivocab.astype(str), "item_cat": names.astype(str)}
    return schema, splits, extra, vocab
