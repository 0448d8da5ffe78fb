"""Fixtures for the cold-start tests: tiny synthetic sets (never the user's cache) and one torch
thread (the development machine's 2 cores are shared)."""
from __future__ import annotations

import pytest

from udg_fast import data
from udg_fast.coldstart import merge_splits

TINY_HP = {"embed_dim": 4, "hidden": (8, 4)}


@pytest.fixture(scope="session")
def skewed():
    """80 users with 3…~150 samples each (log-normal activity), history up to 12."""
    return data.load("synthetic", cache=False, progress=False, n_users=80, n_items=60, n_cats=6,
                     samples_per_user=40, activity_skew=0.8, max_len=12, seed=1)


@pytest.fixture(scope="session")
def merged(skewed):
    return merge_splits(skewed)
