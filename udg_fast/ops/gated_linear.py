"""udg_fast.ops.gated_linear: one layer of the UDG-gated prediction MLP (Eq. 7), fused.

    out = act( W (γ · σ(gate_logits) ⊙ x) + b )        act = ReLU, or none for the output layer

Backends (chosen in udg_fast/_backend.py):
    reference  udg_fast/ops/naive.py::gated_linear_reference (eager PyTorch, autograd by PyTorch)
    cpu, cuda  the C++/CUDA op `torch.ops.udg_fast.gated_linear` (csrc/cpu, csrc/cuda), whose
               schema is in csrc/ops.cpp; fake impl and autograd are registered below
    triton     `torch.ops.udg_fast.gated_linear_triton`, a `torch.library.triton_op` over the
               kernels in kernels/gated_linear.py (installed as udg_fast.kernels.gated_linear)

Backward saves x, gate_logits, W and the output (the ReLU mask: 0 where out <= 0, as torch's
threshold_backward, so a NaN output passes its gradient) and recomputes
σ(g)⊙x, as Liger and Unsloth do, instead of keeping a [B, K] temporary alive. Double backward
(create_graph=True: meta-gradients, gradient penalties) returns the reference's gradient,
recomputed under autograd (naive.reference_vjp): correct, at eager speed.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from udg_fast import _backend
from udg_fast.ops.naive import gated_linear_reference, reference_vjp

ACTIVATIONS = ("relu", "none")


@_backend.constant_result
def _select(device: torch.device, dtype: torch.dtype) -> str:
    # Decided once per compiled graph: dynamo treats the result as a constant.
    return _backend.select("gated_linear", device, dtype)


@_backend.constant_result
def _triton_precision() -> str:
    # fp32 dots follow torch's global matmul precision: "highest" → exact IEEE, else TF32. A
    # constant for torch.compile (Dynamo cannot trace get_float32_matmul_precision): a compiled
    # graph keeps the precision it was traced with.
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _validate(x, gate_logits, weight, bias, activation, gate_scale):
    for name, t in (("x", x), ("gate_logits", gate_logits), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"gated_linear: {name} must be a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"gated_linear: bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"gated_linear: activation must be one of {ACTIVATIONS} (or None), got {activation!r}")
    if isinstance(gate_scale, bool) or not isinstance(gate_scale, (int, float)):
        raise TypeError(f"gated_linear: gate_scale must be a float, got {type(gate_scale).__name__}")
    if x.dim() < 1:
        raise ValueError("gated_linear: x must have at least 1 dimension [..., in_features], got a scalar")
    if gate_logits.shape != x.shape:
        raise ValueError(
            f"gated_linear: gate_logits must have the shape of x {tuple(x.shape)}, got {tuple(gate_logits.shape)}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"gated_linear: weight must be [out_features, {x.shape[-1]}] (in_features = x.shape[-1]), "
            f"got {tuple(weight.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"gated_linear: bias must be [{weight.shape[0]}] (out_features), got {tuple(bias.shape)}")
    named = [("x", x), ("gate_logits", gate_logits), ("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    for name, t in named[1:]:
        if t.dtype != x.dtype:
            raise TypeError(f"gated_linear: {name} has dtype {t.dtype}, expected the dtype of x ({x.dtype})")
        if t.device != x.device:
            raise ValueError(f"gated_linear: {name} is on {t.device}, expected the device of x ({x.device})")
    if not x.dtype.is_floating_point:
        raise TypeError(f"gated_linear: x must be a floating-point tensor, got {x.dtype}")


@_backend.autocast_entry("gated_linear", "x", "gate_logits", "weight", "bias")
def gated_linear(
    x: torch.Tensor,
    gate_logits: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = "relu",
    gate_scale: float = 1.0,
) -> torch.Tensor:
    """Fused gated linear layer, Eq. 7 of the UDG paper: `act(W (γ·σ(g) ⊙ x) + b)`.

    Args:
        x: `[..., K]` input of the layer (h_{l-1}); any leading dims.
        gate_logits: `[..., K]` logits from the layer's gating network (the sigmoid is fused here).
        weight: `[N, K]`, as `nn.Linear.weight`.
        bias: `[N]` or None.
        activation: "relu" (hidden layers) or "none"/None (the output layer).
        gate_scale: γ; the paper uses 1. γ = 2 makes a freshly initialised gate start near 1.
    Returns:
        `[..., N]`, dtype of x.

    NaN/Inf: propagate as in the eager formula — a NaN in a row of x or gate_logits makes that
    row's output NaN (ReLU does not hide it: max(NaN, 0) is NaN on every backend). A gate logit of
    ±Inf is a gate of exactly 0 or γ.

    Example:
        >>> x, g = torch.randn(4, 400), torch.randn(4, 400)
        >>> w, b = torch.randn(200, 400), torch.zeros(200)
        >>> gated_linear(x, g, w, b).shape
        torch.Size([4, 200])
    """
    if activation is None:
        activation = "none"
    _validate(x, gate_logits, weight, bias, activation, gate_scale)
    gate_scale = float(gate_scale)
    backend = _select(x.device, x.dtype)
    if (backend == "reference" or x.shape[-1] == 0 or weight.shape[0] == 0
            or _backend.functorch_transformed((x, gate_logits, weight, bias))):
        # no input or no output features: nothing for a kernel to do (its [-1, 0] views fail);
        # torch.func transforms: the reference (the registered autograd is not a functorch one)
        return gated_linear_reference(x, gate_logits, weight, bias, activation, gate_scale)
    lead, k, n = x.shape[:-1], x.shape[-1], weight.shape[0]
    x2 = x.reshape(-1, k).contiguous()
    g2 = gate_logits.reshape(-1, k).contiguous()
    w = weight.contiguous()
    b = bias.contiguous() if bias is not None else None
    if backend == "triton":
        if not torch.compiler.is_compiling():  # Dynamo cannot trace triton_op's registration
            _register_triton_ops()  # (done at import where Triton is usable; see below)
        y = torch.ops.udg_fast.gated_linear_triton(x2, g2, w, b, activation, gate_scale, _triton_precision())
    else:  # "cpu" or "cuda": one C++ op, the dispatcher picks the kernel by device
        y = torch.ops.udg_fast.gated_linear(x2, g2, w, b, activation, gate_scale)
    return y.reshape(*lead, n)


# ---- C++ / CUDA op: fake implementations and autograd --------------------------------------

def _gl_setup_context(ctx, inputs, output):
    x, g, w, b = inputs[:4]
    ctx.activation, ctx.gate_scale = inputs[4], inputs[5]
    ctx.has_bias = b is not None
    # The bias is saved for double backward only (its reference recomputation needs it). The
    # output only for the ReLU mask: saved without one, an in-place edit of it (a residual `y += r`
    # after the output layer) failed the backward, where F.linear's allows it.
    ctx.save_for_backward(x, g, w, output if ctx.activation == "relu" else None, *([b] if b is not None else []))


def _differentiable_backward(ctx, grad_out):
    """create_graph=True (double backward): the reference's gradient, differentiable (naive.py)."""
    x, g, w, _, *rest = ctx.saved_tensors
    b = rest[0] if ctx.has_bias else None
    dx, dg, dw, db = reference_vjp(
        gated_linear_reference, (x, g, w, b, ctx.activation, ctx.gate_scale), (grad_out,), (0, 1, 2, 3))[:4]
    return dx, dg, dw, db


