"""`udg-fast bench` and the model-level benchmark cases (`udg_fast.bench`): the cases run the same
models as the library, the peer models get the same inputs, the table's ratios are right, the
memory measurement measures, bad input is refused. Nothing here times anything."""
from __future__ import annotations

import pytest
import torch

import udg_fast
from udg_fast import bench, cli

TINY = dict(batch=16, hist_len=6, embed_dim=4)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_synthetic_batch_is_shaped_like_the_schema():
    schema = bench.synthetic_schema(7)
    b = bench.synthetic_batch(schema, 33, seed=1)
    assert schema.vocab_size("user_id") == 944 and schema.vocab_size("item_id") == 1683   # ml-100k's
    assert b["hist_item"].shape == (33, 7) and b["hist_len"].min() >= 1 and b["hist_len"].max() <= 7
    valid = torch.arange(7) < b["hist_len"].unsqueeze(1)
    for f in ("hist_item", "hist_cat", "neg_hist_item", "neg_hist_cat"):
        assert (b[f][~valid] == 0).all() and (b[f][valid] > 0).all(), f
        assert (b[f] < schema.vocab_size(schema[f].key)).all(), f
    for f in schema.user_fields + schema.profile_fields + schema.item_fields:
        assert ((b[f] >= 1) & (b[f] < schema.vocab_size(f))).all(), f
    assert torch.equal(bench.synthetic_batch(schema, 33, seed=1)["hist_item"], b["hist_item"])


@pytest.mark.parametrize("model", bench.BASE_MODELS)
@pytest.mark.parametrize("udg", [False, True])
def test_fused_and_reference_cases_are_the_same_model(model, udg):
    """The `reference` provider is the same model on the same batch, only its ops on the eager
    backend: its first training loss equals the fused one, and every step trains."""
    losses = {}
    for p in ("fused", "reference"):
        case = bench.make_case(p, model, udg, mode="train", **TINY)
        losses[p] = [float(case.step()) for _ in range(3)]
        inf = bench.make_case(p, model, udg, mode="infer", **TINY).step()
        assert inf.shape == (TINY["batch"],) and torch.isfinite(inf).all()
    assert losses["fused"][0] == pytest.approx(losses["reference"][0], rel=1e-5)
    assert losses["fused"][-1] < losses["fused"][0]          # Adam steps on one batch lower its loss


def test_deepctr_models_read_our_batch():
    pytest.importorskip("deepctr_torch", reason="deepctr-torch is a benchmark-only dependency")
    schema = bench.synthetic_schema(6)
    b = bench.synthetic_batch(schema, 16, seed=0)
    for model in bench.BASE_MODELS:
        net, names = bench.build_deepctr(model, schema, 4)
        x = bench.deepctr_input(b, names)
        fi = net.feature_index
        assert torch.equal(x[:, slice(*fi["hist_item_id"])].long(), b["hist_item"])
        assert torch.equal(x[:, slice(*fi["hist_item_cat"])].long(), b["hist_cat"])
        assert torch.equal(x[:, slice(*fi["seq_length"])].long().squeeze(1), b["hist_len"])
        assert torch.equal(x[:, slice(*fi["item_id"])].long().squeeze(1), b["item_id"])
        if model == "dien":
            assert torch.equal(x[:, slice(*fi["neg_hist_item_id"])].long(), b["neg_hist_item"])
        # same embedding size, one table per id field (the history shares the item's)
        assert {k: v.weight.shape[1] for k, v in net.embedding_dict.items()} == {
            k: 4 for k in ("user_id", "age", "gender", "occupation", "item_id", "item_cat")}
        case = bench.make_case("deepctr", model, False, mode="train", batch=16, hist_len=6, embed_dim=4)
        first = float(case.step())
        assert torch.isfinite(torch.tensor(first))


def test_deepctr_has_no_udg_and_bad_cases_are_refused():
    with pytest.raises(bench.BenchError, match="no UDG"):
        bench.make_case("deepctr", "din", True, **TINY)
    with pytest.raises(bench.BenchError, match="provider"):
        bench.make_case("tensorflow", "din", False, **TINY)
    with pytest.raises(bench.BenchError, match="batch"):
        bench.make_case("fused", "din", False, batch=0, hist_len=5, embed_dim=4)
    with pytest.raises(bench.BenchError, match="model"):
        bench.make_case("fused", "xgboost", False, **TINY)


def _r(provider, model, udg, ms, mode="train"):
    return {"provider": provider, "model": model, "udg": udg, "batch": 2048, "hist_len": 50, "embed_dim": 18,
            "mode": mode, "median_s": ms / 1e3}


