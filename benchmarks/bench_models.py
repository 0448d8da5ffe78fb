"""Model-level throughput: the ten variants (PNN, DeepFM, W&D, DIN, DIEN, each ± UDG) per provider,
training step (forward + loss + backward + Adam step) and inference (eval, no_grad), on synthetic
batches shaped like ml-100k (`udg_fast.bench.synthetic_batch`: its vocabularies and fields,
history lengths uniform in [1, T]).

Providers (`udg_fast.bench.make_case`):
    fused      udg_fast as built (fused gated_linear and AUGRU backends)
    reference  the same model with every udg_fast op forced to `reference` (eager PyTorch)
    compile    torch.compile (inductor) of the reference model; compilation is warm-up, its
               seconds are recorded in extra_info["setup_s"] (DIEN on a CPU only with
               UDG_FAST_BENCH_COMPILE_DIEN=1: its compilation took 8 minutes on the 2-core CPU)
    deepctr    DeepCTR-Torch 0.3.0's PNN, DeepFM, WDL, DIN, DIEN built with our sizes
               (`pip install -r requirements-bench.txt`); skipped, saying why, where it is not
               installed, and for the UDG variants (it has none)

Shapes: batch ∈ {256, 2048} (8192 too on a GPU), T = 50, d ∈ {18, 64}; float32.

    pytest benchmarks/bench_models.py --benchmark-only -k "B2048-T50-d18" --benchmark-timer=time.process_time \
        --benchmark-json=out.json
    python benchmarks/report_models.py out.json --out table.md

`test_peak_memory` records the peak memory of one DIEN + UDG training step (B=2048, T=100) for the
fused and the reference backends in extra_info (see `udg_fast.bench.measure_peak_memory`); its
timing is of no interest. Speed is recorded here, never asserted.
"""
from __future__ import annotations

import os

import pytest
import torch

from udg_fast import bench

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCHES = [256, 2048] + ([8192] if DEVICE.type == "cuda" else [])
HIST = [50]
EMBED = [18, 64]
SHAPES = [(b, t, d) for b in BATCHES for t in HIST for d in EMBED]
COMPILE_DIEN = "UDG_FAST_BENCH_COMPILE_DIEN"
SLOW_ROUNDS = 0.5  # seconds per step above which a case gets the minimum of rounds


def _skip_reason(provider, model, udg):
    if provider == "compile" and model == "dien" and DEVICE.type == "cpu" and not os.environ.get(COMPILE_DIEN):
        return (f"inductor compiles the reference DIEN (its eager AUGRU loop unrolled over T, forward and "
                f"backward) for about 8 minutes on this 2-core CPU (474 s, then 0.80 s/step, B=2048) and more under load; set {COMPILE_DIEN}=1 to include it")
    if provider == "deepctr":
        if udg:
            return "DeepCTR-Torch has no UDG variants"
        ok, why = bench.deepctr_available()
        if not ok:
            return why
    return None


@pytest.mark.parametrize("mode", bench.MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-T{s[1]}-d{s[2]}")
@pytest.mark.parametrize("variant", bench.variants(), ids=lambda v: bench.label(*v))
@pytest.mark.parametrize("provider", bench.PROVIDERS)
def test_model(benchmark, provider, variant, shape, mode):
    model, udg = variant
    b, t, d = shape
    why = _skip_reason(provider, model, udg)
    if why:
        pytest.skip(why)
    case = bench.make_case(provider, model, udg, b, t, d, mode, device=DEVICE)
    case.warmup(2)  # allocator, Adam state; for `compile` the compilation (timed in setup_seconds)
    benchmark.group = f"{mode} B={b} T={t} d={d}"
    benchmark.extra_info.update(provider=provider, model=model, udg=udg, batch=b, hist_len=t, embed_dim=d,
                                mode=mode, device=str(DEVICE), dtype="float32", parameters=case.parameters,
                                setup_s=case.setup_seconds, threads=torch.get_num_threads(),
                                lengths="uniform [1, T]")
    if provider == "deepctr":
        benchmark.extra_info["deepctr_torch"] = bench.environment().get("deepctr_torch")
    if os.environ.get("UDG_FAST_BACKEND"):  # a forced backend (e.g. gated_linear=reference) changes "fused"
        benchmark.extra_info["UDG_FAST_BACKEND"] = os.environ["UDG_FAST_BACKEND"]
    # one probe step decides the rounds: slow cases (DIEN on the reference backend, ~3 s) get 3
    import time

    t0 = time.perf_counter()
    case.step()
    bench._sync(DEVICE)
    probe = time.perf_counter() - t0
    rounds = 3 if probe > SLOW_ROUNDS else 10

    def step():
        out = case.step()
        bench._sync(DEVICE)
        return out

    benchmark.pedantic(step, rounds=rounds, warmup_rounds=0, iterations=1)


@pytest.mark.parametrize("provider", ["fused", "reference"])
def test_peak_memory(benchmark, provider):
    """Peak memory of one DIEN + UDG training step, B=2048, T=100, d=18 (issue: the fused AUGRU
    backward recomputes its gates, so it must not need more than the reference)."""
    r = bench.measure_peak_memory(provider, "dien", True, 2048, 100, 18, device=DEVICE)
    benchmark.group = "peak memory dien+udg train B=2048 T=100 d=18"
    benchmark.extra_info.update(r, mode="memory")
    # pytest-benchmark needs a timed call; a trivial one, its time is not a result
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
