"""Benchmark setup: pytest-benchmark providers × shapes; speed is recorded, never asserted.

On GPU every timed call ends with torch.cuda.synchronize() so that the wall time covers the
kernels, not just their launch.
"""
import os

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
