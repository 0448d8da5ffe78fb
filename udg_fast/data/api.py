"""``load(name, **options)``: every dataset by name, prepared once and cached."""
from __future__ import annotations

import sys
import time

import numpy as np
from dataclasses import dataclass
from typing import Any, Callable

from . import alimama, amazon, interactions, movielens, synthetic
from . import cache as _cache
from .core import DataError, Dataset, check_options, compute_stats
from .source import Source

#: options every dataset takes
COMMON_OPTIONS = {"max_len": 50, "seed": 0}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    sources: Callable[..., Source]  # (path, progress) -> Source
    build: Callable  # (name, source, options, progress) -> (schema, splits, extra_stats, vocab)
    options: dict
    needs_path: bool
    perf_options: tuple = ()  # options that do not change the result (left out of the cache key)


DATASETS: dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec(
        "ml-100k", "MovieLens 100K; fetched by name (recbole 1.2.1 wheel), or GroupLens' ml-100k.zip / folder",
        lambda path, progress=None: movielens.sources_100k(path), movielens.build, movielens.OPTIONS, False),
    "ml-1m": DatasetSpec(
        "ml-1m", "MovieLens 1M; GroupLens' ml-1m.zip or folder (ratings.dat, users.dat, movies.dat)",
        lambda path, progress=None: movielens.sources_1m(path), movielens.build, movielens.OPTIONS, True),
    "ml-20m": DatasetSpec(
        "ml-20m", "MovieLens 20M; GroupLens' ml-20m.zip or folder (ratings.csv, movies.csv)",
        lambda path, progress=None: movielens.sources_csv("ml-20m")(path), movielens.build, movielens.OPTIONS, True),
    "ml-latest": DatasetSpec(
        "ml-latest", "MovieLens latest (or latest-small); GroupLens' zip or folder (ratings.csv, movies.csv)",
        lambda path, progress=None: movielens.sources_csv("ml-latest")(path), movielens.build, movielens.OPTIONS, True),
    "amazon-electronics": DatasetSpec(
        "amazon-electronics", "Amazon Electronics 5-core reviews + metadata (folder), DIN preprocessing",
        amazon.sources, amazon.build, amazon.OPTIONS, True),
    "alimama": DatasetSpec(
        "alimama", "Alimama / Taobao display ads: the four Tianchi csv files (folder or zip)",
        alimama.sources, alimama.build, alimama.OPTIONS, True, alimama.PERF_OPTIONS),
    "interactions": DatasetSpec(
        "interactions", "your own interaction log: a CSV, TSV or Parquet file, one row per interaction "
        "(columns named by the *_col options)", interactions.sources, interactions.build, interactions.OPTIONS, True),
    "synthetic": DatasetSpec(
        "synthetic", "generated CTR data with planted user-dependent preferences",
        synthetic.sources, synthetic.build, synthetic.OPTIONS, False),
}


def available() -> list[str]:
    """The dataset names :func:`load` accepts."""
    return list(DATASETS)


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r} (datasets: {', '.join(DATASETS)})") from None


def _options(spec: DatasetSpec, options: dict) -> dict:
    o = check_options(spec.name, options, {**COMMON_OPTIONS, **spec.options})
    ml = o["max_len"]
    if not isinstance(ml, int) or isinstance(ml, bool) or ml < 1:
        raise DataError(f"{spec.name}: option 'max_len' must be a positive integer, got {ml!r}")
    sd = o["seed"]
    if not isinstance(sd, int) or isinstance(sd, bool) or sd < 0:
        raise DataError(f"{spec.name}: option 'seed' must be a non-negative integer, got {sd!r}")
    return o


def make_progress(progress: bool | None):
    """A tqdm factory: None shows bars only when stderr is a terminal."""
    if progress is False:
        return None
    from tqdm.auto import tqdm

    disable = None if progress is None else False

    def bar(iterable=None, **kw):
        kw.setdefault("leave", False)
        kw.setdefault("file", sys.stderr)
        return tqdm(iterable, disable=disable, **kw)

    return bar


