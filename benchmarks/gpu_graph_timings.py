"""CUDA-graph timings of gated_linear fwd+bwd per backend (launch gaps removed), next to the
memory-bandwidth floor, written as JSON. At these sizes a kernel launch (~5 µs) is as large as
the floor, so pytest-benchmark's wall time alone would mostly measure launches.

    python benchmarks/gpu_graph_timings.py OUT.json
"""
import json
import sys

import torch

import udg_fast
from udg_fast.ops import gated_linear, gated_linear_reference

BW = 3.0e12  # bytes/s, H100 device copy measured on these machines; H200 ~4.3e12


def floor_us(b, k, n, dtype_bytes=4):
    fwd = (2 * b * k + n * k + n + b * n) * dtype_bytes
    bwd = (b * n + b * n + 2 * b * k + n * k + 2 * b * k + n * k + n) * dtype_bytes
    return (fwd + bwd) / BW * 1e6


def graph_time(fn, args, iters=50):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn(*args)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(*args)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    g.replay()
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters * 1e3


def main(path):
    d = torch.device("cuda")
    rows = []
    for b, k, n in [(4096, 400, 200), (16384, 400, 200), (16384, 200, 80)]:
        x = torch.randn(b, k, device=d, requires_grad=True)
        g = torch.randn(b, k, device=d, requires_grad=True)
        w = torch.randn(n, k, device=d, requires_grad=True)
        bias = torch.zeros(n, device=d, requires_grad=True)
        dy = torch.randn(b, n, device=d)
        providers = {"eager": lambda *a: gated_linear_reference(*a)}
        for name in ("triton", "cuda"):
            if udg_fast.backends()[name]["usable"]:
                providers[name] = (lambda _n: (lambda *a: _run(_n, *a)))(name)
        for name, f in providers.items():
            def step(x, g, w, bias, dy, f=f):
                y = f(x, g, w, bias)
                torch.autograd.backward(y, dy, inputs=[x, g, w, bias])
            try:
                us = graph_time(step, (x, g, w, bias, dy))
            except Exception as e:  # record, don't hide
                rows.append({"name": f"{name} B={b} {k}->{n}", "error": repr(e)})
                continue
            rows.append({"name": f"{name} B={b} {k}->{n} fwd+bwd", "us": us, "floor_us": floor_us(b, k, n)})
            print(rows[-1])
    with open(path, "w") as fh:
        json.dump(rows, fh, indent=1)


def _run(name, *a):
    with udg_fast.use_backend(name):
        return gated_linear(*a)


if __name__ == "__main__":
    main(sys.argv[1])
