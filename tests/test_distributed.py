"""Multi-process training: `udg-fast train --distributed` under torchrun (2 CPU processes, gloo)
gives the model and the metrics of a single-process run with the same global batch.

Why the comparison is meaningful: the models have no dropout; the shuffling is a permutation drawn
from the seed (the same on every rank); DDP broadcasts rank 0's initial weights; each rank takes
rows r, r + 2, … of every global batch and its loss is weighted by its share, so each step's
averaged gradient is the single-process gradient up to the order of float additions. The metrics
are computed once over the gathered test predictions: averaging two per-rank AUCs would not give
the single-process AUC.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from udg_fast import cli, data, models, train

ROOT = Path(__file__).resolve().parents[1]
DATA_OPTS = ["-o", "n_users=40", "-o", "n_items=60", "-o", "n_cats=5", "-o", "samples_per_user=30",
             "-o", "max_len=10"]
# a tiny DIN + UDG: attention, gates and E^UDG all take part; 2 epochs of 15 global batches of 64
TRAIN = ["train", "--dataset", "synthetic", *DATA_OPTS, "--model", "din", "--udg", "--embed-dim", "4",
         "--hidden", "16,8", "--hp", "att_hidden=(8,)", "--hp", "embed_init_std=0.1", "--gate-scale", "2", "--epochs", "2", "--patience", "0", "--batch-size", "64",
         "--lr", "0.02", "--seed", "0", "--threads", "1", "--no-progress", "--device", "cpu"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "udg_cache"
    monkeypatch.setenv("UDG_FAST_DATA", str(path))
    return path


def _load(cache):
    kw = {k: int(v) for k, v in (o.split("=") for o in DATA_OPTS[1::2])}
    return data.load("synthetic", progress=False, **kw)


def test_shards_of_a_global_batch_are_the_single_process_batch(cache):
    ds = _load(cache)
    split = ds.train
    single = list(split.batches(64, shuffle=True, seed=7))
    shards = [list(train.shard_batches(split, 64, seed=7, rank=r, world=3)) for r in range(3)]
    assert len(shards[0]) == len(shards[1]) == len(shards[2]) == len(single)
    for k, whole in enumerate(single):
        assert shards[0][k][1] == len(whole["label"])   # the global batch size
        got = sorted(int(t) for r in range(3) for t in shards[r][k][0]["timestamp"])
        assert got == sorted(int(t) for t in whole["timestamp"])   # same rows (timestamps are unique per user)
        ids = torch.cat([shards[r][k][0]["user_id"] * 10**10 + shards[r][k][0]["timestamp"] for r in range(3)])
        ref = whole["user_id"] * 10**10 + whole["timestamp"]
        assert sorted(ids.tolist()) == sorted(ref.tolist())
    # world 1: exactly Split.batches, in order
    one = list(train.shard_batches(split, 64, seed=7, rank=0, world=1))
    for (b, n), whole in zip(one, single):
        assert n == len(whole["label"])
        for f in whole:
            assert torch.equal(b[f], whole[f]), f


def test_a_tail_smaller_than_the_world_is_dropped_on_every_rank(cache):
    split = _load(cache).train
    n = len(split)
    bs = n - 1  # two global batches: n - 1 rows, then 1 row (< world 2): dropped
    for r in range(2):
        got = list(train.shard_batches(split, bs, seed=0, rank=r, world=2))
        assert [g for _, g in got] == [bs]


def test_distributed_without_a_process_group_is_refused(cache, capsys):
    ds = _load(cache)
    model = models.build("din", ds.schema, embed_dim=4, hidden=(4,))
    with pytest.raises(ValueError, match="init_process_group"):
        train.fit(model, ds, train.TrainConfig(epochs=1, distributed=True, device="cpu"))
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        assert k not in os.environ
    assert cli.main(TRAIN + ["--distributed", "--out", str(cache.parent / "x")]) == 2
    assert "torchrun" in capsys.readouterr().err


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(cache, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "ddp"
    assert cli.main(TRAIN + ["--out", str(single)]) == 0    # also prepares the cached data
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "UDG_FAST_DATA": str(cache)}
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "udg_fast.cli", *TRAIN, "--distributed", "--out", str(multi)]
    p = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((multi / "metrics.json").read_text())
    assert a["world_size"] == 1 and b["world_size"] == 2
    assert b["best_epoch"] == a["best_epoch"] == 2
    for k in ("auc", "logloss", "rmse", "rig", "gauc"):
        assert b["test"][k] == pytest.approx(a["test"][k], rel=1e-5, abs=1e-6), k
        assert b["valid"][k] == pytest.approx(a["valid"][k], rel=1e-5, abs=1e-6), k
    for ha, hb in zip(a["history"], b["history"]):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-5)

    sa = train.read_checkpoint(single / "best.pt")["state_dict"]
    sb = train.read_checkpoint(multi / "best.pt")["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    # the weights moved from their initialisation (the comparison is not of two untrained models)
    train.set_seed(0)
    fresh = models.build("din", _load(cache).schema, udg=True, embed_dim=4, hidden=(16, 8), att_hidden=(8,),
                          embed_init_std=0.1, gate_scale=2.0)
    moved = [k for k, v in fresh.state_dict().items() if not torch.allclose(v, sa[k], atol=1e-3)]
    assert "mlp.layers.0.weight" in moved or len(moved) > len(sa) // 2, moved

    # one checkpoint, from rank 0, whose own single-process evaluation gives the recorded test metrics:
    # the distributed run's test metrics are over the whole gathered test set
    assert sorted(p.name for p in multi.iterdir()) == ["best.pt", "last.pt", "metrics.json"]
    ds = _load(cache)
    model, _ = train.load_checkpoint(multi / "best.pt", ds.schema)
    m = train.evaluate_split(model, ds.test, train.positive_rate(ds.train))
    for k in ("auc", "logloss", "gauc"):
        assert b["test"][k] == pytest.approx(m[k], rel=1e-6, abs=1e-7), k
    assert np.isfinite(b["test"]["auc"])


def test_dien_trains_under_ddp_when_a_shard_has_no_auxiliary_pair(cache, tmp_path):
    """Histories of at most one step give DIEN's auxiliary loss no (t, t+1) pair, so its auxiliary
    network gets no gradient: DDP must be built to expect that (it raised at the second step)."""
    import dataclasses

    import torch.distributed as dist

    ds = _load(cache)
    short = ds.train.select(np.asarray(ds.train["hist_len"]) <= 1)
    assert len(short) >= 32
    ds = dataclasses.replace(ds, train=short)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        train.set_seed(0)
        model = models.build("dien", ds.schema, embed_dim=4, hidden=(8, 4))
        before = model.aux_net.fc1.weight.detach().clone()
        r = train.fit(model, ds, train.TrainConfig(epochs=1, batch_size=16, distributed=True, device="cpu"),
                      log=lambda s: None)
    finally:
        dist.destroy_process_group()
    assert r["world_size"] == 1 and len(r["history"]) == 1
    assert torch.equal(model.aux_net.fc1.weight, before)   # no pair, no gradient, no Adam step
