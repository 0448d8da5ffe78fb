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
