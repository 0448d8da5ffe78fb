"""Training the meta-embedding generator (the UDG paper's Algorithm 1, after Meta-Embedding,
Pan et al., SIGIR 2019).

For every step, with the base model and the gating networks frozen (pre-trained):

    ê   = f_meta(x_prof)                      for the users of a minibatch of D^A      (Eq. 11)
    L_A = CE(model(batch_A, E^UDG := ê))
    e   = ê − α ∂L_A/∂ê                        one inner step, differentiable (create_graph)
    L_B = CE(model(batch_B, E^UDG := e))       a minibatch of the *same users* from D^B
    L_meta = γ L_A + (1 − γ) L_B               γ = 0.1                                  (Eq. 10)
    Θ ← Θ − β ∇_Θ L_meta                       Adam with step β by default (optimizer="sgd": plain)

The generated embeddings enter through `model(batch, udg_emb=…)`; E^UDG itself is never read or
written. The meta-gradient reaches Θ through e = ê − α g(ê) including the second-order term
−α (∂g/∂ê)ᵀ ∂L_B/∂e: this needs the second derivative of the gated MLP. The fused backward
kernels are not differentiable; under create_graph the fused ops return the reference's gradient,
recomputed under autograd (udg_fast/ops/naive.py::reference_vjp; before that fix the second-order
term was silently 0). Since that recomputation is eager anyway, the meta step runs the model on
the `reference` backend outright (one eager forward instead of a fused one plus an eager one);
`first_order=True` drops the second-order term (g detached, as first-order MAML) and runs on the
fast backends.

A minibatch is `users_per_batch` users drawn without replacement (a new permutation of the
D^A users every pass) and, for each, `samples_per_user` rows drawn uniformly from the user's D^A
rows and as many from the user's D^B rows. L_A and L_B are means over their minibatch's rows, so a
user's inner step is α/U times the gradient of its own mean loss (U = users_per_batch).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from udg_fast import use_backend
from udg_fast.coldstart.generator import ColdStartError, MetaGenerator
from udg_fast.coldstart.split import split_halves
from udg_fast.data import Split
from udg_fast.train import require_positive_ints


@dataclasses.dataclass
class MetaConfig:
    """Options of `train_generator`.

    Attributes:
        alpha: α, the inner (SGD) step on ê (default 2.0: with 32 users per minibatch, a user's
            embedding moves by 1/16 of the gradient of its own mean loss; Meta-Embedding's base
            lr / 10 with a per-row mean makes the inner step negligible).
        lr: β, the generator's step (Adam's learning rate by default; 1e-2: with a few hundred
            steps, 1e-3 barely moves W_meta from its N(0, 0.01²) start).
        gamma: γ in L_meta = γ L_A + (1 − γ) L_B (the paper's 0.1).
        users_per_batch, samples_per_user: the minibatch: U users × S rows from D^A (and as many
            rows of the same users from D^B).
        steps: generator updates.
        first_order: drop the second-order term of the meta-gradient (g = ∂L_A/∂ê detached).
        optimizer: "adam" (default; documented deviation from the plain step β) or "sgd".
        seed: seeds the minibatch draws.
        progress: tqdm bar (None: only when stderr is a terminal).
    """

    alpha: float = 2.0
    lr: float = 1e-2
    gamma: float = 0.1
    users_per_batch: int = 32
    samples_per_user: int = 8
    steps: int = 300
    first_order: bool = False
    optimizer: str = "adam"
    seed: int = 0
    progress: bool | None = None

    def __post_init__(self):
        require_positive_ints(self, ("users_per_batch", "samples_per_user", "steps"), ColdStartError, "MetaConfig: ")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ColdStartError(f"MetaConfig: alpha must be a number >= 0, got {self.alpha!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ColdStartError(f"MetaConfig: lr (β) must be a positive number, got {self.lr!r}")
        if not (0.0 <= self.gamma <= 1.0):
            raise ColdStartError(f"MetaConfig: gamma must be in [0, 1], got {self.gamma!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ColdStartError(f"MetaConfig: optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")


def _bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy with logits (the paper's 2-way softmax CE), in float32 or higher."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    return F.binary_cross_entropy_with_logits(z, labels.to(z.dtype))


def meta_loss(model, generator: MetaGenerator, batch_a: dict, batch_b: dict, *, alpha: float,
              gamma: float = 0.1, first_order: bool = False, stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_meta, L_A, L_B) of one step of Algorithm 1.

    `batch_a` / `batch_b` are dicts of tensors (a `Split.batches` item) whose users are the same
    set (every user of `batch_b` appears in `batch_a`). ê is generated once per distinct user of
    `batch_a` from the profile fields of that user's first row; the inner step moves each user's ê
    by −α times the gradient of L_A (the mean over `batch_a`'s rows) with respect to it.
    Differentiable with respect to the generator's parameters (call under
    `udg_fast.use_backend("reference")` unless `first_order`, see the module docstring).
    With a `stats` dict, `stats["inner_step"]` gets mean ‖α g_u‖ / mean ‖ê_u‖ (how far the inner
    step moves the embeddings).
    """
    users_a = batch_a["user_id"]
    uniq, first = np.unique(users_a.cpu().numpy(), return_index=True)
    uniq_t = torch.from_numpy(uniq).to(users_a.device)
    inv_a = torch.searchsorted(uniq_t, users_a)
    inv_b = torch.searchsorted(uniq_t, batch_b["user_id"]).clamp_max(len(uniq) - 1)
    if not torch.equal(uniq_t[inv_b], batch_b["user_id"]):
        raise ColdStartError("meta_loss: batch_b has users that batch_a lacks (D^A and D^B must share users)")
    idx = torch.from_numpy(first).to(users_a.device)
    profiles = torch.stack([batch_a[f][idx] for f in generator.fields], 1)
    e_hat = generator(profiles)                                               # [U, d]
    loss_a = _bce(model(batch_a, udg_emb=e_hat[inv_a]), batch_a["label"])
    # retain_graph: L_A is differentiated again as part of L_meta
    (g,) = torch.autograd.grad(loss_a, e_hat, create_graph=not first_order, retain_graph=True)
    if first_order:
        g = g.detach()
    e = e_hat - alpha * g
    if stats is not None:
        with torch.no_grad():
            stats["inner_step"] = float((alpha * g).norm(dim=1).mean() / e_hat.norm(dim=1).mean().clamp_min(1e-12))
    loss_b = _bce(model(batch_b, udg_emb=e[inv_b]), batch_b["label"])
    return gamma * loss_a + (1.0 - gamma) * loss_b, loss_a, loss_b


class PairSampler:
    """Minibatch pairs (batch from D^A, batch of the same users from D^B), as row indices."""

    def __init__(self, split: Split, rows_a: np.ndarray, rows_b: np.ndarray, users_per_batch: int,
                 samples_per_user: int, seed: int = 0):
        self.users_per_batch, self.samples_per_user = int(users_per_batch), int(samples_per_user)
        user = np.asarray(split["user_id"])
        self._runs = {}
        for name, rows in (("a", rows_a), ("b", rows_b)):
            rows = np.asarray(rows, np.int64)
            rows = rows[np.argsort(user[rows], kind="stable")]
            u, st, ct = np.unique(user[rows], return_index=True, return_counts=True)
            self._runs[name] = (rows, u, st, ct)
        ua, ub = self._runs["a"][1], self._runs["b"][1]
        if not np.array_equal(ua, ub):
            raise ColdStartError("D^A and D^B must cover the same users "
                                 f"({len(np.setxor1d(ua, ub))} user(s) are in only one of them)")
        if len(ua) == 0:
            raise ColdStartError("meta-training needs users with at least 2 samples; D^A is empty")
        self.users = ua
        self.rng = np.random.default_rng(seed)
        self._perm, self._pos = None, 0

    def _next_users(self) -> np.ndarray:
        n = min(self.users_per_batch, len(self.users))
        if self._perm is None or self._pos + n > len(self._perm):
            self._perm, self._pos = self.rng.permutation(len(self.users)), 0
        pick = self._perm[self._pos:self._pos + n]
        self._pos += n
        return pick

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows of the D^A minibatch, rows of the D^B minibatch): S rows of each of U users."""
        pick = self._next_users()
        out = []
        for name in ("a", "b"):
            rows, _, st, ct = self._runs[name]
            s, c = np.repeat(st[pick], self.samples_per_user), np.repeat(ct[pick], self.samples_per_user)
            out.append(rows[s + (self.rng.random(len(s)) * c).astype(np.int64)])
        return out[0], out[1]


def train_generator(model, generator: MetaGenerator, split: Split, config: MetaConfig | None = None, *,
                    rows=None, halves: tuple[np.ndarray, np.ndarray] | None = None,
                    log: Callable[[str], None] | None = None) -> dict:
    """Train `generator`'s Θ on `split` by Algorithm 1, the model frozen (left bit-identical).

    Args:
        model: a pre-trained UDG `CTRModel` (its parameters' `requires_grad` flags and train/eval
            mode are restored afterwards; nothing of it is updated).
        generator: a `MetaGenerator` for the model's schema and `udg_dim`.
        split: the training samples (e.g. the active users' samples).
        config: `MetaConfig`.
        rows: the rows of `split` to use (default all); split into D^A / D^B by `split_halves`.
        halves: (rows of D^A, rows of D^B) to use instead of `split_halves`.
        log: called with a summary line.

    Returns:
        {"loss_meta", "loss_a", "loss_b": per-step lists, "seconds", "users", "rows_a", "rows_b"}.
    """
    from udg_fast.train import _bar

    cfg = config or MetaConfig()
    if not getattr(model, "udg", False):
        raise ColdStartError(f"{model.name}: meta-training initialises E^UDG; the model must have udg=True")
    if generator.out_dim != model.udg_dim:
        raise ColdStartError(f"the generator outputs {generator.out_dim} values, the model's UDG embedding has "
                             f"{model.udg_dim}")
    missing = [f for f in generator.fields if f not in split]
    if missing:
        raise ColdStartError(f"split {split.name!r} lacks the profile field(s) {missing} the generator reads")
    rows_a, rows_b = halves if halves is not None else split_halves(split, rows)
    sampler = PairSampler(split, rows_a, rows_b, cfg.users_per_batch, cfg.samples_per_user, cfg.seed)
    device = next(model.parameters()).device
    generator.to(device)
    fields = list(dict.fromkeys([f for f in model.required_fields(training=True) if f in split]
                                + list(generator.fields)))
    cols = split.to_torch(fields=fields)
    take = lambda idx: {k: t[torch.from_numpy(idx)].to(device) for k, t in cols.items()}  # noqa: E731

    params = list(generator.parameters())
    opt = (torch.optim.Adam(params, lr=cfg.lr) if cfg.optimizer == "adam" else torch.optim.SGD(params, lr=cfg.lr))
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    hist = {"loss_meta": [], "loss_a": [], "loss_b": [], "inner_step": []}
    stats: dict = {}
    bar = _bar(cfg.steps, "meta-train f_meta", cfg.progress)
    t0 = time.perf_counter()
    try:
        model.requires_grad_(False)   # frozen: only Θ trains (and no gradient is kept for the model)
        model.eval()                  # no DIEN auxiliary loss, no mode-dependent layers
        generator.train()
        backend = None if cfg.first_order else "reference"
        for step in range(cfg.steps):
            ia, ib = sampler.next()
            ba, bb = take(ia), take(ib)
            with use_backend(backend):
                loss, la, lb = meta_loss(model, generator, ba, bb, alpha=cfg.alpha, gamma=cfg.gamma,
                                         first_order=cfg.first_order, stats=stats)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise FloatingPointError(f"meta loss became {lv} at step {step}; lower alpha or lr")
            hist["loss_meta"].append(lv)
            hist["loss_a"].append(float(la.detach()))
            hist["loss_b"].append(float(lb.detach()))
            hist["inner_step"].append(stats["inner_step"])
            if step % 10 == 0:
                bar.set_postfix(L_meta=f"{np.mean(hist['loss_meta'][-50:]):.4f}")
            bar.update(1)
    finally:
        bar.close()
        for p, f in flags:
            p.requires_grad_(f)
        model.train(was_training)
    hist.update(seconds=time.perf_counter() - t0, users=int(len(sampler.users)), rows_a=int(len(rows_a)),
                rows_b=int(len(rows_b)))
    if log is not None:
        n = max(1, min(50, cfg.steps // 5))
        log(f"f_meta: {cfg.steps} steps in {hist['seconds']:.1f} s, L_meta {np.mean(hist['loss_meta'][:n]):.4f} → "
            f"{np.mean(hist['loss_meta'][-n:]):.4f} (first/last {n} steps), {hist['users']} users, "
            f"inner step ‖αg‖/‖ê‖ {np.mean(hist['inner_step'][-n:]):.3f}")
    return hist
