"""Serving: model.score and scoring candidate items for one user from that user's history."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import udg_fast
from udg_fast import models, serving
from udg_fast.models import ModelError

from .conftest import tiny_hp


@pytest.fixture(scope="module")
def model(synth):
    torch.manual_seed(0)
    m = models.build("din", synth.schema, udg=True, **tiny_hp("din"))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_score_is_inference_only_and_keeps_the_mode(model, batch):
    model.train()
    p = model.score(batch)
    assert model.training and not p.requires_grad
    assert p.dtype == torch.float32 and ((p > 0) & (p < 1)).all()
    torch.testing.assert_close(p, torch.sigmoid(model.eval()(batch)).detach())


def test_unknown_ids_map_to_padding(model, batch):
    b = dict(batch)
    b["user_id"] = torch.full_like(batch["user_id"], 10**9)
    b["item_id"] = batch["item_id"].clone()
    b["item_id"][:3] = -5
    p = model.score(b)
    b0 = dict(b, user_id=torch.zeros_like(batch["user_id"]), item_id=b["item_id"].clamp_min(0))
    torch.testing.assert_close(p, model.score(b0), rtol=0, atol=0)


def test_score_candidates_matches_the_dataset_rows(model, synth):
    test = synth.test
    cats = serving.item_category_table(synth)
    # the first run of consecutive rows with one user and one (non-empty) history: one request
    same = ((test["user_id"][1:] == test["user_id"][:-1]) & (test["hist_item"][1:] == test["hist_item"][:-1]).all(1)
            & (test["hist_len"][1:] > 2))
    i = int(np.argmax(same))
    assert same[i]
    n, user = int(test["hist_len"][i]), int(test["user_id"][i])
    rows = np.flatnonzero((test["user_id"] == user) & (test["hist_item"] == test["hist_item"][i]).all(1))
    profile = {f: int(test[f][i]) for f in synth.schema.profile_fields}
    p = serving.score_candidates(model, user, test["item_id"][rows], history=test["hist_item"][i, :n],
                                 item_cat_table=cats, profile=profile)
    expected = model.score({k: torch.from_numpy(test[k][rows]) for k in test.fields})
    torch.testing.assert_close(p, expected)
    # a user the model never saw still gets scores
    q = serving.score_candidates(model, 10**6, [1, 2, 3], history=[4, 5], item_cat_table=cats)
    assert q.shape == (3,) and torch.isfinite(q).all()


def test_recommend_excludes_and_ranks(model, synth):
    cats = serving.item_category_table(synth)
    history = [3, 9, 27]
    items, scores = serving.recommend(model, 5, range(1, 81), k=5, exclude=history, history=history,
                                      item_cat_table=cats)
    assert len(items) == 5 and not set(items.tolist()) & set(history)
    assert (scores[:-1] >= scores[1:]).all()
    allp = serving.score_candidates(model, 5, range(1, 81), history=history, item_cat_table=cats)
    allp[torch.tensor(history) - 1] = -1
    assert items.tolist() == (torch.topk(allp, 5).indices + 1).tolist()


def test_no_history_and_no_candidates(model, synth):
    """A new user has no history (the default `history=()`, `[]` or an empty array): scored as
    history length 0, exactly as a batch row with hist_len 0. No candidates: an empty result."""
    cats = serving.item_category_table(synth)
    p = serving.score_candidates(model, 3, [1, 2], item_cat_table=cats)
    for empty in ([], (), np.zeros(0, np.int64), torch.zeros(0)):
        torch.testing.assert_close(serving.score_candidates(model, 3, [1, 2], history=empty, item_cat_table=cats), p)
    b = serving.candidate_batch(model, 3, [1, 2], item_cat_table=cats)
    assert (b["hist_len"] == 0).all() and (b["hist_item"] == 0).all() and b["hist_item"].dtype == torch.int64
    assert serving.score_candidates(model, 3, [], item_cat_table=cats).shape == (0,)
    items, scores = serving.recommend(model, 3, [], k=3, item_cat_table=cats)
    assert items.shape == scores.shape == (0,)


@pytest.mark.parametrize("kw,match", [
    ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
    ({"batch_size": -1}, "batch_size must be a positive int, got -1"),
    ({"user_id": 3.7}, "user_id must be an integer id, got 3.7"),
    ({"user_id": None}, "user_id must be an integer id, got None"),
    ({"item_ids": 5}, "item_ids must be a sequence of integer ids, got int"),
    ({"item_ids": [1, 2.5]}, "item_ids must hold integer ids, got 2.5"),
    ({"item_ids": torch.tensor([1.0])}, "item_ids must hold integer ids, got dtype torch.float32"),
    ({"profile": {"age": None}}, "profile/context field 'age' must be an integer id, got None"),
    ({"item_cat_table": torch.zeros(0, dtype=torch.int64)}, "item_cat_table must be a non-empty 1-D integer table"),
    ({"item_cat_table": torch.zeros(9)}, "item_cat_table must be a non-empty 1-D integer table"),
    ({"item_cat_table": None}, "give item_cats or an item_cat_table"),
    ({"profile": {"height": 3}}, "unknown profile/context field"),
])
def test_serving_errors(model, synth, kw, match):
    args = {"user_id": 1, "item_ids": [1, 2], "item_cat_table": serving.item_category_table(synth), **kw}
    with pytest.raises(ModelError, match=match):
        serving.score_candidates(model, args.pop("user_id"), args.pop("item_ids"), **args)


def test_recommend_errors(model, synth):
    cats = serving.item_category_table(synth)
    for k in (-1, None, 2.0):
        with pytest.raises(ModelError, match="k must be an int >= 0"):
            serving.recommend(model, 1, [1, 2], k=k, item_cat_table=cats)
    with pytest.raises(ModelError, match="exclude must be a sequence of integer ids, got int"):
        serving.recommend(model, 1, [1, 2], exclude=1, item_cat_table=cats)
    with pytest.raises(ModelError, match="model must be a udg_fast CTRModel, got Linear"):
        serving.score_candidates(torch.nn.Linear(2, 2), 1, [1], item_cat_table=cats)


# ---- torch.export ------------------------------------------------------------------------------

def _udg_ops(ep) -> set[str]:
    return {str(n.target) for n in ep.graph.nodes if n.op == "call_function" and str(n.target).startswith("udg_fast.")}


@pytest.mark.parametrize("name,hp", [("pnn", {}), ("deepfm", {}), ("wdl", {}), ("din", {}), ("dien", {}),
                                     ("din", {"gate_inputs": "official"})], ids=["pnn", "deepfm", "wdl", "din", "dien",
                                                                               "din-official-gates"])
@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "reference"])
def test_export_scores_like_the_model_at_another_batch_size(synth, batch, name, hp, kernels):
    """The exported program (dynamic batch: exported at 64 rows, run at 23 and 2) gives
    model.score's probabilities, unknown ids included; with kernels it holds udg_fast's fused ops
    where the CPU backend runs them, without them none."""
    torch.manual_seed(1)
    m = models.build(name, synth.schema, udg=True, **tiny_hp(name, **hp))
    m.train()
    ep = serving.export(m, batch, kernels=kernels)
    assert m.training  # the caller's mode is restored
    if kernels and udg_fast.backends()["cpu"]["usable"]:
        want = {"din": {"gating_networks", "gated_linear", "din_attention"},
                "dien": {"gating_networks", "gated_linear", "din_attention", "augru"}}.get(
                    name, {"gating_networks", "gated_linear"})
        assert {f"udg_fast.{op}.default" for op in want} <= _udg_ops(ep)
    if not kernels:
        assert _udg_ops(ep) == set()
    f = ep.module()
    for rows in (slice(3, 26), slice(0, 2)):
        b = {k: v[rows] for k, v in batch.items()}
        b["user_id"] = b["user_id"].clone()
        b["user_id"][0] = 10**6  # an unknown user: padding inside the program, as score does
        torch.testing.assert_close(f({k: b[k] for k in m.required_fields()}), m.score(b), rtol=1e-5, atol=1e-6)


def test_exported_reference_program_loads_without_udg_fast(model, batch, tmp_path):
    """kernels=False: saved, then loaded and run in a fresh interpreter that never imports udg_fast."""
    import subprocess
    import sys

    ep = serving.export(model, batch, kernels=False)
    torch.export.save(ep, tmp_path / "m.pt2")
    inputs = {k: batch[k][:17] for k in model.required_fields()}
    torch.save(inputs, tmp_path / "batch.pt")
    code = ("import sys, torch\n"
            "ep = torch.export.load(sys.argv[1])\n"
            "b = torch.load(sys.argv[2], weights_only=True)\n"
            "torch.save(ep.module()(b), sys.argv[3])\n"
            "assert 'udg_fast' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pt2"), str(tmp_path / "batch.pt"),
                          str(tmp_path / "p.pt")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "p.pt", weights_only=True), model.score(inputs),
                               rtol=1e-5, atol=1e-6)


def test_exported_program_with_kernels_round_trips(model, batch, tmp_path):
    ep = serving.export(model, batch)
    torch.export.save(ep, tmp_path / "m.pt2")
    f = torch.export.load(tmp_path / "m.pt2").module()
    inputs = {k: batch[k][5:40] for k in model.required_fields()}
    torch.testing.assert_close(f(inputs), model.score(inputs), rtol=1e-5, atol=1e-6)


def test_reference_export_inside_a_per_op_block_is_aten_only(model, batch):
    """kernels=False forces the reference inside: it wins over an outer per-op block (which once
    put udg_fast ops into the "ATen only" program)."""
    with udg_fast.use_backend("cpu", ops=["gated_linear", "din_attention", "gating_networks", "embedding_backward"]):
        ep = serving.export(model, {k: batch[k] for k in model.required_fields()}, kernels=False)
    assert not _udg_ops(ep)


def test_export_errors(model, batch):
    with pytest.raises(ModelError, match="export: model must be a udg_fast CTRModel, got Linear"):
        serving.export(torch.nn.Linear(2, 1), batch)
    with pytest.raises(ModelError, match=r"lacks field\(s\) 'hist_len'"):
        serving.export(model, {k: v for k, v in batch.items() if k != "hist_len"})
    with pytest.raises(ModelError, match="needs at least 2 rows.*got 1"):
        serving.export(model, {k: v[:1] for k, v in batch.items()})
    with pytest.raises(ModelError, match="batch fields 'user_id' and 'item_id' have 64 and 5 rows"):
        serving.export(model, {**batch, "item_id": batch["item_id"][:5]})
    ep = serving.export(model, {k: v[:1] for k, v in batch.items()}, dynamic_batch=False)
    assert ep.module()({k: batch[k][:1] for k in model.required_fields()}).shape == (1,)
