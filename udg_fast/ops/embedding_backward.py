"""udg_fast.ops.embedding_backward: the dense weight gradient of an embedding lookup.

For a lookup `out = weight[ids]` (`ids` `[N]`, `weight` `[V, d]`) and its gradient `grad` `[N, d]`:

    dW[v] = Σ_{i : ids[i] = v} grad[i]            dW[padding_idx] = 0

— the backward of every embedding lookup of the models (udg_fast.models.embedding.lookup), where
the two history fields alone are B·T rows (102,400 at the benchmark's B = 2048, T = 50), about half
of them padded steps.

Backends (udg_fast/_backend.py picks one):
    reference  naive.embedding_backward_reference: on CPU `index_put_(accumulate=True)` on one thread, `index_add_` on more (each
               faster than `embedding_dense_backward` there: benchmarks/bench_embedding_backward.py),
               then the padding row zeroed; on GPUs `embedding_dense_backward` (nn.Embedding's),
               whose CUDA kernel reduces runs of equal ids in parallel and skips the padding id.
               CUDA's `index_put_(accumulate=True)` adds each run of equal ids serially
               (pytorch/pytorch#41162), and half the history steps are padding: a 51k-row run at
               B = 2048. With it every model's training step on an H200 grew linearly with the
               batch (DIN: 28.5 ms at B = 2048, 111.6 at 8192; benchmarks/results/
               gpu-h200-2026-11-28b). The switch is not measured on a GPU yet.
    cpu        the C++ op `torch.ops.udg_fast.embedding_backward` (csrc/cpu/embedding_backward.cpp):
               one pass over the ids on one thread, each gradient row added into its table row in
               input order, padding ids skipped (ids [2048, 50] into [1683, 18]: 0.31 ms against
               2.4 for the reference and 3.4 for embedding_dense_backward, one thread; the same
               result at any thread count)
    triton,    no GPU kernel: the reference
    cuda
A gradient that must itself be differentiable (create_graph=True: the cold-start meta-gradient)
is the reference's: index_put_, index_add_ and embedding_dense_backward are differentiable in
`grad`.
"""
from __future__ import annotations

import torch

from udg_fast import _backend
from udg_fast.ops.naive import embedding_backward_reference


@_backend.constant_result
def _select(device: torch.device, dtype: torch.dtype) -> str:
    return _backend.select("embedding_backward", device, dtype)


def _validate(grad, ids, num_rows, padding_idx):
    if not isinstance(grad, torch.Tensor) or not isinstance(ids, torch.Tensor):
        raise TypeError("embedding_backward: grad and ids must be torch.Tensors")
    if grad.dim() != 2:
        raise ValueError(f"embedding_backward: grad must be [N, d], got shape {tuple(grad.shape)}")
    if ids.dim() != 1 or ids.dtype != torch.int64:
        raise ValueError(f"embedding_backward: ids must be a 1-D int64 tensor, got {ids.dtype} {tuple(ids.shape)}")
    if ids.shape[0] != grad.shape[0]:
        raise ValueError(f"embedding_backward: ids must have one id per row of grad ({grad.shape[0]}), "
                         f"got {ids.shape[0]}")
    if ids.device != grad.device:
        raise ValueError(f"embedding_backward: ids are on {ids.device}, expected the device of grad ({grad.device})")
    if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < 0:
        raise ValueError(f"embedding_backward: num_rows must be an int >= 0, got {num_rows!r}")
    if padding_idx is not None and not (isinstance(padding_idx, int) and 0 <= padding_idx < max(num_rows, 1)):
        raise ValueError(f"embedding_backward: padding_idx must be None or in [0, num_rows = {num_rows}), "
                         f"got {padding_idx!r}")


def embedding_backward(grad: torch.Tensor, ids: torch.Tensor, num_rows: int,
                       padding_idx: int | None = None) -> torch.Tensor:
    """The `[num_rows, d]` gradient of an embedding table from the lookup's output gradient.

    Args:
        grad: `[N, d]`, the gradient of the looked-up rows.
        ids: `[N]` int64, the ids looked up, in [0, num_rows) (checked on CPU).
        num_rows: the table's rows V.
        padding_idx: the row whose gradient is 0 (nn.Embedding's `padding_idx`), or None.
    Returns:
        `[num_rows, d]`: row v the sum of the `grad` rows with id v, in input order.

    Example:
        >>> g = torch.ones(4, 2)
        >>> embedding_backward(g, torch.tensor([0, 3, 3, 1]), 5, padding_idx=0)[:, 0]
        tensor([0., 1., 0., 2., 0.])
    """
    _validate(grad, ids, num_rows, padding_idx)
    backend = _select(grad.device, grad.dtype)
    if backend != "cpu" or torch.is_grad_enabled() or torch.compiler.is_compiling():
        if ids.device.type == "cpu" and ids.numel() and not torch.compiler.is_compiling():
            # the C++ kernel checks its ids; the reference's index_put_ would take -1 as the last row
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= num_rows:
                raise ValueError(f"embedding_backward: ids must be in [0, num_rows = {num_rows}), got "
                                 f"{lo if lo < 0 else hi}")
        # the GPU backends have no kernel; create_graph=True needs a differentiable gradient
        return embedding_backward_reference(grad, ids, num_rows, padding_idx)
    # grad's rows are read where they are (a column slice of the models' [B, T, n·d] history
    # gradient needs no copy); only a strided last dim is made contiguous (by the kernel)
    return torch.ops.udg_fast.embedding_backward(grad, ids.contiguous(), num_rows,
                                                  -1 if padding_idx is None else padding_idx)


def _fake(grad, ids, num_rows, padding_idx):
    return grad.new_empty(num_rows, grad.shape[1])


if _backend._C is not None:
    torch.library.register_fake("udg_fast::embedding_backward")(_fake)
