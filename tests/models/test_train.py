"""Trainer, checkpoints, resume, determinism, the CLI, and torch.compile of a UDG model."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from udg_fast import cli, data, metrics, models, train
from udg_fast.models import ModelError

from .conftest import tiny_hp

CFG = dict(batch_size=128, lr=5e-3, progress=False)


def _model(schema, name="din", udg=True, seed=0, **kw):
    train.set_seed(seed)
    return models.build(name, schema, udg=udg, **tiny_hp(name, **kw))


def _quiet(msg):
    pass


def _states_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fit_writes_best_checkpoint_and_metrics(synth, tmp_path):
    model = _model(synth.schema, "dien")
    res = train.fit(model, synth, train.TrainConfig(epochs=2, patience=0, **CFG), out_dir=tmp_path, log=_quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "metrics.json"]  # no .tmp left
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["test"] == pytest.approx(res["test"])
    assert [h["epoch"] for h in on_disk["history"]] == [1, 2]
    aucs = [h["valid"]["auc"] for h in res["history"]]
    assert res["best_epoch"] == 1 + max(range(2), key=lambda i: aucs[i])
    # the returned model is the best epoch's, and best.pt holds exactly it
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ckpt["epoch"] + 1 == res["best_epoch"] and ckpt["config"] == model.config
    loaded, _ = train.load_checkpoint(tmp_path / "best.pt", synth.schema)
    b = next(synth.test.batches(100))
    assert torch.equal(loaded.score(b), model.score(b).cpu())   # fit may have moved model to CUDA
    # RIG uses the training set's positive rate
    p = train.positive_rate(synth.train)
    h = -p * math.log(p) - (1 - p) * math.log(1 - p)
    assert res["test"]["rig"] == pytest.approx(1 - res["test"]["logloss"] / h)
    probs = train.predict(model, synth.test)
    assert res["test"]["auc"] == pytest.approx(metrics.auc(synth.test["label"], probs))


def test_numpy_numbers_in_the_config_still_give_loadable_checkpoints(synth, tmp_path):
    """Hyper-parameters and TrainConfig fields taken from numpy (a sweep over np.arange, a pandas
    row) used to be pickled as numpy objects, which torch.load(weights_only=True) refuses: fit
    wrote best.pt and last.pt that could never be loaded or resumed."""
    import numpy as np

    train.set_seed(0)
    hp = {**tiny_hp("din"), "embed_dim": np.int64(4), "hidden": np.array([8, 4]), "gate_scale": np.float32(2)}
    model = models.build("din", synth.schema, udg=True, **hp)
    cfg = train.TrainConfig(**{**CFG, "epochs": np.int64(1), "lr": np.float64(5e-3)})
    train.fit(model, synth, cfg, out_dir=tmp_path, log=_quiet)
    for name in ("best.pt", "last.pt"):
        loaded, ckpt = train.load_checkpoint(tmp_path / name, synth.schema)
        assert loaded.hparams["hidden"] == [8, 4] or tuple(loaded.hparams["hidden"]) == (8, 4)
        assert type(ckpt["config"]["hparams"]["embed_dim"]) is int
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["epochs"] == 1


def test_metrics_json_is_strict_json(tmp_path):
    """An undefined metric (gAUC when every user has one test sample) is null in metrics.json, not
    a bare NaN, which strict JSON parsers refuse."""
    ds = data.load("synthetic", cache=False, progress=False, n_users=30, samples_per_user=12, max_len=5)
    res = train.fit(_model(ds.schema, "pnn"), ds, train.TrainConfig(epochs=1, **CFG), out_dir=tmp_path, log=_quiet)
    assert math.isnan(res["test"]["gauc"])  # in Python: NaN

    def refuse(constant):
        raise AssertionError(f"metrics.json holds a bare {constant}")

    on_disk = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert on_disk["test"]["gauc"] is None and on_disk["test"]["auc"] == pytest.approx(res["test"]["auc"])


def test_a_checkpoint_that_cannot_be_written_leaves_no_file(synth, tmp_path):
    model = _model(synth.schema, "pnn")
    with pytest.raises(ModelError, match=r"extra\['note'\] is a object, which a checkpoint cannot hold"):
        train.save_checkpoint(tmp_path / "c.pt", model, epoch=0, extra={"note": object()})
    (tmp_path / "d.pt").mkdir()
    with pytest.raises(OSError):  # a folder in the way: the rename fails
        train.save_checkpoint(tmp_path / "d.pt", model, epoch=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.pt"]


def test_checkpoint_round_trip_gives_identical_predictions(synth, batch, tmp_path):
    for name, udg in (("pnn", True), ("dien", False)):
        model = _model(synth.schema, name, udg, product="both") if name == "pnn" else _model(synth.schema, name, udg)
        with torch.no_grad():  # move away from the initialisation
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        path = train.save_checkpoint(tmp_path / f"{name}.pt", model, epoch=0, metrics={"auc": 0.5})
        again, ckpt = train.load_checkpoint(path, synth.schema)
        assert ckpt["metrics"] == {"auc": 0.5}
        assert torch.equal(again.score(batch), model.score(batch))
        _states_equal(again.state_dict(), model.state_dict())


def test_cpu_training_repeats_exactly_and_resume_equals_one_run(synth, tmp_path):
    cfg2 = train.TrainConfig(epochs=2, patience=0, seed=3, **CFG)
    a = _model(synth.schema, "dien", seed=1)
    ra = train.fit(a, synth, cfg2, out_dir=tmp_path / "a", log=_quiet)
    b = _model(synth.schema, "dien", seed=1)
    rb = train.fit(b, synth, cfg2, log=_quiet)
    _states_equal(a.state_dict(), b.state_dict())
    assert ra["test"] == rb["test"]
    # one epoch, then resume for the second: the same as two epochs in one go
    c = _model(synth.schema, "dien", seed=1)
    train.fit(c, synth, train.TrainConfig(epochs=1, patience=0, seed=3, **CFG), out_dir=tmp_path / "c", log=_quiet)
    d = _model(synth.schema, "dien", seed=7)  # its own weights are overwritten by the checkpoint
    rd = train.fit(d, synth, cfg2, out_dir=tmp_path / "c", resume=tmp_path / "c" / "last.pt", log=_quiet)
    assert [h["train_loss"] for h in rd["history"]] == [h["train_loss"] for h in ra["history"]]
    assert rd["test"] == ra["test"]
    last_a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state_dict"]
    last_c = torch.load(tmp_path / "c" / "last.pt", weights_only=True)["state_dict"]
    _states_equal(last_a, last_c)


def test_resume_takes_its_own_runs_best_and_recipe(synth, tmp_path):
    """A resumed run's best epoch comes from its own files — never from another run's best.pt in
    out_dir (which once gave the other run's test metrics) — and the recipe must be the run's own."""
    cfg1 = train.TrainConfig(epochs=1, patience=0, seed=3, **CFG)
    cfg2 = train.TrainConfig(epochs=2, patience=0, seed=3, **CFG)
    train.fit(_model(synth.schema, "pnn", seed=1), synth, cfg1, out_dir=tmp_path / "a", log=_quiet)
    train.fit(_model(synth.schema, "pnn", seed=2), synth, cfg1, out_dir=tmp_path / "b", log=_quiet)  # another run
    whole = train.fit(_model(synth.schema, "pnn", seed=1), synth, cfg2, log=_quiet)
    got = train.fit(_model(synth.schema, "pnn", seed=9), synth, cfg2, out_dir=tmp_path / "b",
                    resume=tmp_path / "a" / "last.pt", log=_quiet)
    assert got["test"] == whole["test"] and got["best_epoch"] == whole["best_epoch"]
    assert torch.load(tmp_path / "b" / "best.pt", weights_only=True)["epoch"] + 1 == whole["best_epoch"]
    with pytest.raises(ModelError, match=r"the run was trained with lr=0.005, seed=3; resume it with the same values"):
        train.fit(_model(synth.schema, "pnn"), synth, train.TrainConfig(epochs=2, lr=0.05, seed=4, progress=False,
                                                                         batch_size=128),
                  resume=tmp_path / "a" / "last.pt", log=_quiet)


def test_resume_with_an_earlier_best_epoch_checks_its_best_pt(synth, tmp_path):
    """When the best epoch is earlier than the last, its weights are the best.pt beside last.pt,
    checked to be that run's (config and recipe) and that epoch's."""
    cfg = train.TrainConfig(epochs=1, patience=0, seed=3, **CFG)
    train.fit(_model(synth.schema, "pnn", seed=1), synth, cfg, out_dir=tmp_path / "a", log=_quiet)
    other = train.TrainConfig(epochs=1, patience=0, seed=4, **CFG)  # another run: another shuffling seed
    train.fit(_model(synth.schema, "pnn", seed=2), synth, other, out_dir=tmp_path / "b", log=_quiet)
    # a's last.pt made to say "epoch 2, best epoch 1" (an earlier best), beside b's best.pt of epoch 1
    ck = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    ck["epoch"], ck["best_epoch"] = 1, 0
    ck["history"] = ck["history"] * 2
    (tmp_path / "c").mkdir()
    torch.save(ck, tmp_path / "c" / "last.pt")
    (tmp_path / "c" / "best.pt").write_bytes((tmp_path / "b" / "best.pt").read_bytes())
    cfg3 = train.TrainConfig(epochs=3, patience=0, seed=3, **CFG)
    with pytest.raises(ModelError, match=r"needs its best\.pt beside it, and .*best\.pt holds epoch 1 of another run"):
        train.fit(_model(synth.schema, "pnn"), synth, cfg3, resume=tmp_path / "c" / "last.pt", log=_quiet)
    (tmp_path / "c" / "best.pt").unlink()
    with pytest.raises(ModelError, match=r"best\.pt does not exist"):
        train.fit(_model(synth.schema, "pnn"), synth, cfg3, resume=tmp_path / "c" / "last.pt", log=_quiet)
    (tmp_path / "c" / "best.pt").write_bytes((tmp_path / "a" / "best.pt").read_bytes())  # the run's own
    res = train.fit(_model(synth.schema, "pnn"), synth, cfg3, resume=tmp_path / "c" / "last.pt", log=_quiet)
    assert len(res["history"]) == 3


def test_a_run_stopped_between_last_pt_and_best_pt_resumes(synth, tmp_path):
    """An epoch writes last.pt, then best.pt: stopped in between, last.pt says its own epoch is the
    best, and resume takes the best weights from it (the earlier order made such a run
    unresumable), rewriting best.pt; the result is the uninterrupted run's."""
    cfg1 = train.TrainConfig(epochs=1, patience=0, seed=3, **CFG)
    cfg2 = train.TrainConfig(epochs=2, patience=0, seed=3, **CFG)
    whole = train.fit(_model(synth.schema, "dien", seed=1), synth, cfg2, log=_quiet)
    train.fit(_model(synth.schema, "dien", seed=1), synth, cfg1, out_dir=tmp_path, log=_quiet)
    (tmp_path / "best.pt").unlink()  # the stop came before best.pt was written
    (tmp_path / "metrics.json").unlink()
    got = train.fit(_model(synth.schema, "dien", seed=5), synth, cfg2, out_dir=tmp_path,
                    resume=tmp_path / "last.pt", log=_quiet)
    assert got["test"] == whole["test"]
    assert (tmp_path / "best.pt").is_file()


def test_out_dir_is_checked_before_training_and_a_fresh_run_clears_it(synth, tmp_path):
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(ModelError, match=f"out_dir {str(bad)!r}: cannot write there"):
            train.fit(_model(synth.schema, "pnn"), synth, train.TrainConfig(epochs=1, **CFG), out_dir=bad,
                      log=_quiet)
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.json").write_text("{}")  # an earlier run's files, not this one's
    (d / "best.pt").write_text("old")
    calls = []
    train.fit(_model(synth.schema, "pnn"), synth, train.TrainConfig(epochs=1, **CFG), out_dir=d,
              log=lambda s: calls.append(sorted(p.name for p in d.iterdir())))
    assert calls[0] == ["best.pt", "last.pt"]  # after epoch 1: the old metrics.json was gone


def test_resume_cli_defaults_to_the_runs_folder(synth, tmp_path, monkeypatch, capsys):
    argv = ["train", "--dataset", "synthetic", "-o", "n_users=40", "-o", "samples_per_user=30", "-o", "max_len=10",
            "--model", "pnn", "--epochs", "1", "--embed-dim", "4", "--hidden", "8", "--no-progress"]
    run = tmp_path / "a"
    assert cli.main(argv + ["--out", str(run)]) == 0
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv[:-5] + ["--epochs", "2", "--embed-dim", "4", "--hidden", "8", "--no-progress", "--resume",
                                 str(run / "last.pt")]) == 0
    assert f"wrote {run / 'metrics.json'}" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text())["config"]["epochs"] == 2
    assert not (tmp_path / "runs").exists()


