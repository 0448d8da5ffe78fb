"""Throughput of udg_fast.ops.gated_linear (Eq. 7) per provider, forward and forward+backward.

Providers: `eager` (the reference: sigmoid, mul, addmm, relu as separate ops), `compile`
(torch.compile of the reference; on GPU mode="max-autotune"), each udg_fast backend usable here,
and `gemm_floor` — the GEMMs alone (forward; + dgrad and wgrad for fwd+bwd) on the same shapes,
the least any implementation built on those GEMMs can take.

    pytest benchmarks/bench_gated_linear.py --benchmark-only [--benchmark-json out.json]
    python benchmarks/report.py out.json          # markdown table with ratios

Shapes: B ∈ {256, 4096, 16384}; (d_in, d_out) ∈ {(400, 200), (200, 80), (80, 1)} — the sizes of a
typical UDG prediction MLP (400 → 200 → 80 → 1).
"""
from __future__ import annotations

import os

import pytest
import torch

import udg_fast
from udg_fast.ops import gated_linear, gated_linear_reference

from .conftest import fused_backends, sync

BATCHES = [256, 4096, 16384]
DIMS = [(400, 200), (200, 80), (80, 1)]
MODES = ["fwd", "fwd+bwd"]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _providers():
    return ["eager", "compile", "gemm_floor"] + fused_backends(DEVICE)


def _inputs(b, k, n, requires_grad):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(b, k, device=DEVICE, generator=g, requires_grad=requires_grad)
    gl = torch.randn(b, k, device=DEVICE, generator=g, requires_grad=requires_grad)
    w = (torch.randn(n, k, device=DEVICE, generator=g) * k ** -0.5).requires_grad_(requires_grad)
    bias = torch.zeros(n, device=DEVICE, requires_grad=requires_grad)
    return x, gl, w, bias


_compiled = {}


def _fn(provider):
    if provider == "eager":
        return gated_linear_reference
    if provider == "compile":
        if "compile" not in _compiled:
            # max-autotune on GPU by default; the GPU check sets UDG_BENCH_COMPILE_MODE=default
            # (the first run spent its whole 111 s bench budget in max-autotune tuning).
            mode = os.environ.get("UDG_BENCH_COMPILE_MODE", "max-autotune" if DEVICE.type == "cuda" else "default")
            _compiled["compile"] = torch.compile(gated_linear_reference, mode=None if mode == "default" else mode,
                                                 dynamic=False)
        return _compiled["compile"]

    def run(x, gl, w, b, act="relu"):
        with udg_fast.use_backend(provider):
            return gated_linear(x, gl, w, b, act)

    return run


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dims", DIMS, ids=[f"{k}x{n}" for k, n in DIMS])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("provider", _providers())
def test_gated_linear(benchmark, provider, batch, dims, mode):
    k, n = dims
    if provider == "compile" and DEVICE.type == "cuda" and (dims != (400, 200) or batch < 4096):
        # mode="max-autotune" costs ~1 min of tuning per shape; the GPU check has 8 minutes.
        pytest.skip("torch.compile(max-autotune) is measured at 400x200, B >= 4096 on GPU only")
    act = "none" if n == 1 else "relu"  # the output layer has no ReLU
    backward = mode == "fwd+bwd"
    x, gl, w, b = _inputs(batch, k, n, backward)
    benchmark.group = f"gated_linear {mode} B={batch} {k}->{n}"
    benchmark.extra_info.update(provider=provider, batch=batch, d_in=k, d_out=n, mode=mode,
                                device=str(DEVICE), dtype="float32")

    if provider == "gemm_floor":
        xs = torch.randn(batch, k, device=DEVICE)
        dy = torch.randn(batch, n, device=DEVICE)
        wd = w.detach()

        def step():
            y = torch.mm(xs, wd.t())
            if backward:
                torch.mm(dy, wd)        # dgrad
                torch.mm(dy.t(), xs)    # wgrad
            sync(DEVICE)
            return y
    else:
        fn = _fn(provider)
        grad = torch.ones(batch, n, device=DEVICE)

        def step():
            if backward:
                for t in (x, gl, w, b):
                    t.grad = None
                y = fn(x, gl, w, b, act)
                y.backward(grad)
            else:
                with torch.no_grad():
                    y = fn(x, gl, w, b, act)
            sync(DEVICE)
            return y

    for _ in range(3):  # warm-up (compilation, autotuning, allocator)
        step()
    benchmark.pedantic(step, rounds=max(5, 20 if batch <= 4096 else 8), warmup_rounds=1, iterations=1)
