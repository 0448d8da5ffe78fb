from udg_fast.modules.gated_linear import GatedLinear

__all__ = ["GatedLinear"]
