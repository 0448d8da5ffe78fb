"""Your own interaction log as a dataset: one row per impression / rating / click.

    >>> import pandas as pd
    >>> from udg_fast import data
    >>> log = pd.read_csv("clicks.csv")           # user, item, clicked, ts, category, age, …
    >>> ds = data.from_interactions(log, user="user", item="item", label="clicked", timestamp="ts",
    ...                             category="category", profile=["age", "gender"])
    >>> ds.train["hist_item"].shape                # [N, 50], the format of every built-in dataset

or, for the command line and the cache, the dataset ``interactions`` with ``path=`` a CSV, TSV
(``.tsv`` / ``.tab``, or ``sep``) or Parquet file (``.gz`` for a compressed text file):

    udg-fast train --dataset interactions --data-path clicks.csv -o label_col=clicked \\
        -o time_col=ts -o cat_col=category -o profile_cols=age,gender --model din --udg

The rows become samples by the rules of every built-in dataset (docs/data.md): ordered per user by
time (ties keep the file's order), split per user 80/10/10 in time, each row's history the same
user's earlier rows with label 1 (the last ``max_len``), one sampled negative item per history step
for DIEN (an item the user has no row with). Raw ids of any type are mapped to dense ids 1..K
(``ds.vocab[field]`` keeps the raw values); 0 is padding/unknown.

Per-user and per-item columns are read from the log itself: an item's category and a user's profile
values are those of its latest row that has one (a user whose age changes over the log gets the
most recent; a user with none gets the unknown id 0).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .core import DataError, build_interaction_splits, encode, standard_fields
from .formats import Member
from .source import Source

#: options of the ``interactions`` dataset (load("interactions", path=..., **options))
OPTIONS = {
    "user_col": "user_id",
    "item_col": "item_id",
    "label_col": "label",
    "time_col": "timestamp",
    "cat_col": "",            # "" : every item in one category
    "profile_cols": "",       # comma-separated, or a list / tuple
    "label_threshold": None,  # None: the label column holds 0/1; a number: label = value > it
    "sep": "",                # "": by the file's suffix (.tsv / .tab: tab, else comma)
}

_PARQUET = (".parquet", ".pq")


def sources(path, progress=None) -> Source:
    if path is None:
        raise DataError("interactions: needs path= a CSV, TSV or Parquet file of interactions "
                        "(or use data.from_interactions(frame, ...) on a DataFrame)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"interactions: path {str(p)!r} is not a file (expected a CSV, TSV or Parquet file)")
    return Source.from_members({"inter": Member(str(p), p)}, "interactions", str(p), progress)


def _read(member: Member, sep: str) -> pd.DataFrame:
    name = member.path.name.lower()
    suffix = name[:-3] if name.endswith(".gz") else name
    try:
        if suffix.endswith(_PARQUET):
            return pd.read_parquet(member.path)
        if not sep:
            sep = "\t" if suffix.endswith((".tsv", ".tab")) else ","
        with member.open() as f:
            return pd.read_csv(f, sep=sep, low_memory=False)
    except ImportError as e:  # parquet without pyarrow / fastparquet
        raise DataError(f"{member.label}: cannot read Parquet here ({e}); save the log as CSV") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{member.label}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
        raise DataError(f"{member.label}: cannot read the table ({type(e).__name__}: {e})") from None


def build(name: str, source: Source, options: dict, progress: Callable | None = None):
    """The registered dataset's build: read the file, then `build_from_frame`."""
    member = source.resolve(progress)["inter"]
    frame = _read(member, options["sep"])
    return build_from_frame(frame, options, member.label, progress)


