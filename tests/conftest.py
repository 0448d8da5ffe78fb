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


# The model-layer suites train tiny models: each test gets a private data cache (no test sees
# another's files, nor the user's ~/.cache/udg_fast) and one torch thread (reproducible, and faster
# than two on the 2-core CI machine).
_ISOLATED_SUITES = ("models", "coldstart", "experiments")


@pytest.fixture(autouse=True)
def _private_cache_and_one_thread(request, monkeypatch):
    if request.path.parent.name not in _ISOLATED_SUITES:
        yield
        return
    monkeypatch.setenv("UDG_FAST_DATA", str(request.getfixturevalue("tmp_path") / "udg_cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
