"""Serving: model.score and scoring candidate items for one user from that user's history."""
from __future__ import annotations

import numpy as np
import pytest
import torch

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


def test_serving_errors(model, synth):
    with pytest.raises(ModelError, match="item_cat_table"):
        serving.score_candidates(model, 1, [1, 2])
    with pytest.raises(ModelError, match="unknown profile/context field"):
        serving.score_candidates(model, 1, [1, 2], item_cats=[1, 1], history_cats=[], profile={"height": 3})
