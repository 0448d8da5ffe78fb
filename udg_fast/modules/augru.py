"""`udg_fast.AUGRU`: DIEN's GRU with attentional update gate as a module (a GRU without att)."""
from __future__ import annotations

import math

import torch
from torch import nn

from udg_fast.ops.augru import augru


class AUGRU(nn.Module):
    """AUGRU of the DIEN paper over a padded, batch-first sequence; a plain GRU when `att` is None.

        h_t = (1 − a_t z_t) ⊙ h_{t-1} + a_t z_t ⊙ n_t       (r, z, n as in `nn.GRU`)

    Parameters have `nn.GRU`'s names and shapes (`weight_ih_l0` `[3H, I]`, `weight_hh_l0`
    `[3H, H]`, `bias_ih_l0`, `bias_hh_l0` `[3H]`, rows r, z, n) and its initialisation
    U(−1/√H, 1/√H). The update form is the paper's, not `nn.GRU`'s `(1 − z) ⊙ n + z ⊙ h`: an
    `nn.GRU` state_dict loaded as is gives a different function — use `AUGRU.from_gru(gru)`, which
    negates the z rows, to get exactly the GRU's function. DIEN's TensorFlow code uses yet another
    form (at a = 0 it outputs n_t); this follows the paper.

    Args:
        input_size, hidden_size: I and H.
        bias: learn `bias_ih_l0` and `bias_hh_l0`.

    forward(x `[B, T, I]`, att `[B, T]` or None, lengths `[B]` ints in [0, T] or None, h0 `[B, H]`
    or None) → (outputs `[B, T, H]` (zeros at t >= lengths[b]), h_n `[B, H]`). Unlike `nn.GRU`,
    h_n has no layer dimension and the input is always batch first.

    Example:
        >>> rnn = AUGRU(36, 36)
        >>> out, h_n = rnn(torch.randn(8, 50, 36), att=torch.rand(8, 50), lengths=torch.randint(0, 51, (8,)))
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 0:
            raise ValueError(f"AUGRU: input_size must be a non-negative int, got {input_size!r}")
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"AUGRU: hidden_size must be a positive int, got {hidden_size!r}")
        self.input_size, self.hidden_size = input_size, hidden_size
        kw = {"device": device, "dtype": dtype}
        self.weight_ih_l0 = nn.Parameter(torch.empty(3 * hidden_size, input_size, **kw))
        self.weight_hh_l0 = nn.Parameter(torch.empty(3 * hidden_size, hidden_size, **kw))
        if bias:
            self.bias_ih_l0 = nn.Parameter(torch.empty(3 * hidden_size, **kw))
            self.bias_hh_l0 = nn.Parameter(torch.empty(3 * hidden_size, **kw))
        else:
            self.register_parameter("bias_ih_l0", None)
            self.register_parameter("bias_hh_l0", None)
        self.reset_parameters()

    @property
    def bias(self) -> bool:
        return self.bias_ih_l0 is not None

    def reset_parameters(self) -> None:
        # Exactly nn.GRU's initialisation.
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -stdv, stdv)

    @classmethod
    def from_gru(cls, gru: nn.GRU) -> "AUGRU":
        """The AUGRU that, with att=None, computes exactly `gru`'s function: a copy of its
        parameters with the z-gate rows (rows H..2H) of both weights and biases negated
        (σ(−v) = 1 − σ(v) turns `(1 − z) n + z h` into the paper's `(1 − z') h + z' n`).
        `gru` must be a single-layer, unidirectional `nn.GRU` without projection; the result takes
        batch-first input whatever `gru.batch_first` is."""
        if not isinstance(gru, nn.GRU):
            raise TypeError(f"AUGRU.from_gru: expected an nn.GRU, got {type(gru).__name__}")
        if gru.num_layers != 1 or gru.bidirectional or getattr(gru, "proj_size", 0):
            raise ValueError("AUGRU.from_gru: only a single-layer, unidirectional nn.GRU without proj_size "
                             f"converts (got num_layers={gru.num_layers}, bidirectional={gru.bidirectional}, "
                             f"proj_size={getattr(gru, 'proj_size', 0)})")
        w = gru.weight_ih_l0
        m = cls(gru.input_size, gru.hidden_size, bias=gru.bias, device=w.device, dtype=w.dtype)
        H = gru.hidden_size
        with torch.no_grad():
            for name in ("weight_ih_l0", "weight_hh_l0") + (("bias_ih_l0", "bias_hh_l0") if gru.bias else ()):
                src = getattr(gru, name).detach().clone()
                src[H:2 * H] = -src[H:2 * H]
                getattr(m, name).copy_(src)
        return m

    def forward(self, x: torch.Tensor, att: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x `[B, T, I]`, att `[B, T]`, lengths `[B]`, h0 `[B, H]` → (outputs `[B, T, H]`, h_n `[B, H]`)."""
        return augru(x, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0, att, lengths, h0)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}"
