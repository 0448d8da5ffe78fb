"""Benchmark setup: pytest-benchmark providers × shapes; speed is recorded, never asserted.

On GPU every timed call ends with torch.cuda.synchronize() so that the wall time covers the
kernels, not just their launch.

UDG_BENCH_PARTIAL=FILE appends one JSON line per finished benchmark (name, median and the other
stats in seconds, extra_info) as it finishes. pytest-benchmark writes its --benchmark-json only at
the end, and when a time limit interrupts a case that has no timings yet it writes nothing at all
(bench_models on the H200, 2026-11-28: 13 finished cases lost); benchmarks/gpu_check.sh keeps the
lines.
"""
import json
import os

import pytest
import torch

# Triton's interpreter is for correctness tests only; benchmarks use real GPUs.
os.environ.pop("TRITON_INTERPRET", None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fused_backends(device):
    """The udg_fast backends worth timing on `device`: usable here, and on their own device
    (Triton's interpreter is for correctness tests, not timings)."""
    import udg_fast

    status = udg_fast.backends()
    out = []
    for name in ("cpu", "triton", "cuda"):
        if not status[name]["usable"]:
            continue
        if (name == "cpu") != (device.type == "cpu"):
            continue
        out.append(name)
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield
    path = os.environ.get("UDG_BENCH_PARTIAL")
    bm = getattr(item, "funcargs", {}).get("benchmark")
    if not path or bm is None or getattr(bm, "stats", None) is None or not bm.stats.stats.data:
        return
    st = bm.stats.stats
    line = {"name": item.name, "fullname": item.nodeid, "median": st.median, "min": st.min, "iqr": st.iqr, "rounds": st.rounds,
            "extra_info": dict(bm.extra_info)}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