def test_table_ratios():
    rows = [_r("fused", "din", False, 100), _r("reference", "din", False, 150), _r("deepctr", "din", False, 300),
            _r("fused", "din", True, 125), _r("reference", "din", True, 200)]
    text = bench.format_table(rows)
    lines = [ln for ln in text.splitlines() if ln.startswith("| train")]
    assert len(lines) == 2
    base, udg = (ln.split(" | ") for ln in lines)
    assert base[4:] == ["din", "100.0", "150.0", "300.0", "20,480", "1.50×", "3.00×", " |"]
    # the UDG row: fused vs its own reference, DeepCTR's base model over it, UDG / base = 1.25
    assert udg[4:] == ["din+udg", "125.0", "200.0", "", "16,384", "1.60×", "2.40×", "1.25 |"]


def test_cpu_peak_bytes_of_known_allocations():
    def fn():
        a = torch.empty(4 << 20, dtype=torch.uint8)    # 4 MiB
        b = torch.empty(2 << 20, dtype=torch.uint8)    # + 2 MiB: peak 6 MiB
        del a, b
        c = torch.empty(5 << 20, dtype=torch.uint8)    # 5 MiB after the frees
        del c

    peak = bench._cpu_peak_bytes(fn)
    assert 6 << 20 <= peak < (6 << 20) + (64 << 10)


def test_fused_dien_udg_step_needs_no_more_memory_than_reference():
    """The issue's memory claim, at a small size (allocation sizes are deterministic): the fused
    AUGRU backward recomputes its gates instead of keeping the eager loop's per-step graph."""
    f = bench.measure_peak_memory("fused", "dien", True, batch=64, hist_len=30, embed_dim=8)
    r = bench.measure_peak_memory("reference", "dien", True, batch=64, hist_len=30, embed_dim=8)
    assert 0 < f["peak_bytes"] <= r["peak_bytes"], (f["peak_bytes"], r["peak_bytes"])
    with pytest.raises(bench.BenchError):
        bench.measure_peak_memory("deepctr")


def test_cli_prints_the_table(capsys):
    code = cli.main(["bench", "--models", "pnn,din", "--providers", "fused,reference", "--modes", "train,infer",
                     "--batch", "16", "--hist-len", "6", "--embed-dim", "4", "--rounds", "1", "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "B=16, T=6, d=4" in out and "torch " + torch.__version__ in out
    rows = [ln for ln in out.splitlines() if ln.startswith("| train") or ln.startswith("| infer")]
    assert [ln.split(" | ")[4] for ln in rows] == ["pnn", "pnn+udg", "din", "din+udg"] * 2
    assert "fused vs reference" in out and "UDG / base (fused)" in out


def test_cli_writes_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert cli.main(["bench", "--models", "wdl", "--providers", "fused", "--batch", "8", "--hist-len", "4",
                     "--embed-dim", "4", "--rounds", "1", "--json", str(path)]) == 0
    import json

    data = json.loads(path.read_text())
    assert [(r["model"], r["udg"], r["provider"]) for r in data["results"]] == [("wdl", False, "fused"),
                                                                                 ("wdl", True, "fused")]
    assert data["environment"]["torch"] == torch.__version__


def test_cli_hp_reaches_the_udg_fast_models(tmp_path, capsys):
    """--hp gate_hidden=3 builds the UDG model with 3-wide gate networks (fewer parameters)."""
    runs = {}
    for hp in ([], ["--hp", "gate_hidden=3"]):
        path = tmp_path / f"r{len(hp)}.json"
        assert cli.main(["bench", "--models", "pnn", "--providers", "fused", "--batch", "8", "--hist-len", "4",
                         "--embed-dim", "4", "--rounds", "1", "--json", str(path), *hp]) == 0
        import json

        runs[len(hp)] = {r["udg"]: r["parameters"] for r in json.loads(path.read_text())["results"]}
    assert runs[2][False] == runs[0][False] and runs[2][True] < runs[0][True]
    assert "hyper-parameters {'gate_hidden': 3}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["--models", "xgboost"], "unknown model 'xgboost'"),
    (["--providers", "tf"], "unknown provider 'tf'"),
    (["--modes", "serve"], "unknown mode 'serve'"),
    (["--batch", "0"], "--batch must be a positive int"),
    (["--threads", "0"], "--threads must be a positive int"),
    (["--hp", "gate_hidden"], "--hp 'gate_hidden' is not KEY=VALUE"),
    (["--models", "pnn", "--hp", "gate_hiden=3", "--providers", "fused"], "unknown hyper-parameter(s) 'gate_hiden'"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--batch", "-1"], ""),
])
def test_cli_bad_input(argv, msg, capsys):
    assert cli.main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert "udg-fast bench: error:" in err and msg in err


def test_process_timer_needs_one_thread(capsys):
    """Process time sums every thread's CPU time: with two threads a 3.7 ms step read as 183 ms."""
    threads = torch.get_num_threads()
    try:
        assert cli.main(["bench", "--timer", "process", "--threads", "2", "--models", "pnn"]) == 2
        assert "--timer process measures one CPU thread: give --threads 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)


def test_backend_is_restored_after_a_reference_case():
    case = bench.make_case("reference", "din", True, mode="infer", **TINY)
    case.step()
    assert udg_fast._backend.forced_backend() is None
