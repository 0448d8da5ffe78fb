"""Throughput of udg_fast.ops.embedding_backward (the dense weight gradient of an embedding lookup,
the backward of every lookup of the models) per provider, at 1 and 2 threads.

Providers:
    eager      the reference backend (udg_fast.ops.embedding_backward_reference): index_put_
               (accumulate=True) on one thread, index_add_ on more, then the padding row zeroed —
               what the models ran before the kernel
    dense      aten::embedding_dense_backward — what nn.Embedding / F.embedding run (sorts the ids)
    cpu        the C++ kernel (csrc/cpu/embedding_backward.cpp)

    pytest benchmarks/bench_embedding_backward.py --benchmark-only [--benchmark-json out.json]
    python benchmarks/report.py out.json

Shapes: the history fields of the ml-100k-shaped benchmark batch: ids [B, T] with lengths uniform
in [1, T] and the padded steps id 0 (B = 2048, T = 50: ~51 % valid), into the item table
[1683, 18] and the category table [20, 18]; and B = 8192. CPU only (on a GPU the op is the
eager form).
"""
from __future__ import annotations

import pytest
import torch

import udg_fast
from udg_fast.ops import embedding_backward, embedding_backward_reference

D = 18
SHAPES = [(2048, 50, 1683), (2048, 50, 20), (8192, 50, 1683)]
THREADS = [1, 2]


def _providers():
    cpu = ["cpu"] if udg_fast.backends()["cpu"]["usable"] else []
    return ["eager", "dense"] + cpu


def _inputs(b, t, v):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t) < lengths[:, None]
    ids = (torch.randint(1, v, (b, t), generator=g) * mask).reshape(-1)
    return torch.randn(b * t, D, generator=g), ids


def _fn(provider, grad, ids, v):
    if provider == "dense":
        return lambda: torch.ops.aten.embedding_dense_backward(grad, ids, v, 0, False)
    fn = embedding_backward_reference if provider == "eager" else embedding_backward

    def run():
        with udg_fast.use_backend("cpu" if provider == "cpu" else "reference"), torch.no_grad():
            return fn(grad, ids, v, 0)
    return run


@pytest.mark.parametrize("threads", THREADS, ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-T{s[1]}-V{s[2]}")
@pytest.mark.parametrize("provider", _providers())
def test_embedding_backward(benchmark, provider, shape, threads):
    b, t, v = shape
    grad, ids = _inputs(b, t, v)
    fn = _fn(provider, grad, ids, v)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        benchmark.group = f"embedding_backward B={b} T={t} V={v} threads={threads}"
        benchmark.extra_info.update(provider=provider, batch=b, T=t, V=v, d=D, mode="bwd", device="cpu",
                                    dtype="float32", valid_rows=int((ids != 0).sum()), threads=threads)
        for _ in range(2):  # warm-up (allocator)
            fn()
        benchmark.pedantic(fn, rounds=20, warmup_rounds=1, iterations=1)
    finally:
        torch.set_num_threads(old)
