"""UDG's reason to exist: when clicks depend on user-specific structure, the gated model beats the
same base model. Synthetic set: each user has a personal preference vector w_u; a click has logit
3 · w_u · v_i / 2 + b_i (see udg_fast/data/synthetic.py), so about half the users like any given
category and half dislike it."""
from __future__ import annotations

import pytest

from udg_fast import data, models, train

OPTIONS = dict(n_users=150, samples_per_user=100, scale=3.0, dim=4, n_cats=10, n_items=200, max_len=20)
HP = dict(embed_dim=8, hidden=(32, 16), att_hidden=(16,))
CFG = dict(epochs=4, batch_size=128, lr=5e-3, lr_decay=0.7, patience=0, progress=False)


@pytest.fixture(scope="module")
def planted():
    return data.load("synthetic", cache=False, progress=False, **OPTIONS)


def _test_auc(ds, udg: bool, seed: int) -> float:
    train.set_seed(seed)
    model = models.build("din", ds.schema, udg=udg, gate_scale=2.0, **HP)
    res = train.fit(model, ds, train.TrainConfig(seed=seed, **CFG), log=lambda s: None)
    return res["test"]["auc"]


def test_udg_beats_its_base_model_on_user_specific_structure(planted):
    """DIN vs DIN+UDG (γ = 2), same data, same recipe, three fixed seeds. Measured here (test AUC,
    base → UDG): 0.825 → 0.844, 0.818 → 0.842, 0.817 → 0.834 (γ = 1 gives no reliable gain on
    this small set: see docs/models.md)."""
    diffs = []
    for seed in (0, 1, 2):
        base, udg = _test_auc(planted, False, seed), _test_auc(planted, True, seed)
        diffs.append(udg - base)
        assert udg > base + 0.005, f"seed {seed}: DIN {base:.4f}, DIN+UDG {udg:.4f}"
    assert sum(diffs) / len(diffs) > 0.01, diffs
