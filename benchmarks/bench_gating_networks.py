"""Throughput of udg_fast.ops.gating_networks (the UDG gating networks of all L MLP layers, Eq. 6)
per provider, forward and forward+backward.

Providers:
    eager     the reference (udg_fast.ops.gating_networks_reference): L separate three-layer
              networks in eager PyTorch
    stacked   the op's eager form (the L first layers as one GEMM, then per network): what the GPU
              backends and torch.compile run, and what GatingNetworks ran on CPU before the kernel
    cpu       the C++ kernel (csrc/cpu/gating_networks.cpp)

    pytest benchmarks/bench_gating_networks.py --benchmark-only [--benchmark-json out.json]
    python benchmarks/report.py out.json

Shapes: B ∈ {256, 2048, 8192}; the gates of DIN (u 90 → H → 144, 256, 128) and PNN (→ 172, 128,
128) on ml-100k at d = 18, with the authors' H = 90 (= the input width) and a narrower H = 32;
float32. The gradient flows from the logits into u and every parameter.
"""
from __future__ import annotations

import pytest
import torch

import udg_fast
from udg_fast.ops import gating_networks, gating_networks_reference
from udg_fast.ops.gating_networks import _gating_networks_eager

from .conftest import sync

BATCHES = [256, 2048, 8192]
NETS = {"din": (90, (144, 256, 128)), "pnn": (90, (172, 128, 128))}
HIDDEN = [90, 32]
MODES = ["fwd", "fwd+bwd"]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _providers():
    cpu = ["cpu"] if DEVICE.type == "cpu" and udg_fast.backends()["cpu"]["usable"] else []
    return ["eager", "stacked"] + cpu


def _inputs(b, du, h, ks, requires_grad):
    g = torch.Generator().manual_seed(0)
    L = len(ks)
    ts = [torch.randn(b, du, generator=g), torch.randn(L * h, du, generator=g) * du ** -0.5, torch.zeros(L * h),
          torch.randn(L, h, h, generator=g) * h ** -0.5, torch.zeros(L, 1, h),
          *[torch.randn(k, h, generator=g) * h ** -0.5 for k in ks], *[torch.zeros(k) for k in ks]]
    leaves = [t.to(DEVICE).requires_grad_(requires_grad) for t in ts]
    return leaves, [torch.randn(b, k, generator=g).to(DEVICE) for k in ks]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hidden", HIDDEN, ids=lambda h: f"H{h}")
@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("provider", _providers())
def test_gating_networks(benchmark, provider, batch, net, hidden, mode):
    du, ks = NETS[net]
    L = len(ks)
    backward = mode == "fwd+bwd"
    leaves, grads = _inputs(batch, du, hidden, ks, backward)
    fn = {"eager": gating_networks_reference, "stacked": _gating_networks_eager, "cpu": gating_networks}[provider]
    backend = "reference" if provider == "eager" else provider if provider == "cpu" else None
    benchmark.group = f"gating_networks {mode} B={batch} {net} H={hidden}"
    benchmark.extra_info.update(provider=provider, batch=batch, model=net, H=hidden, d_in=du,
                                d_out="+".join(map(str, ks)), mode=mode, device=str(DEVICE), dtype="float32",
                                threads=torch.get_num_threads())

    def step():
        if backward:
            for v in leaves:
                v.grad = None
        with udg_fast.use_backend(backend), torch.set_grad_enabled(backward):
            out = fn(leaves[0], *leaves[1:5], leaves[5:5 + L], leaves[5 + L:])
            if backward:
                torch.autograd.backward(out, grads)
        sync(DEVICE)
        return out

    for _ in range(2):  # warm-up (allocator)
        step()
    benchmark.pedantic(step, rounds=15, warmup_rounds=1, iterations=1)
