"""The fused ops of udg_fast. Each op lives in its own module with its reference in naive.py."""
from udg_fast.ops.gated_linear import gated_linear
from udg_fast.ops.naive import gated_linear_reference

__all__ = ["gated_linear", "gated_linear_reference"]