def _list(value, what: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise DataError(f"interactions: {what} must be column names (a list, or a comma-separated string), got {value!r}")


def _ids(frame: pd.DataFrame, col: str, where: str, allow_missing: bool = False):
    """Dense ids 1..K of a column and its vocabulary (sorted raw values); missing values are a
    DataError unless `allow_missing` (then id 0)."""
    s = frame[col]
    missing = s.isna().to_numpy()
    if missing.any() and not allow_missing:
        row = int(np.flatnonzero(missing)[0])
        raise DataError(f"{where}: column {col!r} has {int(missing.sum())} missing value(s), the first in "
                        f"data row {row + 1}")
    present = s[~missing]
    vals = present.to_numpy()
    if vals.dtype == object:
        try:  # numbers held in an object column (ints beside None): keep them numbers
            vals = pd.to_numeric(present).to_numpy()
        except (TypeError, ValueError):  # strings or mixed: compare them as strings
            vals = present.astype(str).to_numpy(dtype=object)
    if vals.dtype.kind == "f" and np.all(vals == np.floor(vals)):
        vals = vals.astype(np.int64)  # 3.0 (a float column because of a missing value) is id 3
    ids_present, vocab = encode(vals)
    ids = np.zeros(len(s), np.int64)
    ids[~missing] = ids_present
    return ids, vocab


def _first_missing(s: pd.Series, col: str, what: str, where: str) -> None:
    """DataError naming the count and the first data row of missing values in `s`, if any."""
    missing = s.isna().to_numpy()
    if missing.any():
        raise DataError(f"{where}: column {col!r} ({what}) has {int(missing.sum())} missing value(s), the first in "
                        f"data row {int(np.flatnonzero(missing)[0]) + 1}")


def _not_numbers(s: pd.Series) -> np.ndarray:
    """Where the values of `s` (no missing ones) are not numbers ("yes", "soon"), as a bool mask."""
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        return np.zeros(len(s), bool)
    return pd.to_numeric(s, errors="coerce").isna().to_numpy()


def _labels(frame: pd.DataFrame, col: str, threshold, where: str) -> np.ndarray:
    s = frame[col]
    _first_missing(s, col, "the label", where)
    bad = _not_numbers(s)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: column {col!r} (the label) must be numeric, got {s.iloc[r]!r} in data row {r + 1}")
    v = pd.to_numeric(s).to_numpy(np.float64)
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise DataError(f"interactions: label_threshold must be a number or None, got {threshold!r}")
        return (v > threshold).astype(np.float32)
    bad = ~np.isin(v, (0.0, 1.0))
    if bad.any():
        raise DataError(f"{where}: column {col!r} (the label) must hold 0 and 1, found {float(v[bad][0])!r} in data row "
                        f"{int(np.flatnonzero(bad)[0]) + 1}; give label_threshold (label = value > threshold) "
                        f"for ratings")
    return v.astype(np.float32)


def _seconds(frame: pd.DataFrame, col: str, where: str) -> np.ndarray:
    """The time column as int64: numbers as given (fractions dropped), or dates (`_dates`) as UTC
    seconds. One column holds one kind: a value of the other kind, or a string that is neither, is
    a DataError naming it and its data row."""
    s = frame[col]
    _first_missing(s, col, "the time", where)
    if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_datetime64_any_dtype(s)):  # text
        not_num = _not_numbers(s)
        if not not_num.any():  # numbers read as text (a CSV column): numbers
            s = pd.to_numeric(s)
        elif not not_num.all():
            r = int(np.flatnonzero(not_num != not_num[0])[0])  # the first value of the other kind than row 1's
            raise DataError(f"{where}: column {col!r} (the time) must be all numbers or all dates, got {s.iloc[0]!r} "
                            f"in data row 1 and {s.iloc[r]!r} in data row {r + 1}")
    if pd.api.types.is_integer_dtype(s):
        return s.to_numpy(np.int64)  # as given (nanosecond stamps do not fit a float64 exactly)
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return np.floor(s.to_numpy(np.float64)).astype(np.int64)
    t = pd.to_datetime(s, utc=True) if pd.api.types.is_datetime64_any_dtype(s) else _dates(s, col, where)
    return ((t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def _dates(s: pd.Series, col: str, where: str) -> pd.Series:
    """Date strings as UTC timestamps: one format for the column, inferred from its first value
    (as pandas does), or ISO 8601 in any of its forms (`2024-01-02`, `2024-01-02 10:00`,
    `2024-01-02T10:00:00Z`). Not each value on its own: "01/02/2020" and "13/02/2020" would then
    read month-first and day-first in one column — wrong times, silently. A value the format does
    not fit is a DataError naming it and its data row."""
    with warnings.catch_warnings():  # "could not infer format …, falling back to dateutil"
        warnings.simplefilter("ignore", UserWarning)
        for fmt in (None, "ISO8601"):
            try:
                return pd.to_datetime(s, utc=True, format=fmt)
            except (TypeError, ValueError, OverflowError):
                pass
        t = pd.to_datetime(s, utc=True, errors="coerce")  # the first value's format: where it fails
    bad = t.isna().to_numpy()
    r = int(np.flatnonzero(bad)[0]) if bad.any() else 0
    raise DataError(f"{where}: column {col!r} (the time) must be numbers, or dates in one format (data row 1: "
                    f"{s.iloc[0]!r}) or ISO 8601, got {s.iloc[r]!r} in data row {r + 1}")


def _latest(key_ids: np.ndarray, values: np.ndarray, t: np.ndarray, n: int) -> np.ndarray:
    """`out[k]` = the value (id > 0) on key k's latest row that has one (ties: the later row of
    the file); 0 for keys without such a row."""
    has = values > 0
    key_ids, values, t = key_ids[has], values[has], t[has]
    order = np.lexsort((np.arange(len(t)), t))  # by time, then file order
    out = np.zeros(n + 1, np.int64)
    out[key_ids[order]] = values[order]          # later rows overwrite earlier ones
    return out


def build_from_frame(frame: pd.DataFrame, options: dict, where: str = "interactions",
                     progress: Callable | None = None):
    """An interaction DataFrame → ``(schema, splits, extra_stats, vocab)`` (the dataset builders'
    contract). `options`: OPTIONS plus max_len and seed; `where` names the source in errors."""
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"interactions: expected a pandas DataFrame, got {type(frame).__name__}")
    cols = {k: options[k] for k in ("user_col", "item_col", "label_col", "time_col")}
    cat_col = options["cat_col"] or ""
    profile = _list(options["profile_cols"], "profile_cols")
    for k, v in cols.items():
        if not isinstance(v, str) or not v:
            raise DataError(f"interactions: {k} must be a column name, got {v!r}")
    wanted = list(cols.values()) + ([cat_col] if cat_col else []) + profile
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: no column {missing[0]!r} (columns: {', '.join(map(str, frame.columns))})")
    dup = [c for i, c in enumerate(wanted) if c in wanted[:i]]
    if dup:
        raise DataError(f"interactions: column {dup[0]!r} is given for two roles (user, item, label, time, "
                        f"category, profile)")
    reserved = {"user_id", "item_id", "item_cat", "hist_item", "hist_cat", "neg_hist_item", "neg_hist_cat",
                "hist_len", "label", "timestamp"}
    clash = [c for c in profile if c in reserved]
    if clash:
        raise DataError(f"interactions: profile column {clash[0]!r} has the name of a sample field; rename it")
    if len(frame) == 0:
        raise DataError(f"{where}: no rows")

    uid, uvocab = _ids(frame, cols["user_col"], where)
    iid, ivocab = _ids(frame, cols["item_col"], where)
    label = _labels(frame, cols["label_col"], options["label_threshold"], where)
    ts = _seconds(frame, cols["time_col"], where)
    n_users, n_items = len(uvocab), len(ivocab)

    if cat_col:
        cid, cvocab = _ids(frame, cat_col, where, allow_missing=True)
        item_cat = _latest(iid, cid, ts, n_items)
    else:
        cvocab = np.array(["(all)"])
        item_cat = np.ones(n_items + 1, np.int64)
        item_cat[0] = 0
    user_columns, profile_sizes, profile_vocab = {}, {}, {}
    for c in profile:
        pid, pvocab = _ids(frame, c, where, allow_missing=True)
        user_columns[c] = _latest(uid, pid, ts, n_users)
        profile_sizes[c], profile_vocab[c] = len(pvocab) + 1, pvocab

    splits = build_interaction_splits(
        user=uid, item=iid, label=label, timestamp=ts, item_cat=item_cat, n_items=n_items,
        clicked_user=uid, clicked_item=iid,  # a sampled negative is an item the user has no row with
        max_len=options["max_len"], seed=options["seed"], user_columns=user_columns, progress=progress)
    schema = standard_fields(n_users=n_users, n_items=n_items, n_cats=len(cvocab), profile=profile_sizes,
                             max_len=options["max_len"])
    vocab = {"user_id": uvocab, "item_id": ivocab, "item_cat": cvocab, **profile_vocab}
    return schema, splits, {"interactions": int(len(frame)), "source_format": "interactions"}, vocab


def from_interactions(
    frame: pd.DataFrame,
    *,
    user: str = "user_id",
    item: str = "item_id",
    label: str = "label",
    timestamp: str = "timestamp",
    category: str | None = None,
    profile: Sequence[str] | str | None = (),
    label_threshold: float | None = None,
    max_len: int = 50,
    seed: int = 0,
    name: str = "interactions",
):
    """A `Dataset` from an interaction DataFrame, in memory (not cached): the sample format,
    splits and histories of every built-in dataset (see the module docstring for the rules).

    Args:
        frame: one row per interaction (impression, click, rating).
        user, item: the columns of the raw user and item ids (any type).
        label: the column of the label: 0/1, or a score with `label_threshold`.
        timestamp: the time column: numbers in any unit (only the order matters; kept as
            integers, fractions dropped) or dates (parsed to UTC seconds).
        category: the item category column (None: all items in one category).
        profile: user columns the gates read as the user's profile (cold start): age, gender, …
        label_threshold: None for 0/1 labels; a number for ratings (label = value > threshold,
            MovieLens' 3).
        max_len: history length L; seed: the negative sampling's seed.
        name: the dataset's name (in its statistics and `repr`).
    Returns:
        a `udg_fast.data.Dataset` (train / valid / test, schema, stats, vocab).
    Raises:
        DataError naming the column (and the data row) that is missing, empty or malformed.
    """
    import time

    from .api import _options, _spec
    from .core import Dataset, compute_stats

    options = {"user_col": user, "item_col": item, "label_col": label, "time_col": timestamp,
               "cat_col": category or "", "profile_cols": profile if isinstance(profile, str) else list(profile or ()),
               "label_threshold": label_threshold, "max_len": max_len, "seed": seed}
    opts = _options(_spec("interactions"), options)  # the registered dataset's checks and defaults
    t0 = time.perf_counter()
    schema, splits, extra, vocab = build_from_frame(frame, opts, f"{name} (DataFrame)")
    stats = compute_stats(splits, schema, extra)
    stats["prepare_seconds"] = round(time.perf_counter() - t0, 3)
    meta = {"options": opts, "source": "DataFrame", "from_cache": False}
    return Dataset(name, schema, splits["train"], splits["valid"], splits["test"], stats, meta,
                   {k: np.asarray(v) for k, v in vocab.items()})
