"""Fixtures for the model tests: tiny synthetic datasets (never the user's cache), one torch
thread (this machine's 2 cores are shared: a second OpenMP thread that waits for a busy core
makes small ops ~20× slower), and helpers."""
from __future__ import annotations

import pytest

from udg_fast import data

ALL_VARIANTS = [(m, u) for m in ("pnn", "deepfm", "wdl", "din", "dien") for u in (False, True)]
TINY = {"embed_dim": 4, "hidden": (8, 4)}
TINY_ATT = {"din": {"att_hidden": (8,)}, "dien": {"att_hidden": (8,), "aux_hidden": (8,)}}


def tiny_hp(name: str, **kw) -> dict:
    return {**TINY, **TINY_ATT.get(name, {}), **kw}


@pytest.fixture(scope="session")
def synth():
    """60 users × 40 samples, history up to 12: a few thousand rows, made in well under a second."""
    return data.load("synthetic", cache=False, progress=False, n_users=60, n_items=80, n_cats=6,
                     samples_per_user=40, max_len=12)


@pytest.fixture(scope="session")
def batch(synth):
    """A fixed batch of 64 training rows, including rows with empty and full histories."""
    b = next(synth.train.batches(64, shuffle=True, seed=3))
    assert (b["hist_len"] == 0).any() or (b["hist_len"] < 12).any()
    return b