def test_early_stopping_and_lr_decay(synth):
    model = _model(synth.schema, "wdl", udg=False)
    lines = []
    # a learning rate this large overfits the tiny set fast: valid AUC stops improving
    res = train.fit(model, synth, train.TrainConfig(epochs=8, patience=1, batch_size=64, lr=0.05, lr_decay=0.9,
                                                    progress=False), log=lines.append)
    n = len(res["history"])
    assert n < 8 and any("early stop" in s for s in lines)
    assert [h["lr"] for h in res["history"]] == pytest.approx([0.05 * 0.9 ** e for e in range(n)])
    assert res["valid"]["auc"] == max(h["valid"]["auc"] for h in res["history"])


@pytest.mark.parametrize("kw,match", [
    ({"lr": "1e-3"}, "lr must be a positive number, got '1e-3'"),
    ({"weight_decay": -1}, "weight_decay must be a number >= 0, got -1"),
    ({"weight_decay": float("nan")}, "weight_decay must be a number >= 0, got nan"),
    ({"lr_decay": 0}, r"lr_decay must be a number in \(0, 1\], got 0"),
    ({"device": 3}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 3"),
    ({"amp": "yes"}, "amp must be True or False, got 'yes'"),
    ({"progress": 1}, "progress must be True, False or None, got 1"),
    ({"epochs": 1.5}, "epochs must be a positive int, got 1.5"),
])
def test_train_config_names_a_bad_option(kw, match):
    with pytest.raises(ValueError, match=f"TrainConfig: {match}"):
        train.TrainConfig(**kw)


def test_fit_names_bad_arguments_and_labels(synth, tmp_path):
    model = _model(synth.schema, "pnn")
    cfg = train.TrainConfig(epochs=1, **CFG)
    with pytest.raises(ModelError, match="fit: dataset must be a udg_fast.data.Dataset .*got NoneType"):
        train.fit(model, None, cfg)
    with pytest.raises(ModelError, match="fit: model must be a udg_fast model"):
        train.fit(torch.nn.Linear(2, 2), synth, cfg)
    with pytest.raises(ModelError, match="fit: config must be a TrainConfig or None, got dict"):
        train.fit(model, synth, {"epochs": 1})
    bad = copy.copy(synth)
    bad.train = synth.train.select(np.arange(len(synth.train)))
    bad.train.arrays["label"] = bad.train["label"].astype(np.float32).copy()
    bad.train.arrays["label"][7] = np.nan
    with pytest.raises(ModelError, match="fit: the train split's labels must be 0 or 1, found nan in row 7"):
        train.fit(model, bad, cfg)


def test_damaged_checkpoints_are_named(synth, tmp_path):
    model = _model(synth.schema, "pnn")
    good = train.save_checkpoint(tmp_path / "good.pt", model, epoch=0)
    ck = torch.load(good, weights_only=True)
    for name, change, what in (("noconfig", lambda c: c.pop("config"), "has no 'config' dict"),
                               ("nostate", lambda c: c.pop("state_dict"), "has no 'state_dict' dict"),
                               ("strconfig", lambda c: c.__setitem__("config", "din"), "has no 'config' dict"),
                               ("noschema", lambda c: c["config"].pop("schema"), "its config lacks 'model', 'udg', 'hparams'")):
        c = copy.deepcopy(ck)
        change(c)
        torch.save(c, tmp_path / f"{name}.pt")
        with pytest.raises(ModelError, match=f"a damaged udg_fast checkpoint: {what}"):
            train.load_checkpoint(tmp_path / f"{name}.pt")
    with pytest.raises(ModelError, match="schema must be a udg_fast.data.Schema .* got dict"):
        train.load_checkpoint(good, {"fields": []})


def test_checkpoint_errors_are_clear(synth, tmp_path):
    model = _model(synth.schema, "din")
    path = train.save_checkpoint(tmp_path / "best.pt", model, epoch=0)
    other = data.load("synthetic", cache=False, progress=False, n_users=60, n_items=100, n_cats=6,
                      samples_per_user=40, max_len=12)
    with pytest.raises(ModelError, match=r"field 'item_id' has vocab_size 81 in the checkpoint but 101 in the data"):
        train.load_checkpoint(path, other.schema)
    longer = data.load("synthetic", cache=False, progress=False, n_users=60, n_items=80, n_cats=6,
                       samples_per_user=40, max_len=20)
    with pytest.raises(ModelError, match="max_len is 12 in the checkpoint but 20"):
        train.load_checkpoint(path, longer.schema)
    with pytest.raises(ModelError, match="max_len"):
        train.fit(model, longer, train.TrainConfig(epochs=1, **CFG), log=_quiet)
    # a state dict that does not fit the configuration
    ck = torch.load(path, weights_only=True)
    ck["config"]["hparams"]["hidden"] = [16, 4]
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match=r"does not fit the model din\+udg: shape mismatch mlp.layers.0.weight"):
        train.load_checkpoint(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable udg_fast checkpoint"):
        train.load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ModelError, match="no checkpoint at"):
        train.load_checkpoint(tmp_path / "missing.pt")
    # resuming another model's run
    with pytest.raises(ModelError, match=r"another model than the one to train \(model: 'din' there, 'pnn' here\)"):
        train.fit(_model(synth.schema, "pnn"), synth, train.TrainConfig(epochs=2, **CFG), resume=path, log=_quiet)
    with pytest.raises(ModelError, match=r"another model than the one to train \(gate_scale: 1.0 there, 2.0 here\)"):
        train.fit(_model(synth.schema, "din", gate_scale=2.0), synth, train.TrainConfig(epochs=2, **CFG), resume=path,
                  log=_quiet)


