"""Throughput of udg_fast.ops.augru (DIEN's AUGRU; a GRU without att) per provider, forward and
forward+backward, on padded batches with random lengths in [1, T].

Providers:
    eager     the reference: a plain loop over t in eager PyTorch (udg_fast.ops.augru_reference)
    nn.GRU    torch.nn.GRU on packed sequences — GRU cell only (pack and unpack are timed too,
              since the op takes padded input)
    deepctr   DeepCTR-Torch's AUGRU: `deepctr_torch.layers.sequence.DynamicGRU(gru_type="AUGRU")`
              on packed sequences — AUGRU cell only (pack and unpack timed too). Benchmarks only:
              `pip install deepctr-torch requests` (0.3.0 imports `requests` without declaring
              it); the provider skips, saying so, where it is not installed.
    cpu, triton, cuda   each udg_fast backend usable here

    pytest benchmarks/bench_augru.py --benchmark-only -k "B1024-T50-H36" [--benchmark-json out.json]
    python benchmarks/report.py out.json          # markdown table with ratios

Shapes: B ∈ {256, 1024, 4096}, T ∈ {20, 50, 100}, H ∈ {18, 36, 64}, input size I = H (DIEN's
interest-evolution layer reads the extractor's states); float32. The gradient flows from the
outputs (every provider returns them; DeepCTR's DynamicGRU has no h_n) into x, att and all
parameters.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import udg_fast
from udg_fast.ops import augru

from .conftest import fused_backends, sync

BATCHES = [256, 1024, 4096]
STEPS = [20, 50, 100]
HIDDEN = [18, 36, 64]
MODES = ["fwd", "fwd+bwd"]
CELLS = ["augru", "gru"]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SLOW = ("eager", "deepctr")  # fewer rounds: a Python loop over t per call


def _providers():
    return ["eager", "nn.GRU", "deepctr"] + fused_backends(DEVICE)


def _deepctr_gru(input_size, hidden_size):
    try:
        from deepctr_torch.layers.sequence import DynamicGRU
    except ImportError as e:  # not a dependency of udg_fast: benchmarks only
        pytest.skip(f"deepctr-torch is not installed (pip install deepctr-torch requests): {e}")
    return DynamicGRU(input_size, hidden_size, bias=True, gru_type="AUGRU")


def _inputs(b, t, h, cell, requires_grad):
    g = torch.Generator(device="cpu").manual_seed(0)
    i = h
    x = torch.randn(b, t, i, generator=g)
    att = torch.rand(b, t, generator=g) if cell == "augru" else None
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    k = h ** -0.5
    params = [(torch.rand(3 * h, i, generator=g) * 2 - 1) * k, (torch.rand(3 * h, h, generator=g) * 2 - 1) * k,
              (torch.rand(3 * h, generator=g) * 2 - 1) * k, (torch.rand(3 * h, generator=g) * 2 - 1) * k]
    x = x.to(DEVICE).requires_grad_(requires_grad)
    att = att.to(DEVICE).requires_grad_(requires_grad) if att is not None else None
    params = [p.to(DEVICE).requires_grad_(requires_grad) for p in params]
    grad = torch.randn(b, t, h, generator=g).to(DEVICE)
    return x, att, lengths, params, grad


def _fn(provider, h, cell, params):
    """A callable (x, att, lengths) → padded outputs [B, T, H], and the leaves it owns."""
    if provider in ("eager", "cpu", "triton", "cuda"):
        backend = "reference" if provider == "eager" else provider

        def run(x, att, lengths):
            with udg_fast.use_backend(backend):
                return augru(x, *params, att=att, lengths=lengths)[0]
        return run, []

    if provider == "nn.GRU":
        if cell != "gru":
            pytest.skip("nn.GRU has no attentional update gate: GRU cell only")
        gru = nn.GRU(h, h, batch_first=True).to(DEVICE)
        with torch.no_grad():  # same parameters, converted to nn.GRU's update form
            for name, p in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), params):
                q = p.detach().clone()
                q[h:2 * h] = -q[h:2 * h]
                getattr(gru, name).copy_(q)

        def run(x, att, lengths):
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = gru(packed)
            return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
        return run, list(gru.parameters())

    if provider == "deepctr":
        if cell != "augru":
            pytest.skip("deepctr: the AUGRU cell is benchmarked (its GRU is nn.GRU)")
        rnn = _deepctr_gru(h, h).to(DEVICE)
        cell_ = rnn.rnn
        with torch.no_grad():  # its weights are left uninitialised; its two biases are one tensor
            cell_.weight_ih.copy_(params[0])
            cell_.weight_hh.copy_(params[1])
            cell_.bias_hh.copy_(params[3])

        def run(x, att, lengths):
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            packed_att = pack_padded_sequence(att.unsqueeze(-1), lengths, batch_first=True, enforce_sorted=False)
            out = rnn(packed, packed_att)
            return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
        return run, list(rnn.parameters())
    raise ValueError(provider)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(b, t, h) for b in BATCHES for t in STEPS for h in HIDDEN],
                         ids=lambda s: f"B{s[0]}-T{s[1]}-H{s[2]}")
@pytest.mark.parametrize("provider", _providers())
def test_augru(benchmark, provider, shape, cell, mode):
    b, t, h = shape
    backward = mode == "fwd+bwd"
    x, att, lengths, params, grad = _inputs(b, t, h, cell, backward)
    fn, own = _fn(provider, h, cell, params)
    if provider == "deepctr" and backward:
        for p in own:
            p.requires_grad_(True)
    benchmark.group = f"augru {cell} {mode} B={b} T={t} H={h}"
    benchmark.extra_info.update(provider=provider, batch=b, T=t, H=h, I=h, cell=cell, mode=mode,
                                device=str(DEVICE), dtype="float32", lengths="uniform [1, T]",
                                threads=torch.get_num_threads())
    if provider == "deepctr":
        import deepctr_torch

        benchmark.extra_info["deepctr_torch"] = deepctr_torch.__version__
    leaves = [v for v in [x, att, *params, *own] if v is not None]

    def step():
        if backward:
            for v in leaves:
                v.grad = None
            y = fn(x, att, lengths)
            y.backward(grad)
        else:
            with torch.no_grad():
                y = fn(x, att, lengths)
        sync(DEVICE)
        return y

    for _ in range(2):  # warm-up (allocator, autotuning)
        step()
    rounds = 5 if provider in SLOW else 15
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1, iterations=1)
