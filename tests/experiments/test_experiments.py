"""`udg-fast experiment`: every command's files, resumption, the report, bad input."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from udg_fast import cli, models, train
from udg_fast import experiments as ex
from udg_fast.experiments import report as report_mod
from udg_fast.experiments.tables import RUN_COLUMNS

from .conftest import ARGS, make_setup

MODELS2 = ["pnn", "din"]


def _png_ok(path: Path, min_bytes: int = 5000) -> tuple[int, int]:
    """A valid PNG of non-trivial size: signature, decodable, not blank; returns (height, width)."""
    import matplotlib.image as mpimg

    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(raw) > min_bytes, (path, len(raw))
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, img.shape
    assert img[..., :3].std() > 0.05  # something is drawn
    return img.shape[:2]


def _md_rows(text: str) -> list[list[str]]:
    """The body rows of the first markdown table in `text`, as cells."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]


def test_table2_files_rows_and_columns(tmp_path, fit_calls):
    ctx = ex.make_context(make_setup(tmp_path), MODELS2)
    res = ex.run_experiment("table2", ctx, [0, 1], command="test")
    runs = pd.read_csv(tmp_path / "table2.csv")
    assert list(runs.columns) == RUN_COLUMNS
    assert len(runs) == 2 * 2 * 2
    assert set(zip(runs.model, runs.variant, runs.seed)) == {(m, v, s) for m in MODELS2 for v in ("base", "udg")
                                                              for s in (0, 1)}
    for k in ("auc", "logloss", "rmse", "rig", "gauc"):
        assert runs[k].notna().all(), k
    # UDG adds parameters; the base and UDG runs of a seed are separate trainings
    p = runs.groupby(["model", "variant"]).params.first()
    assert (p.xs("udg", level="variant") > p.xs("base", level="variant")).all()
    rows = _md_rows(res["markdown"])
    assert [r[0] for r in rows] == ["PNN", "PNN + UDG", "DIN", "DIN + UDG"]
    assert all(len(r) == 9 for r in rows)
    # the table's mean ± std is the CSV's
    pnn_auc = runs[(runs.model == "pnn") & (runs.variant == "base")].auc
    assert rows[0][2] == f"{pnn_auc.mean():.4f} ± {pnn_auc.std(ddof=1):.4f}"
    udg, base = runs[(runs.model == "din") & (runs.variant == "udg")].auc, runs[(runs.model == "din") &
                                                                               (runs.variant == "base")].auc
    assert rows[3][7] == f"{(udg.mean() - base.mean()) / base.mean() * 100:+.2f}%"
    assert rows[3][8].endswith("of 2")
    summ = pd.read_csv(tmp_path / "table2_summary.csv")
    assert len(summ) == 4 and {"auc_mean", "auc_std", "logloss_mean", "gauc_std", "n"} <= set(summ.columns)
    _png_ok(tmp_path / "table2.png")
    assert len(fit_calls) == 8


def test_resumption_skips_finished_runs(tmp_path, fit_calls):
    ctx = ex.make_context(make_setup(tmp_path), MODELS2)
    ex.run_experiment("table2", ctx, [0], command="test")
    assert len(fit_calls) == 4
    first = pd.read_csv(tmp_path / "table2.csv")
    # the same command again trains nothing and gives the same table
    ctx = ex.make_context(make_setup(tmp_path), MODELS2)
    ex.run_experiment("table2", ctx, [0], command="test")
    assert len(fit_calls) == 4 and ctx.trained == 0 and ctx.reused == 4
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "table2.csv"), first)
    # one more seed: only its four runs are trained
    ctx = ex.make_context(make_setup(tmp_path), MODELS2)
    ex.run_experiment("table2", ctx, [0, 1], command="test")
    assert len(fit_calls) == 8
    # table3 reuses table2's base and UDG runs: only the doubled-embedding ones are new
    ex.run_experiment("table3", ctx, [0, 1], command="test")
    assert fit_calls[8:] == [("pnn", False, 8), ("din", False, 8)] * 2
    # a different recipe is a different run (its own key), not a stale reuse
    ctx = ex.make_context(make_setup(tmp_path, train={"epochs": 1, "batch_size": 64}), ["pnn"])
    ex.run_experiment("table2", ctx, [0], command="test")
    assert len(fit_calls) == 14


