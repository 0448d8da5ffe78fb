"""Evaluation metrics for CTR models, computed with torch ops on the tensors' own device.

    >>> from udg_fast import metrics
    >>> metrics.evaluate(labels, probs, groups=user_ids, base_rate=train_ctr)
    {'auc': 0.74, 'logloss': 0.45, 'rmse': 0.37, 'rig': 0.12, 'gauc': 0.69}

Every function takes 1-D tensors of shape `[N]` (a `[N, 1]` column is flattened; any other shape
is a ValueError) on any device, and returns a Python ``float``.  All the work — sorting, tie
grouping, the sums — runs on the tensors' device with float64 (or exact int64) accumulation; only
the final scalar, plus one boolean per input check, crosses to the host (so the device must
support float64: CPU and CUDA do, Apple's MPS does not).  Lists and NumPy arrays
are accepted too (copied through ``numpy.array``, so Python floats stay float64).  If the inputs
sit on different devices, the others are moved to the device of the predictions (``scores`` /
``probs``).

Inputs
------
``labels``
    `[N]`, values in {0, 1}, of dtype bool, any integer dtype or any floating dtype.  Anything else
    (2, -1, 0.5, NaN) is a ValueError.
``probs``
    `[N]` predicted probabilities of the positive class, in `[0, 1]`.  Values outside `[0, 1]` or NaN
    are a ValueError naming the argument.  Functions that take ``from_logits=True`` instead accept
    raw logits `z` (any real number but NaN, ±inf allowed) and use ``sigmoid(z)`` — computed stably,
    see :func:`log_loss`.
``scores``
    `[N]` ranking scores for :func:`auc` / :func:`gauc`: any real numbers but NaN (probabilities,
    logits, ±inf: AUC only depends on their order, so no ``from_logits`` is needed).
``groups``
    `[N]` integer (or bool) group id of each sample — the user id for gAUC.

Edge cases (the same in every function)
---------------------------------------
* Empty input (`N == 0`): ValueError ``"<arg> is empty ..."`` naming the argument.
* Lengths differ: ValueError naming both arguments and their lengths.
* Only one class in ``labels``: :func:`auc` returns ``float('nan')``, silently (scikit-learn 1.9's
  ``roc_auc_score`` also returns NaN but with an ``UndefinedMetricWarning``; older versions raise) —
  so a full :func:`evaluate` over a tiny split does not crash; :func:`log_loss`, :func:`rmse` and :func:`rig` are well defined and computed as usual.
  :func:`gauc` returns NaN when no group holds both classes.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["auc", "evaluate", "gauc", "log_loss", "rig", "rmse"]

# --------------------------------------------------------------------------------------- checks
def _as_1d(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """`x` as a 1-D, non-empty tensor (detached; a `[N, 1]` column flattened) on `device`."""
    if not isinstance(x, torch.Tensor):
        try:  # through NumPy, so that Python floats stay float64 (torch.as_tensor would make float32)
            x = torch.from_numpy(np.array(x))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{name} must be a tensor or array-like of shape [N], got {type(x).__name__}: {e}") from e
    x = x.detach()
    if x.dim() == 2 and x.shape[1] == 1:
        x = x.reshape(-1)
    if x.dim() != 1:
        raise ValueError(f"{name} must have shape [N] (or [N, 1]), got shape {list(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {list(x.shape)}); metrics need at least one sample")
    if x.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
    if device is not None and x.device != device:
        x = x.to(device)
    return x


def _same_length(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{a_name} and {b_name} have different lengths: {a_name} has {a.shape[0]}, {b_name} has {b.shape[0]}"
        )


def _check_labels(labels: torch.Tensor, name: str = "labels") -> torch.Tensor:
    """`labels` (bool / int / float with values in {0, 1}) as a bool tensor."""
    if labels.dtype == torch.bool:
        return labels
    ok = ((labels == 0) | (labels == 1)).all()
    if not bool(ok):
        bad = labels[~((labels == 0) | (labels == 1))]
        raise ValueError(f"{name} must contain only 0 and 1 (or True/False); found e.g. {bad[:5].tolist()}")
    return labels == 1


def _check_real(x: torch.Tensor, name: str) -> torch.Tensor:
    """A real-valued tensor with no NaN (bool promoted to int64)."""
    if x.dtype == torch.bool:
        return x.to(torch.int64)
    if x.dtype.is_floating_point and bool(torch.isnan(x).any()):
        raise ValueError(f"{name} contains NaN ({int(torch.isnan(x).sum())} of {x.numel()} values)")
    return x


def _check_probs(p: torch.Tensor, name: str = "probs") -> torch.Tensor:
    """Probabilities in [0, 1], no NaN; returned in a floating dtype (float32 for half precision,
    float64 for integer / bool input — like scikit-learn's ``check_array``)."""
    if p.dtype in (torch.float16, torch.bfloat16):
        p = p.to(torch.float32)
    elif not p.dtype.is_floating_point:
        p = p.to(torch.float64)
    inside = (p >= 0) & (p <= 1)  # NaN fails both comparisons
    if not bool(inside.all()):
        n_nan = int(torch.isnan(p).sum())
        finite = p[~torch.isnan(p)]
        rng = f"min {finite.min().item():.6g}, max {finite.max().item():.6g}" if finite.numel() else "all NaN"
        raise ValueError(
            f"{name} must be probabilities in [0, 1] with no NaN ({rng}, {n_nan} NaN); "
            f"pass from_logits=True for raw logits"
        )
    return p


def _check_logits(z: torch.Tensor, name: str = "probs") -> torch.Tensor:
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.to(torch.float32)
    elif not z.dtype.is_floating_point:
        z = z.to(torch.float64)
    if bool(torch.isnan(z).any()):
        raise ValueError(f"{name} (logits, from_logits=True) contains NaN ({int(torch.isnan(z).sum())} of {z.numel()})")
    return z


def _prep(labels: Any, preds: Any, preds_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape/emptiness/length checks; `labels` moved to the device of `preds`."""
    preds = _as_1d(preds, preds_name)
    labels = _as_1d(labels, "labels", preds.device)
    _same_length(labels, "labels", preds, preds_name)
    return labels, preds


def _check_base_rate(base_rate: Any) -> float:
    try:
        p = float(base_rate)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"base_rate must be a number in (0, 1), got {base_rate!r}") from e
    if not (0.0 < p < 1.0):  # also rejects NaN
        raise ValueError(f"base_rate must lie strictly inside (0, 1) (the training-set positive rate), got {p!r}")
    return p


# ------------------------------------------------------------------------------------ AUC core
def _grouped_auc_parts(y: torch.Tensor, s: torch.Tensor, g: torch.Tensor | None):
    """Mann–Whitney U with midranks for every group at once.

    `y` `[N]` bool, `s` `[N]` real scores (no NaN), `g` `[N]` integer group ids or None (one group).
    Returns `(twice_u, pos, neg)`, each `[G]` int64 in sorted group order, where
    ``AUC_g = twice_u / (2 * pos * neg)``.  Exact integer arithmetic (valid for N < 3e9).

    One sort by (group, score): an unstable sort by score, then a stable sort by group.  Samples with
    equal (group, score) form a tie block; a block with p positives and n negatives, above `b`
    negatives of the same group, adds ``p * (b + n / 2)`` to U, i.e. ``p * (2b + n)`` to 2U.
    """
    s_s, order = torch.sort(s)
    if g is not None:
        g_s, o2 = torch.sort(g[order], stable=True)
        s_s = s_s[o2]
        order = order[o2]
    y_s = y[order].to(torch.int64)
    one_true = torch.ones(1, dtype=torch.bool, device=s.device)

    new_score = s_s[1:] != s_s[:-1]  # [N-1] a new score starts at i+1
    if g is not None:
        new_group = g_s[1:] != g_s[:-1]
        new_block = new_score | new_group
    else:
        new_group = torch.zeros_like(new_score)
        new_block = new_score
    block_end = torch.cat([new_block, one_true])  # [N] sample i ends a tie block
    group_end = torch.cat([new_group, one_true])  # [N] sample i ends a group

    cpos = torch.cumsum(y_s, 0)  # positives in sorted[0..i]
    ends = torch.nonzero(block_end).squeeze(1)  # [B]
    pos_end = cpos[ends]
    neg_end = ends + 1 - pos_end
    zero = torch.zeros(1, dtype=torch.int64, device=s.device)
    pos_b = torch.diff(pos_end, prepend=zero)
    neg_b = torch.diff(neg_end, prepend=zero)

    gends = torch.nonzero(group_end).squeeze(1)  # [G]
    gpos_end = cpos[gends]
    gneg_end = gends + 1 - gpos_end
    pos_g = torch.diff(gpos_end, prepend=zero)
    neg_g = torch.diff(gneg_end, prepend=zero)
    neg_before_g = gneg_end - neg_g  # negatives of all earlier groups

    # group index of every block: number of group ends strictly before the block's last sample
    gid_b = torch.cumsum(torch.cat([zero, new_group.to(torch.int64)]), 0)[ends]
    neg_below_b = (neg_end - neg_b) - neg_before_g[gid_b]
    contrib = pos_b * (2 * neg_below_b + neg_b)
    # per-group sum by a cumulative sum read at each group's last block (deterministic, no atomics)
    ccontrib = torch.cumsum(contrib, 0)[group_end[ends]]
    twice_u = torch.diff(ccontrib, prepend=zero)
    return twice_u, pos_g, neg_g


def _auc_from_parts(twice_u, pos, neg) -> torch.Tensor:
    denom = (2 * pos * neg).to(torch.float64)
    return torch.where(denom > 0, twice_u.to(torch.float64) / denom.clamp_min(1), torch.nan)


# ------------------------------------------------------------------------------------ metrics
@torch.no_grad()
def auc(labels: Any, scores: Any) -> float:
    """Exact ROC AUC of `scores` `[N]` against binary `labels` `[N]`.

    Ties are handled as scikit-learn's ``roc_auc_score`` does (trapezoidal ROC = Mann–Whitney U with
    midranks: a tied positive/negative pair counts 1/2), so all-equal scores give 0.5.  O(N log N):
    one sort, tie blocks found by comparing neighbours, exact int64 counts, float64 division.

    `scores` may be any real numbers but NaN (probabilities, logits, ±inf) — only their order
    matters.  If `labels` holds only one class, the AUC is undefined and this returns
    ``float('nan')`` without a warning (scikit-learn 1.9 returns NaN with an ``UndefinedMetricWarning``;
    older versions raise) — check with ``math.isnan``.

    Raises ValueError on empty input, mismatched lengths, a shape other than `[N]` / `[N, 1]`,
    labels outside {0, 1} or NaN scores.
    """
    labels, scores = _prep(labels, scores, "scores")
    y = _check_labels(labels)
    s = _check_real(scores, "scores")
    return float(_auc_from_parts(*_grouped_auc_parts(y, s, None))[0].item())


def _log_loss_t(y: torch.Tensor, p: torch.Tensor, eps: float | None, from_logits: bool) -> torch.Tensor:
    """Mean binary cross-entropy (float64 0-d tensor) on validated `y` (bool) and `p`."""
    if from_logits:
        z = p.to(torch.float64)
        # -log sigmoid(z) = softplus(-z), -log(1 - sigmoid(z)) = softplus(z): stable, inf-safe
        losses = torch.where(y, F.softplus(-z), F.softplus(z))
        return losses.mean()
    e = torch.finfo(p.dtype).eps if eps is None else float(eps)
    q = 1 - p  # computed in p's dtype, like scikit-learn, before clipping
    p_c = p.clamp(e, 1 - e).to(torch.float64)
    q_c = q.clamp(e, 1 - e).to(torch.float64)
    return -torch.where(y, torch.log(p_c), torch.log(q_c)).mean()


@torch.no_grad()
def log_loss(labels: Any, probs: Any, eps: float | None = None, *, from_logits: bool = False) -> float:
    """Mean binary cross-entropy (natural log) of `probs` `[N]` against `labels` `[N]`.

    ``-mean(y log p + (1 - y) log(1 - p))``, with ``p`` and ``1 - p`` each clipped to
    ``[eps, 1 - eps]`` before the log.  ``eps=None`` (the default) uses the machine epsilon of
    `probs`' dtype (``torch.finfo(dtype).eps``: 2.2e-16 for float64, 1.2e-7 for float32), which is
    what scikit-learn >= 1.5 (1.9 included) does in ``sklearn.metrics.log_loss``; the result matches
    it to ~1e-15 for float64 inputs.  Half-precision `probs` are promoted to float32 (and use float32's
    eps), integer / bool `probs` to float64.  Pass a number (e.g. the older ``eps=1e-15`` or
    ``1e-7``) to clip differently.  The ``1 - p`` is formed in `probs`' dtype and the logs and the mean
    are taken in float64.

    With ``from_logits=True``, `probs` holds raw logits ``z`` and the loss is computed exactly as
    ``softplus(-z)`` for positives and ``softplus(z)`` for negatives (no clipping, `eps` unused) —
    the same as ``torch.nn.functional.binary_cross_entropy_with_logits``.

    Unlike scikit-learn (which needs ``labels=[0, 1]`` then), a `labels` with only one class is fine.
    Raises ValueError on empty input, mismatched lengths, bad shapes, labels outside {0, 1},
    probabilities outside [0, 1] or NaN.
    """
    labels, probs = _prep(labels, probs, "probs")
    y = _check_labels(labels)
    if eps is not None and not (0.0 <= float(eps) < 0.5):
        raise ValueError(f"eps must lie in [0, 0.5), got {eps!r}")
    p = _check_logits(probs) if from_logits else _check_probs(probs)
    return float(_log_loss_t(y, p, eps, from_logits).item())


def _rmse_t(y: torch.Tensor, p: torch.Tensor, from_logits: bool) -> torch.Tensor:
    p = p.to(torch.float64)
    if from_logits:
        p = torch.sigmoid(p)
    return torch.sqrt(torch.mean((y.to(torch.float64) - p) ** 2))


@torch.no_grad()
def rmse(labels: Any, probs: Any, *, from_logits: bool = False) -> float:
    """Root mean squared error ``sqrt(mean((y - p)^2))`` of `probs` `[N]` against `labels` `[N]`, in
    float64 (``sqrt(sklearn.metrics.mean_squared_error(labels, probs))``).

    ``from_logits=True``: `probs` holds logits and ``p = sigmoid(z)``.  Raises ValueError as
    :func:`log_loss` does.
    """
    labels, probs = _prep(labels, probs, "probs")
    y = _check_labels(labels)
    p = _check_logits(probs) if from_logits else _check_probs(probs)
    return float(_rmse_t(y, p, from_logits).item())


def _entropy(p: float) -> float:
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


@torch.no_grad()
def rig(labels: Any, probs: Any, base_rate: float, eps: float | None = None, *, from_logits: bool = False) -> float:
    """Relative Information Gain ``RIG = 1 - LogLoss / H(p̄)`` (He et al. 2014, "Practical Lessons
    from Predicting Clicks on Ads at Facebook", where it is 1 − Normalized Entropy).

    `base_rate` is p̄, the positive rate (CTR) of the **training** set, and
    ``H(p̄) = -p̄ log p̄ - (1 - p̄) log(1 - p̄)`` (natural log, like the log loss) is the log loss of
    always predicting p̄.  RIG is 0 for that constant predictor, 1 for a perfect one and negative
    for one worse than it.  ``LogLoss`` is :func:`log_loss` (same `eps` and `from_logits`).

    Raises ValueError if `base_rate` is not strictly inside (0, 1) (or NaN), and as
    :func:`log_loss` does.
    """
    p_bar = _check_base_rate(base_rate)
    return 1.0 - log_loss(labels, probs, eps, from_logits=from_logits) / _entropy(p_bar)


def _check_groups(groups: torch.Tensor) -> torch.Tensor:
    if groups.dtype == torch.bool:
        return groups.to(torch.int64)
    if groups.dtype.is_floating_point:
        raise ValueError(f"groups must hold integer ids (e.g. user ids), got dtype {groups.dtype}")
    return groups


@torch.no_grad()
def gauc(labels: Any, scores: Any, groups: Any) -> float:
    """Group (user) weighted AUC, as in DIN (Zhou et al. 2018, "Deep Interest Network for
    Click-Through Rate Prediction"):

        ``gAUC = Σ_u n_u · AUC_u / Σ_u n_u``

    where ``AUC_u`` is :func:`auc` over the samples of group `u` (ties as in :func:`auc`) and
    ``n_u`` is the number of samples (impressions) of `u`.  Groups whose samples are all of one
    class have no AUC and are **skipped** (left out of both sums); if no group has both classes, the
    result is ``float('nan')``.

    `labels`, `scores`, `groups`: `[N]`; `groups` holds integer (or bool) ids, in any order and of
    any range.  Vectorised: one sort by (group, score) and a handful of cumulative sums — no Python
    loop over groups; 10^6 samples take well under a second on a CPU.

    Raises ValueError on empty input, mismatched lengths, bad shapes, labels outside {0, 1}, NaN
    scores or floating-point `groups`.
    """
    labels, scores = _prep(labels, scores, "scores")
    groups = _as_1d(groups, "groups", scores.device)
    _same_length(labels, "labels", groups, "groups")
    y = _check_labels(labels)
    s = _check_real(scores, "scores")
    g = _check_groups(groups)
    return float(_gauc_t(y, s, g).item())


def _gauc_t(y: torch.Tensor, s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    twice_u, pos, neg = _grouped_auc_parts(y, s, g)
    auc_g = _auc_from_parts(twice_u, pos, neg)
    ok = (pos > 0) & (neg > 0)
    w = torch.where(ok, (pos + neg).to(torch.float64), 0.0)
    num = torch.where(ok, w * auc_g, 0.0).sum()
    den = w.sum()
    return torch.where(den > 0, num / den.clamp_min(1), torch.nan)


@torch.no_grad()
def evaluate(labels: Any, probs: Any, groups: Any = None, base_rate: float | None = None, *,
             eps: float | None = None, from_logits: bool = False) -> dict[str, float]:
    """All metrics at once: ``{"auc", "logloss", "rmse"}`` plus ``"rig"`` if `base_rate` is given
    and ``"gauc"`` if `groups` is given.

    `labels`, `probs` (probabilities, or logits with ``from_logits=True``) and `groups` are `[N]`;
    `base_rate` is the training-set positive rate for :func:`rig`.  The inputs are checked once and
    each metric is as its own function defines it — in particular ``"auc"`` (and ``"gauc"``) is NaN
    when it is undefined, instead of raising, so evaluating a tiny split does not crash.
    """
    labels, probs = _prep(labels, probs, "probs")
    y = _check_labels(labels)
    if eps is not None and not (0.0 <= float(eps) < 0.5):
        raise ValueError(f"eps must lie in [0, 0.5), got {eps!r}")
    p = _check_logits(probs) if from_logits else _check_probs(probs)
    g = None
    if groups is not None:
        g = _check_groups(_as_1d(groups, "groups", p.device))
        _same_length(labels, "labels", g, "groups")
    p_bar = _check_base_rate(base_rate) if base_rate is not None else None

    ll = _log_loss_t(y, p, eps, from_logits)
    vals = {
        "auc": _auc_from_parts(*_grouped_auc_parts(y, p, None))[0],
        "logloss": ll,
        "rmse": _rmse_t(y, p, from_logits),
    }
    if g is not None:
        vals["gauc"] = _gauc_t(y, p, g)
    keys = list(vals)
    host = torch.stack([v.to(torch.float64).reshape(()) for v in vals.values()]).tolist()  # one sync
    out = dict(zip(keys, host))
    if p_bar is not None:
        out["rig"] = 1.0 - out["logloss"] / _entropy(p_bar)
    order = ["auc", "logloss", "rmse", "rig", "gauc"]
    return {k: out[k] for k in order if k in out}
