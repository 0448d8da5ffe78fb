"""The Table 5 study: meta initialisation beats random where the profile determines behaviour;
outputs; CLI; bad input before any training."""
from __future__ import annotations

import numpy as np
import pytest

from udg_fast import data, train
from udg_fast.cli import main
from udg_fast.coldstart import ColdStartError, StudyConfig, prepare_study_data, run_one, run_table5
from udg_fast.coldstart.study import hide_profiles

# Clicks depend on the user's profile only (personal_strength 0): w_u = Σ_field A_field[profile].
PROFILE_DRIVEN = dict(n_users=300, samples_per_user=60, activity_skew=0.6, personal_strength=0.0,
                      profile_strength=1.5, scale=3.0, dim=4, n_cats=10, n_items=200, max_len=20)
TINY_STUDY = dict(pre_epochs=3, lr=5e-3, hparams=dict(embed_dim=8, hidden=(32, 16), gate_scale=2.0),
                  meta_steps=300)


@pytest.fixture(scope="module")
def profile_driven():
    return data.load("synthetic", cache=False, progress=False, **PROFILE_DRIVEN)


def test_meta_init_beats_random_in_the_cold_start_phase(profile_driven):
    """PNN+UDG whose only route from a new user's profile to its prediction is f_meta
    (`profile_in_model=False`). Measured (seed: random → meta, held-out AUC / Log Loss):
    0: 0.7219 → 0.7374 / 0.6109 → 0.5903; 1: 0.7233 → 0.7356 / 0.6097 → 0.5901."""
    sd = prepare_study_data(profile_driven, 5, 20, 60)
    assert sd.counts["new_users"] == 162 and sd.counts["active_users"] == 123
    cfg = StudyConfig(profile_in_model=False, **TINY_STUDY)
    for seed in (0, 1):
        r = run_one(sd, "pnn", seed, cfg, progress=False)
        rnd, meta = r["random"]["cold"], r["meta"]["cold"]
        assert meta["auc"] > rnd["auc"] + 0.008, (seed, rnd, meta)
        assert meta["logloss"] < rnd["logloss"] - 0.01, (seed, rnd, meta)
        for ph in ("a", "b", "c"):   # every phase is measured on the same held-out set
            assert np.isfinite(r["meta"][ph]["auc"]) and np.isfinite(r["random"][ph]["auc"])


def test_run_table5_writes_table_csv_png(tmp_path, skewed, monkeypatch):
    monkeypatch.setattr("udg_fast.coldstart.study._data.load", lambda *a, **k: skewed)
    lines = []
    res = run_table5("synthetic", "pnn", tmp_path / "out", seeds=2, k=5, upper=60, log=lines.append,
                     pre_epochs=1, meta_steps=5, hparams={"embed_dim": 4, "hidden": (8, 4)})
    assert set(res) >= {"markdown", "csv", "table", "png", "counts"}
    assert res["table"] == tmp_path / "out" / "table5.md" and res["table"].read_text() == res["markdown"]
    assert res["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["counts"]["new_users"] > 0 and res["counts"]["lower"] == 20
    import pandas as pd

    df = pd.read_csv(res["csv"])
    assert len(df) == 1 * 2 * 4 and set(df["phase"]) == {"cold", "a", "b", "c"}
    base = df[(df.init == "random") & (df.phase == "cold")].iloc[0]
    assert base["auc_rel_pct"] == 0.0 and base["seeds"] == 2
    row = df[(df.init == "meta") & (df.phase == "c")].iloc[0]
    assert row["auc_rel_pct"] == pytest.approx(100 * (row["auc_mean"] / base["auc_mean"] - 1), abs=1e-4)
    assert "| PNN + UDG | meta |" in res["markdown"] and "warm-up c" in res["markdown"]
    assert "new (20 ≤ n ≤ 60)" in lines[0]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_no_profile_fields_is_a_clear_error_before_training(tmp_path, skewed, monkeypatch):
    no_profile = data.Dataset("plain", hide_profiles(skewed.schema), skewed.train, skewed.valid, skewed.test)
    monkeypatch.setattr("udg_fast.coldstart.study._data.load", lambda *a, **k: no_profile)
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ColdStartError, match="'plain' has no user-profile fields"):
        run_table5("plain", ["pnn"], tmp_path, seeds=1)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kw,match", [
    (dict(models="pnn,foo"), "unknown model"),
    (dict(seeds=0), "seeds must be >= 1"),
    (dict(k=10, lower=20), "below 4·K"),
    (dict(warm_lrr=1e-3), "unknown training option"),
    (dict(hparams={"gate_scal": 2.0}), "unknown hyper-parameter"),
    (dict(upper=10_000), "more than upper = 10000"),
])
def test_bad_arguments_fail_before_training(tmp_path, skewed, monkeypatch, kw, match):
    monkeypatch.setattr("udg_fast.coldstart.study._data.load", lambda *a, **k: skewed)
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("training started"))
    args = {"models": "pnn", **kw}
    with pytest.raises(ValueError, match=match):
        run_table5("synthetic", args.pop("models"), tmp_path, **{"k": 5, **args})


def test_cli(tmp_path, capsys):
    out = tmp_path / "cs"
    rc = main(["coldstart", "--dataset", "synthetic", "-o", "n_users=60", "-o", "samples_per_user=40",
               "-o", "activity_skew=0.8", "-o", "max_len=12", "-o", "seed=1", "--models", "wdl", "--k", "5",
               "--upper", "60", "--seeds", "1", "--pre-epochs", "1", "--meta-steps", "3", "--hp", "embed_dim=4",
               "--hp", "hidden=(8,4)", "--set", "warm_batch_size=64", "--no-progress", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "| W&D + UDG | random |" in cap.out
    assert (out / "table5.md").is_file() and (out / "figure4.png").is_file() and (out / "table5.csv").is_file()
    rc = main(["coldstart", "--dataset", "synthetic", "--k", "10", "--lower", "20", "--out", str(tmp_path / "x")])
    assert rc == 2 and "below 4·K" in capsys.readouterr().err
