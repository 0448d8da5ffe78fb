"""Helpers shared by the op tests: backend parametrisation and reference comparison."""
from __future__ import annotations

import pytest
import torch

import udg_fast

FAST_BACKENDS = ("cpu", "triton", "cuda")


def backend_params():
    """pytest params for every fast backend; unusable ones skip with the reason backends() gives."""
    params = []
    status = udg_fast.backends()
    for name in FAST_BACKENDS:
        marks = [pytest.mark.cuda] if name == "cuda" else []
        if not status[name]["usable"]:
            marks.append(pytest.mark.skip(reason=f"backend {name!r} not usable: {status[name]['reason']}"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def device_for(backend: str) -> torch.device:
    if backend == "cpu":
        return torch.device("cpu")
    if backend == "cuda" or torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")  # triton under TRITON_INTERPRET=1


def assert_close_to_reference(name, fast, ref64, ref_same_precision, *, floor):
    """flash-attention's rule: the fast path's error against a float64 reference is at most 2× the
    error of the same computation done by eager PyTorch in the fast path's precision, plus a small
    absolute floor (relative to the tensor's magnitude) for results that eager gets exactly.
    Fails naming the tensor.
    """
    assert fast.shape == ref64.shape, f"{name}: shape {tuple(fast.shape)} != reference {tuple(ref64.shape)}"
    if fast.numel() == 0:
        return
    fast64, same64 = fast.detach().double().cpu(), ref_same_precision.detach().double().cpu()
    ref = ref64.detach().double().cpu()
    err = (fast64 - ref).abs().max().item()
    err_same = (same64 - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    bound = 2 * err_same + floor * scale
    assert err <= bound, (
        f"{name}: max abs error {err:.3e} against the float64 reference exceeds {bound:.3e} "
        f"(2 × eager same-precision error {err_same:.3e} + {floor:g} × {scale:.3g})")
