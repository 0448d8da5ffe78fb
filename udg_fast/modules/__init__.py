from udg_fast.modules.gated_linear import GatedLinear
from udg_fast.modules.augru import AUGRU

__all__ = ["GatedLinear", "AUGRU"]