def test_interrupted_command_continues_where_it_stopped(tmp_path, fit_calls):
    class Stop(Exception):
        pass

    def stop_in_third_run(msg):  # fit logs after each epoch's last.pt: stop run 3 after its epoch 1
        if "[3/4]" in msg and "epoch 1:" in msg:
            raise Stop

    setup = make_setup(tmp_path, train={"epochs": 2, "batch_size": 128, "patience": 0}, log=stop_in_third_run)
    ctx = ex.make_context(setup, MODELS2)
    with pytest.raises(Stop):
        ex.run_experiment("table2", ctx, [0], command="test")
    assert len(fit_calls) == 3
    assert not (tmp_path / "table2.csv").exists()
    lines = []
    ctx = ex.make_context(make_setup(tmp_path, train={"epochs": 2, "batch_size": 128, "patience": 0},
                                     log=lines.append), MODELS2)
    ex.run_experiment("table2", ctx, [0], command="test")
    assert len(fit_calls) == 5 and ctx.reused == 2 and ctx.trained == 2
    assert any("[3/4]" in s and "resumed from" in s for s in lines)
    resumed = pd.read_csv(tmp_path / "table2.csv").set_index(["model", "variant"])
    # the resumed run equals an uninterrupted one
    other = tmp_path / "fresh"
    ctx = ex.make_context(make_setup(other, train={"epochs": 2, "batch_size": 128, "patience": 0}), MODELS2)
    ex.run_experiment("table2", ctx, [0], command="test")
    fresh = pd.read_csv(other / "table2.csv").set_index(["model", "variant"])
    for k in ("auc", "logloss", "rmse", "rig", "gauc"):
        np.testing.assert_allclose(resumed[k].to_numpy(), fresh[k].to_numpy(), rtol=0, atol=1e-12, err_msg=k)


def test_table3_files(tmp_path):
    ctx = ex.make_context(make_setup(tmp_path), ["wdl", "dien"])
    res = ex.run_experiment("table3", ctx, [0, 1], command="test")
    t3 = pd.read_csv(tmp_path / "table3.csv")
    assert list(t3.model) == ["wdl", "dien"]
    assert list(t3.columns) == ["model", "n", "base_params", "base_auc_mean", "base_auc_std", "emb2x_params",
                                "emb2x_auc_mean", "emb2x_auc_std", "udg_params", "udg_auc_mean", "udg_auc_std"]
    assert (t3.n == 2).all()
    assert (t3.emb2x_params > t3.base_params).all() and (t3.udg_params > t3.base_params).all()
    schema = ctx.dataset.schema
    assert t3.base_params[0] == models.count_parameters(models.build("wdl", schema, embed_dim=4, hidden=(8, 4)))
    assert t3.emb2x_params[0] == models.count_parameters(models.build("wdl", schema, embed_dim=8, hidden=(8, 4)))
    rows = _md_rows(res["markdown"])
    assert [r[0] for r in rows] == ["W&D", "DIEN"] and all(len(r) == 7 for r in rows)
    assert len(pd.read_csv(tmp_path / "table3_runs.csv")) == 2 * 3 * 2


def test_penultimate_is_the_output_layers_input(tmp_path):
    ctx = ex.make_context(make_setup(tmp_path), ["pnn"])
    batch = next(ctx.dataset.test.batches(64))
    for udg in (False, True):
        train.set_seed(0)
        model = models.build("pnn", ctx.dataset.schema, udg=udg, embed_dim=4, hidden=(8, 6)).eval()
        h = ex.penultimate(model, batch)
        assert h.shape == (64, 6)
        out = model.mlp.layers[-1]
        torch.testing.assert_close(F.linear(h, out.weight, out.bias).squeeze(-1), model(batch), rtol=1e-5, atol=1e-5)