def _resolve(name: str, path, options: dict, progress):
    spec = _spec(name)
    opts = _options(spec, options)
    source = spec.sources(None if path is None else str(path), progress)
    key_opts = {k: v for k, v in opts.items() if k not in spec.perf_options}
    key = _cache.entry_key(name, source.fingerprint, key_opts)
    return spec, opts, source, key


def load(
    name: str,
    path=None,
    *,
    cache: bool = True,
    refresh: bool = False,
    progress: bool | None = None,
    **options: Any,
) -> Dataset:
    """Load a dataset by name, preparing it (and caching it) on first use.

    Args:
        name: one of :func:`available`: ``ml-100k`` (the default one, fetched by name),
            ``ml-1m``, ``ml-20m``, ``ml-latest``, ``amazon-electronics``, ``alimama``,
            ``synthetic``.
        path: the raw files (a zip or a folder) for datasets that need them; for ``ml-100k``
            optional (GroupLens' ml-100k.zip or folder instead of the registry download).
        cache: read and write the cache (``$UDG_FAST_DATA`` or ``~/.cache/udg_fast``).
        refresh: prepare again even when a cache entry exists (and overwrite it).
        progress: progress bars: None = only on a terminal, True = always, False = never.
        **options: ``max_len`` (history length, default 50), ``seed`` (default 0) and the
            dataset's own options (see ``DATASETS[name].options``).

    Returns:
        a :class:`Dataset`; ``dataset.meta["from_cache"]`` says whether it was read from the cache.

    Raises:
        DataError: unknown name or option, a missing file, a wrong column, a malformed line.

    Example:
        >>> ds = load("ml-100k", max_len=50)
        >>> batch = next(ds.train.batches(256, shuffle=True, seed=0))
        >>> batch["hist_item"].shape
        torch.Size([256, 50])
    """
    bar = make_progress(progress)
    spec, opts, source, key = _resolve(name, path, options, bar)
    if cache and not refresh:
        ds = _cache.load(name, key)
        if ds is not None:
            return ds
    t0 = time.perf_counter()
    schema, splits, extra, vocab = spec.build(name, source, opts, bar)
    stats = compute_stats(splits, schema, extra)
    stats["prepare_seconds"] = round(time.perf_counter() - t0, 3)
    meta = {
        "key": key,
        "options": opts,
        "sources": source.fingerprint,
        "source": source.description,
        "version": _cache.PREPROCESS_VERSION,
        "from_cache": False,
    }
    vocab = {k: np.asarray(v) for k, v in vocab.items()}
    ds = Dataset(name, schema, splits["train"], splits["valid"], splits["test"], stats, meta, vocab)
    if cache:
        ds.meta["cache_path"] = str(_cache.save(ds, key))
    return ds


def prepare(name: str, path=None, *, refresh: bool = False, progress: bool | None = None, **options) -> Dataset:
    """Prepare (or reuse) the cache entry of a dataset; same arguments as :func:`load`."""
    return load(name, path, cache=True, refresh=refresh, progress=progress, **options)


def info(name: str, path=None, **options) -> list[dict]:
    """Cache entries of ``name`` (json documents with ``stats``, ``meta``, ``schema``), newest first.

    With a path, or for a dataset whose source is known without one (``ml-100k``,
    ``synthetic``), the entry for exactly these options is looked up first; when there is none,
    or no path is given for a path dataset, every cached entry of the dataset is returned.
    Raises :class:`DataError` when nothing is cached. Nothing is prepared or downloaded.
    """
    spec = _spec(name)
    opts = _options(spec, options)
    if path is not None or not spec.needs_path:
        _, _, _, key = _resolve(name, path, options, None)
        doc = _cache.read_meta(name, key)
        if doc is not None:
            return [doc]
        if path is not None or options:
            raise DataError(
                f"{name}: not prepared for this source and options {opts} "
                f"(run `udg-fast data prepare {name}`; cache: {_cache.cache_root()})"
            )
    docs = _cache.entries(name)
    if not docs:
        raise DataError(f"{name}: nothing cached under {_cache.cache_root()} (run `udg-fast data prepare {name}` first)")
    return docs
