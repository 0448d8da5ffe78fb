"""The data layer: real datasets by name, one sample format, no leakage.

    >>> from udg_fast import data
    >>> ds = data.load("ml-100k")            # fetched, prepared and cached on first use
    >>> ds.schema.profile_fields
    ('age', 'gender', 'occupation')
    >>> ds.train["hist_item"].shape           # [N, max_len] int64
    >>> for batch in ds.train.batches(256, shuffle=True, seed=epoch): ...

Datasets: ``ml-100k`` (default, by name), ``ml-1m``, ``ml-20m``, ``ml-latest``,
``amazon-electronics``, ``alimama`` (by path), ``synthetic``, and your own log: ``interactions``
(by path) or ``from_interactions(frame, ...)``. See docs/data.md for the sample
format, the split and history rules, and the cache.
"""
from .api import COMMON_OPTIONS, DATASETS, DatasetSpec, available, info, load, prepare
from .cache import PREPROCESS_VERSION, cache_root
from .core import PAD, SPLITS, DataError, Dataset, Field, Schema, Split
from .interactions import from_interactions

__all__ = [
    "load",
    "from_interactions",
    "prepare",
    "info",
    "available",
    "DATASETS",
    "DatasetSpec",
    "COMMON_OPTIONS",
    "Dataset",
    "Split",
    "Schema",
    "Field",
    "DataError",
    "PAD",
    "SPLITS",
    "PREPROCESS_VERSION",
    "cache_root",
]
