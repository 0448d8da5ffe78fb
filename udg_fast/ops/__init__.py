"""The fused ops of udg_fast. Each op lives in its own module with its reference in naive.py."""
from udg_fast.ops.gated_linear import gated_linear
from udg_fast.ops.naive import gated_linear_reference

# augru (DIEN AUGRU / GRU)
from udg_fast.ops.augru import augru  # noqa: E402
from udg_fast.ops.naive import augru_reference  # noqa: E402

# din_attention (DIN's local activation unit)
from udg_fast.ops.din_attention import din_attention  # noqa: E402
from udg_fast.ops.naive import din_attention_reference  # noqa: E402

# gating_networks (the UDG gating networks, Eq. 6)
from udg_fast.ops.gating_networks import gating_networks  # noqa: E402
from udg_fast.ops.naive import gating_networks_reference  # noqa: E402

# embedding_backward (the dense gradient of an embedding lookup)
from udg_fast.ops.embedding_backward import embedding_backward  # noqa: E402
from udg_fast.ops.naive import embedding_backward_reference  # noqa: E402

__all__ = ["gated_linear", "gated_linear_reference", "augru", "augru_reference", "din_attention",
           "din_attention_reference", "gating_networks", "gating_networks_reference",
           "embedding_backward", "embedding_backward_reference"]