def _gl_backward(ctx, grad_out):
    if torch.is_grad_enabled():  # only under create_graph=True: keep the gradient differentiable
        return (*_differentiable_backward(ctx, grad_out), None, None)
    x, g, w, out = ctx.saved_tensors[:4]
    grad_out = grad_out.contiguous()
    dx, dg, dw, db = torch.ops.udg_fast.gated_linear_backward(  # `out` is read for the ReLU only
        grad_out, x, g, w, grad_out if out is None else out, ctx.activation, ctx.gate_scale)
    return dx, dg, dw, (db if ctx.has_bias else None), None, None


_backend.register_cpp_op(
    "gated_linear",
    lambda x, g, w, b, activation, gate_scale: x.new_empty((x.shape[0], w.shape[0])),
    lambda dy, x, g, w, out, activation, gate_scale: (
        torch.empty_like(x), torch.empty_like(g), torch.empty_like(w), w.new_empty((w.shape[0],))),
    _gl_backward, _gl_setup_context)


# ---- Triton op ------------------------------------------------------------------------------
# `torch.library.triton_op` pulls in torch._inductor (~3 s at import on the development machine),
# so the Triton ops are registered only where Triton can run: at import when the backend is usable
# (a CUDA GPU, or TRITON_INTERPRET=1), else on first use.

@functools.cache  # registers once
def _register_triton_ops() -> None:

    @torch.library.triton_op("udg_fast::gated_linear_triton", mutates_args=())
    def _gated_linear_triton(
        x: torch.Tensor, gate_logits: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
        activation: str, gate_scale: float, input_precision: str,
    ) -> torch.Tensor:
        from udg_fast.kernels.gated_linear import gated_linear_fwd

        return gated_linear_fwd(x, gate_logits, weight, bias, activation, gate_scale, input_precision)

    @torch.library.triton_op("udg_fast::gated_linear_triton_backward", mutates_args=())
    def _gated_linear_triton_backward(
        grad_out: torch.Tensor, x: torch.Tensor, gate_logits: torch.Tensor, weight: torch.Tensor,
        out: torch.Tensor, activation: str, gate_scale: float, input_precision: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        from udg_fast.kernels.gated_linear import gated_linear_bwd

        return gated_linear_bwd(grad_out, x, gate_logits, weight, out, activation, gate_scale, input_precision)

    torch.library.register_autograd(
        "udg_fast::gated_linear_triton", _glt_backward, setup_context=_glt_setup_context)


def _glt_setup_context(ctx, inputs, output):
    x, g, w, b = inputs[:4]
    ctx.activation, ctx.gate_scale, ctx.precision = inputs[4], inputs[5], inputs[6]
    ctx.has_bias = b is not None
    # as _gl_setup_context: the output only for the ReLU mask
    ctx.save_for_backward(x, g, w, output if ctx.activation == "relu" else None, *([b] if b is not None else []))


def _glt_backward(ctx, grad_out):
    if torch.is_grad_enabled():  # only under create_graph=True: keep the gradient differentiable
        return (*_differentiable_backward(ctx, grad_out), None, None, None)
    x, g, w, out = ctx.saved_tensors[:4]
    grad_out = grad_out.contiguous()
    dx, dg, dw, db = torch.ops.udg_fast.gated_linear_triton_backward(  # `out` is read for the ReLU only
        grad_out, x, g, w, grad_out if out is None else out, ctx.activation, ctx.gate_scale, ctx.precision)
    return dx, dg, dw, (db if ctx.has_bias else None), None, None, None


if _backend.backend_status("triton").usable:
    _register_triton_ops()