def test_tsne_files(tmp_path):
    from .conftest import DATA

    ctx = ex.make_context(make_setup(tmp_path, data_options={**DATA, "n_users": 20, "samples_per_user": 150}),
                          ["pnn"])
    res = ex.run_experiment("tsne", ctx, [0, 1], command="test")
    _png_ok(tmp_path / "tsne.png")
    import json

    doc = json.loads((tmp_path / "tsne.json").read_text())
    assert len(doc["users"]) == 2 and doc["samples"] >= 20
    test = ctx.dataset.test
    assert doc["samples"] == int(np.isin(test["user_id"], doc["users"]).sum())
    assert list(doc["models"]) == ["PNN", "PNN + UDG"]
    assert [(p["model"], p["seed"]) for p in doc["per_seed"]] == [("PNN", 0), ("PNN + UDG", 0), ("PNN", 1),
                                                                  ("PNN + UDG", 1)]
    for p in doc["per_seed"]:
        assert p["dim"] == 4  # the last hidden width of the tiny PNN
        assert -1 <= p["silhouette_tsne"] <= 1 and -1 <= p["silhouette_features"] <= 1
    for name, s in doc["models"].items():
        vals = [p["silhouette_features"] for p in doc["per_seed"] if p["model"] == name]
        assert s["silhouette_features_mean"] == pytest.approx(np.mean(vals))
        assert s["silhouette_features_std"] == pytest.approx(np.std(vals, ddof=1))
    assert len(_md_rows(res["markdown"])) == 2


def _fake_coldstart(monkeypatch, calls):
    import udg_fast.coldstart

    def run_table5(*, dataset, models, out_dir, seeds, k, data_path, data_options, progress):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        calls.append({"dataset": dataset, "models": models, "seeds": seeds, "k": k, "data_options": data_options})
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "table5.md").write_text("| model | warm-up AUC |\n| --- | ---: |\n| PNN | 0.61 |\n")
        (out_dir / "table5.csv").write_text("model,auc\npnn,0.61\n")
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [0.5, 0.6, 0.61])
        fig.savefig(out_dir / "figure4.png")
        plt.close(fig)
        return {"markdown": (out_dir / "table5.md").read_text(), "csv": out_dir / "table5.csv",
                "table": out_dir / "table5.md", "png": out_dir / "figure4.png", "counts": {}}

    # the real module, with a tiny study in place of the real one (report.run_table5 imports it at call
    # time); its precondition check passes (the tiny set has no user with more than upper = 100 samples)
    monkeypatch.setattr(udg_fast.coldstart, "run_table5", run_table5)
    monkeypatch.setattr(udg_fast.coldstart, "check_study", lambda dataset: None)


