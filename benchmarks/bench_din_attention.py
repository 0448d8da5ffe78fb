"""Throughput of udg_fast.ops.din_attention (DIN's local activation unit: the scores
MLP([q, k, q − k, q ⊙ k]) of every valid history step) per provider, forward and forward+backward,
on padded batches with lengths uniform in [1, T].

Providers:
    eager     the reference (udg_fast.ops.din_attention_reference): the literal 4D concat on every
              step, then masked — what the model costs without udg_fast's kernels, and what the
              op runs on a GPU (faster there than the factored form: H200, 2026-11-28)
    factored  the op's eager factored form (q term once per sample, the valid steps packed): what
              torch.compile runs, and what the DIN/DIEN models ran on CPU before the kernel
    deepctr   DeepCTR-Torch's `LocalActivationUnit` (the 4D concat on every step; benchmarks only,
              skipped where it is not installed)
    cpu       the C++ kernel (csrc/cpu/din_attention.cpp)
    triton    the Triton kernels (kernels/din_attention.py; on a GPU only: the interpreter is
              not a timing)

    pytest benchmarks/bench_din_attention.py --benchmark-only -k "B2048-T50-D36" [--benchmark-json out.json]
    python benchmarks/report.py out.json

Shapes: B ∈ {256, 2048}, T ∈ {50, 100}, D ∈ {36, 128} (DIN on ml-100k at d = 18: item + category
= 36); attention MLP 80 → 40 → 1 with sigmoid (DIN's code); float32. The gradient flows from the
scores into q, k and every parameter.
"""
from __future__ import annotations

import pytest
import torch

import udg_fast
from udg_fast.ops import din_attention, din_attention_reference
from udg_fast.ops.din_attention import _din_attention_eager

from .conftest import sync

BATCHES = [256, 2048]
STEPS = [50, 100]
DIMS = [36, 128]
HIDDEN = (80, 40)
MODES = ["fwd", "fwd+bwd"]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SLOW = ("eager", "deepctr")


def _providers():
    cpu = ["cpu"] if DEVICE.type == "cpu" and udg_fast.backends()["cpu"]["usable"] else []
    gpu = ["triton"] if DEVICE.type == "cuda" and udg_fast.backends()["triton"]["usable"] else []
    return ["eager", "factored", "deepctr"] + cpu + gpu


def _inputs(b, t, d, requires_grad):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(b, d, generator=g), torch.randn(b, t, d, generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t) < lengths[:, None]
    dims = [4 * d, *HIDDEN, 1]
    ws = [torch.randn(dims[i + 1], dims[i], generator=g) * dims[i] ** -0.5 for i in range(len(dims) - 1)]
    bs = [torch.zeros(dims[i + 1]) for i in range(len(dims) - 1)]
    leaves = [x.to(DEVICE).requires_grad_(requires_grad) for x in [q, k, *ws, *bs]]
    return leaves, mask.to(DEVICE), torch.randn(b, t, generator=g).to(DEVICE)


def _fn(provider, leaves, d):
    q, k, w1, w2, w3, b1, b2, b3 = leaves
    if provider == "deepctr":
        try:
            from deepctr_torch.layers.core import LocalActivationUnit
        except ImportError as e:
            pytest.skip(f"deepctr-torch is not installed (pip install -r requirements-bench.txt): {e}")
        unit = LocalActivationUnit(hidden_units=HIDDEN, embedding_dim=d, activation="sigmoid").to(DEVICE)
        with torch.no_grad():  # the same parameters
            for lin, w, b in zip([*unit.dnn.linears, unit.dense], [w1, w2, w3], [b1, b2, b3]):
                lin.weight.copy_(w)
                lin.bias.copy_(b)
        own = list(unit.parameters())

        def run(mask):
            s = unit(q.unsqueeze(1), k).squeeze(-1)
            return torch.where(mask, s, torch.zeros_like(s))
        return run, own
    if provider == "factored":
        return (lambda mask: _din_attention_eager(q, k, mask, w1, b1, [w2, w3], [b2, b3], "sigmoid")), []
    backend = "reference" if provider == "eager" else provider
    fn = din_attention_reference if provider == "eager" else din_attention

    def run(mask):
        with udg_fast.use_backend(backend):
            return fn(q, k, mask, w1, b1, [w2, w3], [b2, b3], "sigmoid")
    return run, []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(b, t, d) for b in BATCHES for t in STEPS for d in DIMS],
                         ids=lambda s: f"B{s[0]}-T{s[1]}-D{s[2]}")
@pytest.mark.parametrize("provider", _providers())
def test_din_attention(benchmark, provider, shape, mode):
    b, t, d = shape
    backward = mode == "fwd+bwd"
    leaves, mask, grad = _inputs(b, t, d, backward)
    fn, own = _fn(provider, leaves, d)
    for p in own:
        p.requires_grad_(backward)
    benchmark.group = f"din_attention {mode} B={b} T={t} D={d}"
    benchmark.extra_info.update(provider=provider, batch=b, T=t, H=d, hidden="x".join(map(str, HIDDEN)),
                                mode=mode, device=str(DEVICE), dtype="float32", lengths="uniform [1, T]",
                                valid_steps=int(mask.sum()), threads=torch.get_num_threads())
    all_leaves = leaves + own

    def step():
        if backward:
            for v in all_leaves:
                v.grad = None
            y = fn(mask)
            y.backward(grad)
        else:
            with torch.no_grad():
                y = fn(mask)
        sync(DEVICE)
        return y

    for _ in range(2):  # warm-up (allocator)
        step()
    rounds = 5 if provider in SLOW else 15
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1, iterations=1)
