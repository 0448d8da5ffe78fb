"""DIEN (Zhou et al. 2019): a GRU interest extractor with an auxiliary loss, then an AUGRU interest
evolving layer driven by DIN-style attention scores; both recurrences run in `udg_fast.ops.augru`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from udg_fast.models.base import NEGATIVE_FIELDS, CTRModel, Embedded, ModelError
from udg_fast.models.din import NORMS, AttentionUnit, attention_weights
from udg_fast.modules.augru import AUGRU


class AuxiliaryNet(nn.Module):
    """DIEN's auxiliary network: p(click | h_t, e_{t+1}) = MLP([h_t, e]) with sigmoid hidden
    layers (100, 50) *and its output layer* (RecBole #821 lost it). The first layer's h part is
    computed once and shared by the positive and the negative next item."""

    def __init__(self, hidden_size: int, item_dim: int, hidden=(100, 50)):
        super().__init__()
        hidden = [int(h) for h in hidden]
        self.hidden_size = hidden_size
        self.fc1 = nn.Linear(hidden_size + item_dim, hidden[0])
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(hidden[:-1], hidden[1:]))
        self.out = nn.Linear(hidden[-1], 1)

    def _rest(self, a: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(a)
        for fc in self.fcs:
            a = torch.sigmoid(fc(a))
        return self.out(a).squeeze(-1)

    def forward(self, h: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """h, pos, neg: `[N, ·]` at the N valid (t, t+1) pairs → mean BCE (positives 1, negatives 0)."""
        if h.shape[0] == 0:
            return h.sum() * 0.0
        n = h.shape[0]
        w_h, w_e = self.fc1.weight.split([self.hidden_size, self.fc1.in_features - self.hidden_size], dim=1)
        base = F.linear(h, w_h, self.fc1.bias)                                     # [N, h1], once
        e = F.linear(torch.cat([pos, neg]), w_e).view(2, n, -1)                    # [2, N, h1], one GEMM
        logits = self._rest((e + base).view(2 * n, -1))                            # positives, then negatives
        # BCE with logits: −log σ(lp) − log(1 − σ(ln)) = softplus(−lp) + softplus(ln)
        return (F.softplus(-logits[:n]).mean() + F.softplus(logits[n:]).mean()) * 0.5


class DIEN(CTRModel):
    """DIEN.

    - Interest extractor: a GRU (`udg_fast.AUGRU` without attention, i.e. `ops.augru(att=None)`)
      over the behaviour embeddings, hidden size = their width D_b (so q − h_t is defined).
    - Auxiliary loss (training only, weight `aux_alpha`): h_t must tell the clicked next item
      e_{t+1} from the sampled non-clicked one (`neg_hist_*` at t+1), over the steps with
      t + 1 < hist_len only — padded steps are never scored (RecBole #1483).
    - Interest evolving: attention scores a_t of the target item on h_t (DIN's unit), normalised by
      `att_norm` ("sigmoid": each a_t ∈ (0, 1), the default; "softmax": DIEN's code) and zero at
      padded steps, drive an AUGRU; e_mid = its final state h_n (the state after the last valid
      step; zeros for an empty history).
    """

    name = "dien"
    DEFAULTS = {"hidden": (256, 128), "att_hidden": (80, 40), "att_activation": "sigmoid",
                "att_norm": "sigmoid", "aux_alpha": 1.0, "aux_hidden": (100, 50)}

    def _build(self) -> int:
        if self.hparams["att_norm"] not in NORMS:
            raise ModelError(f"dien: att_norm must be one of {NORMS}, got {self.hparams['att_norm']!r}")
        H = self.behv_dim
        self.mid_dim = H
        self.neg_fields = tuple(NEGATIVE_FIELDS[f] for f in self.behv_fields)
        self.extractor = AUGRU(H, H)
        self.attention = AttentionUnit(H, self.hparams["att_hidden"], self.hparams["att_activation"])
        self.evolver = AUGRU(H, H)
        self.aux_net = AuxiliaryNet(H, H, self.hparams["aux_hidden"]) if self.hparams["aux_alpha"] else None
        return 0

    def required_fields(self, training: bool = False) -> tuple[str, ...]:
        req = super().required_fields(training)
        if training and self.training and self.aux_net is not None:  # the auxiliary loss is training-only
            req = req + self.neg_fields
        return req

    def middle(self, e: Embedded, batch, aux: bool):
        h, _ = self.extractor(e.hist, lengths=e.lengths)                          # [B, T, H]
        aux_loss = None
        if aux and self.aux_net is not None:
            # the pairs (t, t+1) inside the history, as flat row indices into [B·T]
            nxt_mask = e.mask.clone()
            nxt_mask[:, 0] = False
            nxt = nxt_mask.view(-1).nonzero().squeeze(1)                         # rows of t+1
            B, T, H = h.shape
            pos = e.hist.reshape(B * T, -1).index_select(0, nxt)
            neg = self.embed_steps({f: batch[f].reshape(-1)[nxt] for f in self.neg_fields}, self.neg_fields)
            h_t = h.reshape(B * T, H).index_select(0, nxt - 1)
            aux_loss = self.hparams["aux_alpha"] * self.aux_net(h_t, pos, neg)
        a = attention_weights(self.attention(e.query, h, e.mask), e.mask, self.hparams["att_norm"])
        _, h_n = self.evolver(h, att=a.to(h.dtype), lengths=e.lengths)
        return h_n, aux_loss
