"""Fixtures for the experiment tests: a tiny synthetic dataset and tiny models, one torch thread,
a private data cache, and a counter of training calls (`udg_fast.train.fit`)."""
from __future__ import annotations

import pytest

from udg_fast import train
from udg_fast.experiments import Setup

DATA = {"n_users": 40, "n_items": 60, "n_cats": 5, "samples_per_user": 30, "max_len": 8}
HP = {"embed_dim": 4, "hidden": (8, 4), "att_hidden": (8,), "aux_hidden": (8,)}
ARGS = ["--dataset", "synthetic", *sum((["-o", f"{k}={v}"] for k, v in DATA.items()), []),
        "--hp", "embed_dim=4", "--hp", "hidden=8,4", "--hp", "att_hidden=8", "--hp", "aux_hidden=8",
        "--epochs", "1", "--batch-size", "128", "--no-progress"]


@pytest.fixture
def fit_calls(monkeypatch):
    """Counts the calls of `udg_fast.train.fit` (every training run goes through it)."""
    calls = []
    real = train.fit

    def counting(model, *a, **kw):
        calls.append((model.name, model.udg, model.embed_dim))
        return real(model, *a, **kw)

    monkeypatch.setattr(train, "fit", counting)
    return calls


def make_setup(out, **kw) -> Setup:
    opts = dict(data_options=dict(DATA), hparams=dict(HP), train={"epochs": 1, "batch_size": 128}, progress=False,
                log=lambda s: None)
    opts.update(kw)
    return Setup("synthetic", out, **opts)