def _links(md: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", md)


def test_all_writes_a_report_that_links_only_existing_files(tmp_path, monkeypatch, capsys):
    calls = []
    _fake_coldstart(monkeypatch, calls)
    out = tmp_path / "res"
    rc = cli.main(["experiment", "all", *ARGS, "--models", "pnn,wdl", "--runs", "2", "--out", str(out)])
    assert rc == 0
    assert calls == [{"dataset": "synthetic", "models": ["pnn", "wdl"], "seeds": [0, 1], "k": None,
                      "data_options": {"n_users": 40, "n_items": 60, "n_cats": 5, "samples_per_user": 30,
                                       "max_len": 8}}]
    md = (out / "README.md").read_text()
    links = _links(md)
    for target in links:
        assert (out / target).is_file(), target
    for f in ("table2.png", "table2.csv", "table3.csv", "tsne.png", "table5/figure4.png", "table5/table5.csv"):
        assert f in links, f
    assert "| PNN | 0.61 |" in md  # table5.md embedded
    assert "udg-fast experiment all --dataset synthetic" in md and "--runs 2" in md
    assert "torch 2." in md and "cpu_count" in md
    for name in ("all", "table2", "table3", "tsne", "table5"):
        assert re.search(rf"^\| {name} \| done \|", md, re.M), name
    # a report rebuilt after a file went away does not link it
    (out / "tsne.json").unlink()
    assert cli.main(["experiment", "report", "--out", str(out)]) == 0
    md = (out / "README.md").read_text()
    assert "tsne.json" not in _links(md)
    assert all((out / t).is_file() for t in _links(md))


def test_all_skips_table5_when_the_dataset_cannot_give_it(tmp_path, monkeypatch, capsys, fit_calls):
    """`all` on a set where the cold-start study cannot run (here: every user has 30 samples, so none
    is a new user at the default thresholds 40–100) asks that before training, runs the other experiments, records and
    reports Table 5 as skipped with the reason, and exits 0 — it used to fail at its end, after
    training, without a report."""
    import json

    import udg_fast.coldstart

    calls = []  # the real check must refuse, and the study never be called
    monkeypatch.setattr(udg_fast.coldstart, "run_table5", lambda **kw: calls.append(kw))
    out = tmp_path / "res"
    rc = cli.main(["experiment", "all", *ARGS, "--models", "pnn", "--runs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert calls == []
    why = "no user has between lower = 40 and upper = 100 samples"
    assert "table5 will be skipped" in err and why in err
    assert err.index("table5 will be skipped") < err.index("==== experiment table2")
    rec = json.loads((out / "experiment.json").read_text())["experiments"]
    assert rec["table5"]["status"].startswith("skipped: ") and why in rec["table5"]["status"]
    assert rec["all"]["status"] == "done" and rec["table2"]["status"] == "done"
    md = (out / "README.md").read_text()
    assert "Table 5: skipped: " in md and why in md
    assert ("pnn", True, 4) in fit_calls  # the other experiments did train


def test_the_record_names_the_command_that_made_the_tables(tmp_path, fit_calls):
    """Re-running a command whose runs all exist keeps the record of the command that trained them
    only when it is the same experiment (seeds, models, data, hyper-parameters, recipe): after
    embed_dim 4, then 6, then 4 again (all reused), the record is the last command's, not the
    embed_dim 6 one's (which once stood above tables it did not make)."""
    import json

    out = tmp_path / "o"
    base = ["experiment", "table2", *ARGS, "--models", "pnn", "--runs", "1", "--out", str(out)]
    for dim in (4, 6, 4):
        assert cli.main(base + ["--hp", f"embed_dim={dim}"]) == 0
    entry = json.loads((out / "experiment.json").read_text())["experiments"]["table2"]
    assert "embed_dim=4" in entry["command"] and "embed_dim=6" not in entry["command"]
    assert entry["runs_trained"] == 0 and "regenerated" not in entry
    assert cli.main(base + ["--hp", "embed_dim=4"]) == 0  # the same again: still that record
    assert json.loads((out / "experiment.json").read_text())["experiments"]["table2"]["runs_key"] == entry["runs_key"]


def test_check_study_names_what_is_missing():
    """The cold-start precondition: profile fields, new users and active users at the thresholds."""
    from udg_fast import data
    from udg_fast.coldstart import ColdStartError, check_study

    rng = np.random.default_rng(0)
    rows = [{"user": u, "item": int(rng.integers(1, 40)), "click": int(rng.integers(0, 2)), "ts": t, "age": 20 + u}
            for u in range(1, 7) for t in range(12 if u <= 3 else 30)]  # users 1–3: 12 samples, 4–6: 30
    df = pd.DataFrame(rows)
    kw = dict(user="user", item="item", label="click", timestamp="ts")
    with pytest.raises(ColdStartError, match="no user-profile fields"):
        check_study(data.from_interactions(df, **kw, profile=None))
    ds = data.from_interactions(df, **kw, profile=["age"])
    check_study(ds, k=2, lower=8, upper=20)  # new: users 1–3, active: 4–6
    with pytest.raises(ColdStartError, match="no user has between lower = 40 and upper = 100 samples"):
        check_study(ds)
    with pytest.raises(ColdStartError, match="no user has more than upper = 30 samples to pre-train on"):
        check_study(ds, k=2, lower=8, upper=30)


@pytest.mark.parametrize("argv, message", [
    (["experiment", "table9"], "invalid choice: 'table9'"),
    (["experiment", "table2", "--dataset", "no-such-set"], "unknown dataset 'no-such-set'"),
    (["experiment", "table2", "--dataset", "synthetic", "--models", "pnn,xgboost"], "unknown model(s) 'xgboost'"),
    (["experiment", "table2", "--dataset", "synthetic", "--runs", "0"], "runs must be a positive int"),
    (["experiment", "table2", "--dataset", "synthetic", "--hp", "emb_dim=4"], "unknown hyper-parameter(s) 'emb_dim'"),
    (["experiment", "table2", "--dataset", "synthetic", "-o", "n_users=-3"], "n_users"),
    (["experiment", "tsne", "--dataset", "synthetic", "--tsne-users", "1,x"], "--tsne-users"),
    (["experiment", "report", "--out", "/nonexistent/dir"], "no experiment.json"),
])
def test_bad_input_fails_before_training(argv, message, fit_calls, capsys, tmp_path):
    if "--out" not in argv:
        argv = argv + ["--out", str(tmp_path / "o")]
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    assert rc == 2
    assert message in capsys.readouterr().err
    assert fit_calls == []


@pytest.mark.parametrize("as_zip", [True, False])
def test_dataset_by_path(tmp_path, as_zip, fit_calls):
    """`--dataset ~/ml-100k.zip`: the dataset named by the raw files' name, loaded from the path."""
    import json

    from tests.data.conftest import tiny_movielens, write_grouplens_100k

    raw = write_grouplens_100k(tmp_path / "raw", tiny_movielens(n_users=40), as_zip=as_zip)
    out = tmp_path / "res"
    rc = cli.main(["experiment", "table2", "--dataset", str(raw), "--models", "pnn", "--runs", "1", "--out", str(out),
                   "--hp", "embed_dim=4", "--hp", "hidden=8,4", "--epochs", "1", "--no-progress"])
    assert rc == 0
    assert len(pd.read_csv(out / "table2.csv")) == 2 and len(fit_calls) == 2
    ds = json.loads((out / "experiment.json").read_text())["setup"]["dataset"]
    assert ds["name"] == "ml-100k" and ds["path"] == str(raw.resolve())
    assert ds["options"]["max_len"] == 50


def test_unrecognised_path_is_a_clear_error(tmp_path, fit_calls, capsys):
    d = tmp_path / "my-ratings"
    d.mkdir()
    assert cli.main(["experiment", "table2", "--dataset", str(d), "--out", str(tmp_path / "o")]) == 2
    assert f"unknown dataset {str(d)!r}" in capsys.readouterr().err and fit_calls == []


def test_rerun_that_reuses_everything_keeps_the_training_record(tmp_path):
    ctx = ex.make_context(make_setup(tmp_path), ["pnn"])
    ex.run_experiment("table2", ctx, [0], command="first")
    ctx = ex.make_context(make_setup(tmp_path), ["pnn"])
    ex.run_experiment("table2", ctx, [0], command="second")
    e = report_mod.read_record(tmp_path)["experiments"]["table2"]
    assert e["command"] == "first" and e["runs_trained"] == 2 and e["regenerated"]["command"] == "second"
    # more seeds: a new record
    ctx = ex.make_context(make_setup(tmp_path), ["pnn"])
    ex.run_experiment("table2", ctx, [0, 1], command="third")
    e = report_mod.read_record(tmp_path)["experiments"]["table2"]
    assert e["command"] == "third" and e["runs_trained"] == 2 and e["runs_reused"] == 2 and "regenerated" not in e


def test_pick_users_prefers_both_labels_well_populated():
    from udg_fast.data import Split
    from udg_fast.experiments.tsne import pick_users

    users = [1] * 30 + [2] * 10 + [3] * 12 + [4] * 6
    labels = [1] * 29 + [0] + [1, 0] * 5 + [1] * 6 + [0] * 6 + [1] * 6
    split = Split("test", {"user_id": np.array(users), "label": np.array(labels)})
    assert pick_users(split) == [3, 2]  # 6 and 5 samples of the rarer label; user 1 has 1, user 4 only one label
    with pytest.raises(ex.ExperimentError, match="both labels"):
        pick_users(Split("test", {"user_id": np.array([4] * 6), "label": np.array([1] * 6)}))
