"""Alimama / Taobao display ads (Tianchi dataset 56), by path.

Files: ``raw_sample.csv`` (user, time_stamp, adgroup_id, pid, nonclk, clk), ``ad_feature.csv``
(adgroup_id, cate_id, campaign_id, customer, brand, price), ``user_profile.csv`` (userid and
eight profile columns; the last header name has a trailing space), ``behavior_log.csv`` (user,
time_stamp, btag, cate, brand; about 700M rows, streamed in chunks, never loaded whole).

A sample is one ad impression, label ``clk``. The behaviour the log records is categories and
brands, not ads, so -- as in DSIN's use of this data -- ``item_id`` is the ad's **brand** and
``item_cat`` its category, and ``hist_item`` / ``hist_cat`` are the brand / category of the
user's page views (``btag == "pv"``) strictly before the impression's time, the most recent
``max_len``. The ad itself is in the item fields ``adgroup_id``, ``campaign_id``, ``customer``,
``price_level`` (price in 20 quantile buckets); ``pid`` (the placement) is a context field.

Split by day (Beijing time, UTC+8): 2017-05-06..05-12 train, 05-13 test, as the dataset's
publishers do; ``valid`` is empty unless ``valid_day="0512"`` (or another training day) moves one
day out of train. Rows outside these days are dropped (counted in ``dropped_rows``).

Approximations, documented: a negative history step is a (brand, category) pair drawn uniformly
from the ad catalogue whose brand is not among the *same sample's* history brands (not the user's
whole log); ``sample_frac`` < 1 keeps a seeded random subset of users.

Memory: the log is streamed into ``n_buckets`` temporary files by user (32 bytes per kept page
view, on disk, under the cache folder) and each bucket is processed on its own; the output holds
``N * max_len * 32`` bytes of history arrays (about 42 GB for all 26M samples at max_len 50: use
``sample_frac`` or a smaller ``max_len`` on a small machine).
"""
from __future__ import annotations

import csv
import datetime as dt
import math
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import cache
from .core import DataError, encode, fill_history, isin_sorted, rng_for, slice_splits, standard_fields, unique
from .formats import Member, read_table, resolve_members
from .source import Source

OPTIONS = {"sample_frac": 1.0, "valid_day": None, "chunk_rows": 5_000_000, "n_buckets": 0}
#: options that change only speed / memory, not the result: left out of the cache key
PERF_OPTIONS = ("chunk_rows", "n_buckets")

FILES = ("raw_sample.csv", "ad_feature.csv", "user_profile.csv", "behavior_log.csv")
PROFILE_FIELDS = (
    "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
    "shopping_level", "occupation", "new_user_class_level",
)
TZ_OFFSET = 8 * 3600  # the days are Beijing days
FIRST_DAY = dt.date(2017, 5, 6)
TRAIN_DAYS = 7  # 0506..0512
PRICE_BUCKETS = 20
_REC = np.dtype([("u", "<i8"), ("t", "<i8"), ("c", "<i8"), ("b", "<i8")])
_HINT = "expected a folder or zip with " + ", ".join(FILES)


def sources(path, progress=None) -> Source:
    if path is None:
        raise DataError(f"alimama: needs path= (--path) to the Tianchi files ({_HINT})")
    m = resolve_members(path, FILES, "alimama", _HINT)
    return Source.from_members(m, "alimama", str(path), progress)


def _day_code(name: str) -> int:
    """'0512' -> day index from 0506 (0..7)."""
    try:
        d = dt.date(2017, int(name[:2]), int(name[2:]))
    except (ValueError, TypeError, IndexError):
        raise DataError(f"alimama: option 'valid_day' must be a day such as '0512', got {name!r}") from None
    k = (d - FIRST_DAY).days
    if not 0 <= k < TRAIN_DAYS:
        raise DataError(f"alimama: option 'valid_day' must be a training day 0506..0512, got {name!r}")
    return k


def _validate(o):
    f = o["sample_frac"]
    if not isinstance(f, (int, float)) or not 0 < f <= 1:
        raise DataError(f"alimama: option 'sample_frac' must be in (0, 1], got {f!r}")
    for k in ("chunk_rows", "n_buckets"):
        if not isinstance(o[k], (int, np.integer)) or o[k] < 0 or (k == "chunk_rows" and o[k] < 1):
            raise DataError(f"alimama: option {k!r} must be a positive integer, got {o[k]!r}")


