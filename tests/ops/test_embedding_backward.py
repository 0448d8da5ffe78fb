"""udg_fast.ops.embedding_backward (the dense gradient of an embedding lookup): every backend
against nn.Embedding's own gradient in float64 and the eager form, on odd shapes (no rows, one
row, a one-row table, d = 1 and 33), with and without padding, repeated ids and a table of few
rows; bit-identical to one-thread index_put_ at 1, 2 and 4 threads; the model's lookup through it,
differentiable twice; opcheck; bad input."""
from __future__ import annotations

import pytest
import torch

import udg_fast
from udg_fast.ops import embedding_backward

from ._utils import backend_params, device_for, skip_unless_usable, torch_threads

# (N, V, d, padding_idx): odd sizes; a table of 2 rows under 2-4 threads; most ids padding
CASES = [
    (0, 5, 3, 0),
    (1, 1, 1, None),
    (1, 1, 4, 0),
    (7, 13, 5, None),
    (37, 2, 18, 1),
    (1000, 20, 18, 0),
    (5000, 1683, 33, 0),
    (333, 7, 1, 6),
]


def _ids(case):
    N, V, d, pad = case
    return f"N{N}-V{V}-d{d}-pad{pad}"


def _inputs(case, dtype, seed):
    N, V, d, pad = case
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (N,), generator=g)
    if pad is not None and N > 2:
        ids[: N // 2] = pad  # about half padded, like the history fields
        ids = ids[torch.randperm(N, generator=g)]
    grad = torch.randn(N, d, generator=g, dtype=dtype)
    return grad, ids


def _nn_embedding_grad(grad, ids, V, pad):
    """nn.Embedding's own weight gradient (embedding_dense_backward), in float64."""
    w = torch.zeros(V, grad.shape[1], dtype=torch.float64, requires_grad=True)
    out = torch.nn.functional.embedding(ids, w, padding_idx=pad)
    return torch.autograd.grad(out, w, grad.double())[0]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_matches_nn_embedding(backend, case):
    """cpu: the C++ kernel; triton/cuda have no kernel and run the eager form on the GPU."""
    N, V, d, pad = case
    device = device_for(backend)
    # the GPU backends run float32 (float64 is not theirs: forcing them with it raises)
    for dtype in (torch.float32, torch.float64) if backend == "cpu" else (torch.float32,):
        grad, ids = _inputs(case, dtype, seed=CASES.index(case))
        with udg_fast.use_backend(backend), torch.no_grad():
            got = embedding_backward(grad.to(device), ids.to(device), V, pad)
        want = _nn_embedding_grad(grad, ids, V, pad)
        assert got.shape == (V, d) and got.dtype == dtype and got.device.type == device.type
        tol = dict(rtol=1e-6, atol=1e-6 * max(1.0, want.abs().max().item())) if dtype == torch.float32 else {}
        torch.testing.assert_close(got.cpu().double(), want, **tol)
        if pad is not None:
            assert (got[pad] == 0).all()


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_cpu_sums_in_input_order_at_any_thread_count(case):
    """The kernel adds every row's gradients in input order, whatever the thread count (each thread
    owns whole table rows): float32 results equal to a sequential loop, bit for bit, at 1, 2 and 4
    threads (so run to run deterministic too)."""
    skip_unless_usable("cpu")
    N, V, d, pad = case
    grad, ids = _inputs(case, torch.float32, seed=50 + CASES.index(case))
    want = torch.zeros(V, d)
    for i, v in enumerate(ids.tolist()):
        if v != pad:
            want[v] += grad[i]
    for threads in (1, 2, 4):
        with torch_threads(threads), udg_fast.use_backend("cpu"), torch.no_grad():
            got = embedding_backward(grad, ids, V, pad)
        assert torch.equal(got, want), f"{threads} threads: max |diff| {(got - want).abs().max().item()}"


@pytest.mark.parametrize("backend", backend_params())
def test_strided_gradients(backend):
    """The kernel reads grad's rows where they are: a column slice of a wider gradient (the models'
    history: one field's d of the concatenated n·d), an expanded one (row stride 0), and a
    transposed one (column stride ≠ 1, made contiguous) — each equal to its contiguous copy."""
    device = device_for(backend)
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, 9, (40,), generator=g).to(device)
    wide = torch.randn(40, 3 * 5, generator=g).to(device)
    cases = {"column slice": wide[:, 5:10], "expanded": torch.randn(1, 5, generator=g).to(device).expand(40, 5),
             "transposed": torch.randn(5, 40, generator=g).to(device).t()}
    for name, grad in cases.items():
        with udg_fast.use_backend(backend), torch.no_grad():
            got = embedding_backward(grad, ids, 9, 0)
            want = embedding_backward(grad.contiguous(), ids, 9, 0)
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(got.cpu().double(), _nn_embedding_grad(grad.cpu(), ids.cpu(), 9, 0),
                                   rtol=1e-6, atol=1e-6)  # float32 sums against float64


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_model_lookup_gradient_and_its_gradient(backend):
    """The models' lookup: nn.Embedding's gradient through the op, and twice differentiable (the
    cold-start meta-gradient differentiates through it: the eager form runs then)."""
    from udg_fast.models.embedding import _Lookup, lookup

    skip_unless_usable(backend)
    torch.manual_seed(0)
    table = torch.nn.Embedding(13, 5, padding_idx=0).double()
    for shape in [(7,), (4, 9), (2, 3, 6)]:
        ids = torch.randint(0, 13, shape)
        ids.view(-1)[:3] = torch.tensor([0, 4, 4])  # padding and a repeated id
        g = torch.randn(*shape, 5, dtype=torch.float64)
        with udg_fast.use_backend(backend):
            out = lookup(table, ids)
            got = torch.autograd.grad(out, table.weight, g)[0]
        torch.testing.assert_close(out, table(ids), rtol=0, atol=0)
        want = torch.autograd.grad(table(ids), table.weight, g)[0]
        torch.testing.assert_close(got, want)
        assert (got[0] == 0).all()
    w = table.weight.detach().clone().requires_grad_(True)
    ids = torch.randint(0, 13, (4, 6))
    with udg_fast.use_backend(backend):
        assert torch.autograd.gradgradcheck(lambda w: _Lookup.apply(w, ids, 0) ** 2, (w,))


