"""Every output of every udg_fast op, forward and backward, starts 16-byte aligned.

torch.compile (Inductor) asserts this of a custom op's outputs (`assert_alignment`, 16 bytes), so an
op that returns gradients as views into one packed buffer breaks compiled training whenever a
view's offset is not a multiple of 16 bytes. It did, on an H200 (2026-11-28): the CUDA AUGRU
backward returned db_ih at float offset 90 (H = 30). The shapes here are odd on purpose, so that
an unpadded packed layout lands off the 16-byte grid.

The ops are observed with a TorchDispatchMode: it sees each `udg_fast::` op call, forward and
backward (the mode is carried into the autograd engine's threads), with its real outputs.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import udg_fast
from udg_fast.models.embedding import _Lookup
from udg_fast.ops import augru, din_attention, gated_linear, gating_networks

from ._utils import backend_params, device_for
from .test_din_attention import _inputs as _din_inputs
from .test_din_attention import _mask as _din_mask
from .test_double_backward import _augru_inputs, _gl_inputs
from .test_gating_networks import _inputs as _gn_inputs


class _RecordOutputs(TorchDispatchMode):
    """Collects (op name, output index, tensor) for every output of every udg_fast op."""

    def __init__(self):
        super().__init__()
        self.outputs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace == "udg_fast":
            flat, _ = torch.utils._pytree.tree_flatten(out)
            self.outputs += [(func.name(), i, t) for i, t in enumerate(flat) if isinstance(t, torch.Tensor)]
        return out


def _cases(device):
    """(name, fn, leaves) per op, float32, odd shapes."""
    gl = _gl_inputs(7, 13, 5, device, torch.float32, seed=3)
    ag, lengths = _augru_inputs(5, 4, 3, 30, device, torch.float32, seed=4)  # 3H = 90: the H200 case
    din, g = _din_inputs(3, 5, 3, (7, 5), seed=5)
    mask = _din_mask("random", 3, 5, g).to(device)
    din = [t.to(device=device, dtype=torch.float32).requires_grad_(True) for t in din]
    gn, _ = _gn_inputs(5, 3, 7, (3, 5), seed=6)
    gn = [t.to(device=device, dtype=torch.float32).requires_grad_(True) for t in gn]
    emb = torch.randn(7, 5, device=device, requires_grad=True)
    ids = torch.tensor([[0, 3, 3], [6, 1, 0]], device=device)
    return [
        ("gated_linear", lambda x, gl_, w, b: gated_linear(x, gl_, w, b, "relu", 2.0), gl),
        ("augru", lambda x, wi, wh, bi, bh, a, h0: augru(x, wi, wh, bi, bh, a, lengths, h0), ag),
        ("din_attention", lambda q, k, w1, b1, *p: din_attention(q, k, mask, w1, b1, list(p[:2]), list(p[2:]),
                                                                   "sigmoid"), din),
        ("gating_networks", lambda u, w1, b1, w2, b2, *p: gating_networks(u, w1, b1, w2, b2, list(p[:2]),
                                                                           list(p[2:])), gn),
        # embedding_backward is the backward of the models' lookup (a 7-row table, 5 wide)
        ("embedding_backward", lambda w: _Lookup.apply(w, ids, 0), [emb]),
    ]


@pytest.mark.parametrize("backend", backend_params())
def test_every_op_output_is_16_byte_aligned(backend):
    device = device_for(backend)
    for name, fn, leaves in _cases(device):
        rec = _RecordOutputs()
        with udg_fast.use_backend(backend), rec:
            outs = fn(*leaves)
            outs = (outs,) if isinstance(outs, torch.Tensor) else outs
            flat = [o for o in torch.utils._pytree.tree_flatten(outs)[0] if isinstance(o, torch.Tensor)]
            torch.autograd.backward(flat, [torch.ones_like(o) for o in flat])
        seen = {op for op, _, _ in rec.outputs}
        # the fast ops ran, forward and backward (gating_networks/din_attention fall back to their
        # eager forms on triton and cuda: nothing of theirs to see there)
        if backend == "cpu" or name in ("gated_linear", "augru"):
            assert any("backward" in op for op in seen), f"[{backend}] {name}: no udg_fast backward op ran: {seen}"
        bad = [f"{op} output {i}: data_ptr % 16 = {t.data_ptr() % 16} (storage offset {t.storage_offset()})"
               for op, i, t in rec.outputs if t.numel() > 0 and t.data_ptr() % 16]
        assert not bad, f"[{backend}] {name}: outputs not 16-byte aligned:\n" + "\n".join(bad)