def _dense_or_zero(values: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    ids, _ = encode(values, vocab)
    return ids


def build(name: str, source: Source, options: dict, progress: Callable | None = None):
    o = options
    _validate(o)
    valid_day = None if o["valid_day"] in (None, "") else _day_code(str(o["valid_day"]))
    m = source.resolve(progress)
    L = int(o["max_len"])

    # ---- impressions --------------------------------------------------------------------------
    rs = read_table(
        m["raw_sample.csv"], sep=",", quoting=csv.QUOTE_MINIMAL,
        required=["user", "time_stamp", "adgroup_id", "pid", "clk"],
        numeric={"user": "int", "time_stamp": "int", "adgroup_id": "int", "clk": "int"},
        usecols=["user", "time_stamp", "adgroup_id", "pid", "clk"],
    )
    clk = rs["clk"].to_numpy(np.int64)
    bad = (clk != 0) & (clk != 1)
    if bad.any():
        raise DataError(f"{m['raw_sample.csv'].label}, line {int(np.flatnonzero(bad)[0]) + 2}: 'clk' must be 0 or 1")
    ts = rs["time_stamp"].to_numpy(np.int64)
    if len(ts) and (ts.min() < 0 or ts.max() >= 1 << 32):
        raise DataError(f"{m['raw_sample.csv'].label}: 'time_stamp' must be unix seconds in [0, 2^32)")
    epoch0 = (FIRST_DAY - dt.date(1970, 1, 1)).days
    day = (ts + TZ_OFFSET) // 86400 - epoch0
    code = np.full(len(rs), -1, np.int64)
    code[(day >= 0) & (day < TRAIN_DAYS)] = 0
    code[day == TRAIN_DAYS] = 2
    if valid_day is not None:
        code[day == valid_day] = 1
    raw_user = rs["user"].to_numpy(np.int64)
    keep = code >= 0
    if o["sample_frac"] < 1:
        users_all = unique(raw_user)
        chosen = users_all[rng_for(o["seed"], 7).random(len(users_all)) < o["sample_frac"]]
        keep &= np.isin(raw_user, chosen)
    dropped = int((~keep).sum())
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise DataError(f"{m['raw_sample.csv'].label}: no impressions on days 0506..0513 (Beijing time)")
    raw_user, ts, code, clk = raw_user[rows], ts[rows], code[rows], clk[rows]
    adgroup = rs["adgroup_id"].to_numpy(np.int64)[rows]
    pid_raw = rs["pid"].astype(str).to_numpy(dtype=object)[rows]
    del rs
    uid, uvocab = encode(raw_user)
    n_users = len(uvocab)

    # ---- ads --------------------------------------------------------------------------------------
    ad = read_table(
        m["ad_feature.csv"], sep=",", quoting=csv.QUOTE_MINIMAL,
        required=["adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price"],
        nullable=["brand", "price", "campaign_id", "customer"],
        numeric={"adgroup_id": "int", "cate_id": "int", "campaign_id": "int", "customer": "int",
                 "brand": "int", "price": "float"},
    )
    ad_id = ad["adgroup_id"].to_numpy(np.int64)
    ad_cate = ad["cate_id"].to_numpy(np.int64)
    ad_brand = ad["brand"].to_numpy(np.float64)  # NaN: brand unknown

    # ---- profiles ---------------------------------------------------------------------------------
    up = read_table(
        m["user_profile.csv"], sep=",", quoting=csv.QUOTE_MINIMAL,
        required=["userid", *PROFILE_FIELDS], nullable=PROFILE_FIELDS,
        numeric={"userid": "int", **{f: "int" for f in PROFILE_FIELDS}},
    )
    pk = _dense_or_zero(up["userid"].to_numpy(np.int64), uvocab)
    user_columns, profile_vocab, profile_names = {}, {}, {}
    for f in PROFILE_FIELDS:
        v = up[f].to_numpy(np.float64)
        ok = ~np.isnan(v)
        ids = np.zeros(len(v), np.int64)
        ids[ok], voc = encode(v[ok].astype(np.int64))
        col = np.zeros(n_users + 1, np.int64)
        hit = pk > 0
        col[pk[hit]] = ids[hit]
        user_columns[f] = col
        profile_vocab[f] = len(voc) + 1
        profile_names[f] = voc
    del up

    # ---- behaviour log: stream, keep page views of sampled users, bucket by user -----------------
    t_max = int(ts.max())
    n_buckets = o["n_buckets"] or max(1, math.ceil(_size(m["behavior_log.csv"]) / (1 << 30)))
    tmpdir = Path(tempfile.mkdtemp(dir=_tmp_parent(), prefix=".alimama-"))
    try:
        cates, brands, log_rows, pv_rows = _bucket_log(
            m["behavior_log.csv"], uvocab, t_max, n_buckets, tmpdir, o["chunk_rows"], progress
        )
        cate_vocab = unique(np.concatenate([cates, ad_cate]))
        brand_vocab = unique(np.concatenate([brands, ad_brand[~np.isnan(ad_brand)].astype(np.int64)]))
        n_cats, n_brands = len(cate_vocab), len(brand_vocab)

        # per-ad dense features
        ad_cate_id = _dense_or_zero(ad_cate, cate_vocab)
        ad_brand_id = np.zeros(len(ad_id), np.int64)
        known = ~np.isnan(ad_brand)
        ad_brand_id[known] = _dense_or_zero(ad_brand[known].astype(np.int64), brand_vocab)
        camp_id, camp_voc = _encode_nullable(ad["campaign_id"].to_numpy(np.float64))
        cust_id, cust_voc = _encode_nullable(ad["customer"].to_numpy(np.float64))
        price_id = _price_levels(ad["price"].to_numpy(np.float64))

        # impressions in output order: split, user, time, file order
        order = np.lexsort((ts, uid, code))
        counts = np.bincount(code, minlength=3)
        uid, ts, clk, adgroup, pid_raw = uid[order], ts[order], clk[order], adgroup[order], pid_raw[order]
        n = len(uid)
        ad_row = _lookup(ad_id, adgroup)  # -1: ad not in ad_feature
        def per_ad(col):
            out = np.zeros(n, np.int64)
            ok = ad_row >= 0
            out[ok] = col[ad_row[ok]]
            return out

        adg_id, adg_voc = encode(adgroup)
        pid_id, pid_voc = encode(pid_raw)
        cols = {
            "user_id": uid,
            "item_id": per_ad(ad_brand_id),
            "item_cat": per_ad(ad_cate_id),
            "adgroup_id": adg_id,
            "campaign_id": per_ad(camp_id),
            "customer": per_ad(cust_id),
            "price_level": per_ad(price_id),
        }
        for f in PROFILE_FIELDS:
            cols[f] = user_columns[f][uid]
        cols["pid"] = pid_id
        hist_b = np.zeros((n, L), np.int64)
        hist_c = np.zeros((n, L), np.int64)
        hist_len = np.zeros(n, np.int64)

        # ---- histories, one bucket at a time ---------------------------------------------------
        bucket_of = uid % n_buckets
        by_bucket = np.argsort(bucket_of, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(bucket_of, minlength=n_buckets))])
        it = range(n_buckets)
        if progress is not None:
            it = progress(it, desc="alimama histories", unit="bucket")
        for b in it:
            rows_b = by_bucket[bounds[b] : bounds[b + 1]]
            path = tmpdir / f"{b}.bin"
            if len(rows_b) == 0:
                continue
            rec = np.fromfile(path, dtype=_REC) if path.exists() else np.zeros(0, _REC)
            srt = np.lexsort((rec["t"], rec["u"]))  # stable: equal times keep log order
            u_s, t_s = rec["u"][srt], rec["t"][srt]
            c_s = _dense_or_zero(rec["c"][srt], cate_vocab)
            b_s = np.zeros(len(srt), np.int64)
            kb = rec["b"][srt] >= 0
            b_s[kb] = _dense_or_zero(rec["b"][srt][kb], brand_vocab)
            del rec, srt
            keys = (u_s << 32) | t_s
            su, st = uid[rows_b], ts[rows_b]
            end = np.searchsorted(keys, (su << 32) | st, side="left")  # strictly earlier views
            start = np.searchsorted(keys, su << 32, side="left")
            hl = np.minimum(end - start, L)
            hb, hc = fill_history(end, hl, [b_s, c_s], L)
            hist_b[rows_b], hist_c[rows_b], hist_len[rows_b] = hb, hc, hl
            del hb, hc, keys, u_s, t_s, c_s, b_s
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    # ---- negative history: catalogue (brand, cate) pairs not in the sample's own history -------
    pairs = np.unique(np.stack([ad_brand_id, ad_cate_id], 1)[ad_brand_id > 0], axis=0)
    neg_b, neg_c = _sample_neg(hist_b, hist_len, pairs, rng_for(o["seed"], 3))

    cols.update(
        hist_item=hist_b, hist_cat=hist_c, neg_hist_item=neg_b, neg_hist_cat=neg_c, hist_len=hist_len,
        label=clk.astype(np.float32), timestamp=ts,
    )
    splits = slice_splits(cols, counts)
    schema = standard_fields(
        n_users=n_users, n_items=n_brands, n_cats=n_cats, profile=profile_vocab, max_len=L,
        item_extra={"adgroup_id": len(adg_voc) + 1, "campaign_id": len(camp_voc) + 1,
                    "customer": len(cust_voc) + 1, "price_level": PRICE_BUCKETS + 1},
        context={"pid": len(pid_voc) + 1},
    )
    extra = {
        "interactions": int(n), "dropped_rows": dropped, "behavior_rows": int(log_rows),
        "page_views_used": int(pv_rows), "n_buckets": int(n_buckets),
        "note": "item_id = the ad's brand, item_cat = its category (see docs/data.md)",
    }
    vocab = {"user_id": uvocab, "item_id": brand_vocab, "item_cat": cate_vocab, "adgroup_id": adg_voc,
             "campaign_id": camp_voc, "customer": cust_voc, "pid": np.asarray(pid_voc).astype(str),
             **profile_names}
    return schema, splits, extra, vocab