def test_train_and_evaluate_commands(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "synthetic", "-o", "n_users=40", "-o", "samples_per_user=30", "-o", "max_len=10",
            "--model", "wdl", "--udg", "--epochs", "1", "--seed", "0", "--embed-dim", "4", "--hidden", "8,4",
            "--gate-scale", "2", "--hp", "udg_dim=3", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "wdl+udg" in printed and "AUC" in printed and "Log Loss" in printed and "gAUC" in printed
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["hparams"]["gate_scale"] == 2.0 and saved["hparams"]["udg_dim"] == 3
    assert cli.main(["evaluate", "--checkpoint", str(out / "best.pt"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["auc"] == pytest.approx(saved["test"]["auc"], abs=1e-6)
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    # export: the program scores test rows as the checkpoint's model does
    ds = data.load("synthetic", cache=False, progress=False, n_users=40, samples_per_user=30, max_len=10)
    model, _ = train.load_checkpoint(out / "best.pt", ds.schema)
    rows = next(ds.test.batches(37, fields=model.required_fields()))
    for extra, name, in_graph in (([], "m.pt2", True), (["--reference"], "r.pt2", False)):
        assert cli.main(["export", "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / name),
                         "--example-rows", "16", *extra]) == 0
        printed = capsys.readouterr().out
        assert f"wrote {tmp_path / name}" in printed and ("udg_fast ops in the program: gated_linear" in printed) == in_graph
        prog = torch.export.load(tmp_path / name).module()
        torch.testing.assert_close(prog(rows), model.score(rows), rtol=1e-5, atol=1e-6)
    assert cli.main(["export", "--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "x.pt2"),
                     "--example-rows", "1"]) == 2
    assert "--example-rows must be >= 2" in capsys.readouterr().err and not (tmp_path / "x.pt2").exists()
    assert cli.main(argv[:-3] + ["--hp", "colour=blue", "--out", str(tmp_path / "other")]) == 2
    assert "unknown hyper-parameter(s) 'colour'" in capsys.readouterr().err
    # the folder holds a run: refused unless --resume or --overwrite
    before = (out / "metrics.json").read_text()
    assert cli.main(argv) == 2
    assert f"--out {out} holds a run already: --resume {out / 'last.pt'} continues it" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before
    assert cli.main(argv + ["--overwrite", "--seed", "1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == 1
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "xgboost"])


def test_torch_compile_of_a_udg_model_traces_in_one_graph(synth, batch):
    """fullgraph: the fused ops' fake implementations and registered autograd carry dynamo and
    AOTAutograd through forward and backward (aot_eager: the same graphs, no C++ codegen)."""
    model = _model(synth.schema, "dien", True).eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(batch), model(batch), rtol=1e-5, atol=1e-6)
    model.train()
    compiled(batch).sum().backward()
    assert model.gates.fc1.weight.grad is not None and model.evolver.weight_hh_l0.grad is not None


@pytest.mark.slow
def test_torch_compile_inductor_of_a_udg_model(synth, batch):
    """The default backend (inductor, C++ codegen on CPU): 20–40 s of compiling on this machine when
    inductor's cache is cold, ~2 s when warm."""
    model = _model(synth.schema, "din", True).eval()
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(batch), model(batch), rtol=1e-4, atol=1e-5)
