"""Project-wide test setup.

Without a CUDA GPU the Triton kernels run on CPU tensors under Triton's interpreter; the flag is
read when a `@triton.jit` decorator runs, so it must be set before udg_fast.kernels is imported —
that is, here, before any test module imports udg_fast.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