def test_opcheck_cpp_op():
    skip_unless_usable("cpu")
    grad, ids = _inputs((50, 9, 6, 0), torch.float32, seed=7)
    torch.library.opcheck(torch.ops.udg_fast.embedding_backward.default, (grad, ids, 9, 0))
    torch.library.opcheck(torch.ops.udg_fast.embedding_backward.default, (grad.double(), ids, 9, -1))
    wide = torch.randn(50, 15)
    torch.library.opcheck(torch.ops.udg_fast.embedding_backward.default, (wide[:, 4:10], ids, 9, 0))


def test_cpp_op_checks_its_arguments():
    skip_unless_usable("cpu")
    op = torch.ops.udg_fast.embedding_backward
    g = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match=r"ids must be in \[0, num_rows = 5\), got ids\[1\] = 7"):
        op(g, torch.tensor([0, 7, 1]), 5, 0)
    with pytest.raises(RuntimeError, match=r"ids must be in \[0, num_rows = 5\), got ids\[2\] = -1"):
        op(g, torch.tensor([0, 1, -1]), 5, -1)
    with pytest.raises(RuntimeError, match="ids must have one id per row of grad"):
        op(g, torch.tensor([0, 1]), 5, 0)
    with pytest.raises(RuntimeError, match="grad must be float32 or float64"):
        op(g.half(), torch.tensor([0, 1, 2]), 5, 0)
    with pytest.raises(RuntimeError, match="ids must be a 1-D int64 CPU tensor"):
        op(g, torch.tensor([0, 1, 2], dtype=torch.int32), 5, 0)


@pytest.mark.parametrize("args,exc,match", [
    ((torch.randn(3, 4), torch.tensor([0, 1, 2]), 5, 5), ValueError, r"padding_idx must be None or in \[0, num_rows = 5\)"),
    ((torch.randn(3), torch.tensor([0, 1, 2]), 5, 0), ValueError, r"grad must be \[N, d\]"),
    ((torch.randn(3, 4), torch.tensor([[0, 1, 2]]), 5, 0), ValueError, "ids must be a 1-D int64 tensor"),
    ((torch.randn(3, 4), torch.tensor([0, 1]), 5, 0), ValueError, "one id per row of grad"),
    ((torch.randn(3, 4), torch.tensor([0, 1, 2]), -1, None), ValueError, "num_rows must be an int >= 0"),
    (("x", torch.tensor([0]), 5, 0), TypeError, "must be torch.Tensors"),
    # the reference path (grad mode, or half precision) checks ids as the C++ kernel does: index_put_
    # would take -1 as the last row
    ((torch.randn(3, 4).half(), torch.tensor([0, 1, -1]), 5, 0), ValueError, r"ids must be in \[0, num_rows = 5\), got -1"),
    ((torch.randn(3, 4).half(), torch.tensor([0, 1, 5]), 5, 0), ValueError, r"ids must be in \[0, num_rows = 5\), got 5"),
    ((torch.randn(3, 4).half(), torch.tensor([0, 0, 0]), 0, 0), ValueError, r"ids must be in \[0, num_rows = 0\)"),
])
def test_bad_input_names_the_argument(args, exc, match):
    with pytest.raises(exc, match=match):
        embedding_backward(*args)


def test_reference_is_nn_embeddings_gradient_on_both_cpu_paths():
    """The reference backend on CPU: index_put_ on one thread, index_add_ on more — each equal to
    nn.Embedding's gradient. (Its GPU path, embedding_dense_backward, is test_matches_nn_embedding
    on the cuda and triton backends.)"""
    grad, ids = _inputs((100, 11, 3, 0), torch.float64, seed=9)
    for threads in (1, 2):
        with torch_threads(threads), udg_fast.use_backend("reference"), torch.no_grad():
            got = embedding_backward(grad, ids, 11, 0)
        torch.testing.assert_close(got, _nn_embedding_grad(grad, ids, 11, 0), msg=lambda m: f"{threads}: {m}")