def _size(member: Member) -> int:
    if member.member is None:
        return member.path.stat().st_size
    import zipfile

    with zipfile.ZipFile(member.path) as zf:
        return zf.getinfo(member.member).file_size


def _tmp_parent() -> Path:
    d = cache.cache_root() / "alimama"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _lookup(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Row of each value in ``keys`` (first occurrence), -1 if absent."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    if len(sk) == 0:
        return np.full(len(values), -1, np.int64)
    pos = np.clip(np.searchsorted(sk, values), 0, len(sk) - 1)
    return np.where(sk[pos] == values, order[pos], -1)


def _encode_nullable(v: np.ndarray):
    ok = ~np.isnan(v)
    ids = np.zeros(len(v), np.int64)
    ids[ok], voc = encode(v[ok].astype(np.int64))
    return ids, voc


def _price_levels(price: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(price)
    out = np.zeros(len(price), np.int64)
    if ok.any():
        edges = np.quantile(price[ok], np.linspace(0, 1, PRICE_BUCKETS + 1)[1:-1])
        out[ok] = np.searchsorted(edges, price[ok], side="right") + 1
    return out


def _bucket_log(member: Member, uvocab, t_max, n_buckets, tmpdir, chunk_rows, progress):
    """Stream the log; write (user id, time, cate, brand) of kept page views into per-bucket files.
    Returns the unique raw cates and brands seen and the row counts."""
    need = ["user", "time_stamp", "btag", "cate", "brand"]
    cates = np.zeros(0, np.int64)
    brands = np.zeros(0, np.int64)
    files = [open(tmpdir / f"{b}.bin", "ab") for b in range(n_buckets)]
    rows_seen = pv_kept = 0
    try:
        with member.open() as fh:
            try:
                reader = pd.read_csv(fh, chunksize=chunk_rows, low_memory=False)
                it = reader if progress is None else progress(reader, desc="behavior_log", unit="chunk")
                for chunk in it:
                    chunk.columns = [str(c).strip() for c in chunk.columns]
                    missing = [c for c in need if c not in chunk.columns]
                    if missing:
                        raise DataError(f"{member.label}: missing column {missing[0]!r} "
                                        f"(found columns: {', '.join(chunk.columns)})")
                    base = rows_seen
                    rows_seen += len(chunk)
                    for c in ("user", "time_stamp", "btag"):
                        na = chunk[c].isna().to_numpy()
                        if na.any():
                            raise DataError(f"{member.label}, line {base + int(np.flatnonzero(na)[0]) + 2}: "
                                            f"missing value in column {c!r}")
                    pv = (chunk["btag"] == "pv").to_numpy(dtype=bool, na_value=False)
                    sub = chunk.loc[pv, ["user", "time_stamp", "cate", "brand"]]
                    vals = {}
                    for c in ("user", "time_stamp", "cate", "brand"):
                        col = sub[c]
                        if not pd.api.types.is_numeric_dtype(col.dtype):
                            conv = pd.to_numeric(col, errors="coerce")
                            badm = conv.isna().to_numpy() & col.notna().to_numpy()
                            if badm.any():
                                r = int(np.flatnonzero(pv)[np.flatnonzero(badm)[0]])
                                raise DataError(f"{member.label}, line {base + r + 2}: column {c!r} is not a number: "
                                                f"{col.iloc[int(np.flatnonzero(badm)[0])]!r}")
                            col = conv
                        vals[c] = col.to_numpy(np.float64) if c in ("cate", "brand") else col.to_numpy(np.int64)
                    uk = _dense_or_zero(vals["user"], uvocab)
                    t = vals["time_stamp"]
                    sel = (uk > 0) & (t < t_max) & (t >= 0)
                    c_raw = np.where(np.isnan(vals["cate"]), -1, vals["cate"]).astype(np.int64)[sel]
                    b_raw = np.where(np.isnan(vals["brand"]), -1, vals["brand"]).astype(np.int64)[sel]
                    rec = np.empty(int(sel.sum()), _REC)
                    rec["u"], rec["t"], rec["c"], rec["b"] = uk[sel], t[sel], c_raw, b_raw
                    pv_kept += len(rec)
                    cates = unique(np.concatenate([cates, c_raw[c_raw >= 0]]))
                    brands = unique(np.concatenate([brands, b_raw[b_raw >= 0]]))
                    bk = rec["u"] % n_buckets
                    srt = np.argsort(bk, kind="stable")
                    edges = np.concatenate([[0], np.cumsum(np.bincount(bk, minlength=n_buckets))])
                    rec = rec[srt]
                    for b in range(n_buckets):
                        if edges[b + 1] > edges[b]:
                            rec[edges[b] : edges[b + 1]].tofile(files[b])
            except pd.errors.ParserError as e:
                from .formats import _parser_error

                raise _parser_error(member.label, e) from None
            except pd.errors.EmptyDataError:
                raise DataError(f"{member.label}: file is empty") from None
    finally:
        for f in files:
            f.close()
    return cates, brands, rows_seen, pv_kept


def _sample_neg(hist_b, hist_len, pairs, rng, chunk=1 << 15, rounds=10):
    """Per history step, a catalogue (brand, cate) pair whose brand is not in the row's history
    (drawn uniformly, collisions redrawn; 0 when every catalogue brand is in the history)."""
    n, L = hist_b.shape
    neg_b = np.zeros((n, L), np.int64)
    neg_c = np.zeros((n, L), np.int64)
    if len(pairs) == 0 or n == 0:
        return neg_b, neg_c
    ar = np.arange(L)
    base = int(max(pairs[:, 0].max(), hist_b.max() if hist_b.size else 0)) + 2
    for s in range(0, n, chunk):
        hb = hist_b[s : s + chunk]
        c = len(hb)
        valid = ar[None, :] < hist_len[s : s + chunk, None]
        row = np.arange(c, dtype=np.int64)[:, None] * base
        # each row's history brands as keys row*base + brand + 1 (padding -> row*base): sorting
        # within rows sorts the flat array, so membership is one searchsorted
        hkeys = np.sort(row + np.where(valid, hb + 1, 0), axis=1).ravel()

        pick = rng.integers(0, len(pairs), size=hb.shape)
        clash = isin_sorted(row + pairs[pick, 0] + 1, hkeys) & valid
        for _ in range(rounds):  # redraw only the clashing steps
            idx = np.flatnonzero(clash)
            if len(idx) == 0:
                break
            new = rng.integers(0, len(pairs), size=len(idx))
            pick.flat[idx] = new
            clash.flat[idx] = isin_sorted((idx // L) * base + pairs[new, 0] + 1, hkeys)
        ok = valid & ~clash
        for r in np.flatnonzero(clash.any(1)):  # rare: exact draw from the allowed pairs
            allowed = np.flatnonzero(~np.isin(pairs[:, 0], hb[r, : int(hist_len[s + r])]))
            cols = np.flatnonzero(clash[r])
            if len(allowed):
                pick[r, cols] = allowed[rng.integers(0, len(allowed), size=len(cols))]
                ok[r, cols] = True
        nb, nc = pairs[pick, 0], pairs[pick, 1]
        nb[~ok] = 0
        nc[~ok] = 0
        neg_b[s : s + chunk], neg_c[s : s + chunk] = nb, nc
    return neg_b, neg_c
