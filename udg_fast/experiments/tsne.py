"""Figure 3: t-SNE of the penultimate layer of PNN and PNN + UDG for the test samples of two users.

The penultimate output is what the output layer reads: the last hidden layer's activations
`h_{L−1}` `[N, hidden[-1]]` for the base model, and for the UDG model the gated
`γ·σ(g_L) ⊙ h_{L−1}` (Eq. 7 applied to the output layer's input), so both panels show exactly the
vectors whose linear read-out is the logit. Its size is the model's last hidden width (PNN's
default 128; pass `--hp hidden=…,80` for the paper's 80).

The two users are, unless given, the two test users with the most test samples of their rarer
label (then the most samples, then the smaller id), so that both label clusters are populated. The separation of the label clusters is
stated by the silhouette score (scikit-learn, label = cluster), in the 2-D t-SNE map and in the
original feature space, and by the AUC of the model on these samples.
"""
from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import torch

from udg_fast.experiments.runner import Context, ExperimentError, RunSpec, model_label

MODEL = "pnn"


@torch.no_grad()
def penultimate(model, batch) -> torch.Tensor:
    """The input of the output layer `[B, hidden[-1]]` (gated under UDG, Eq. 7), in eval mode."""
    was = model.training
    model.eval()
    try:
        model.check_batch(batch)
        e = model.embed(batch)
        mid, _ = model.middle(e, batch, False)
        x = torch.cat([mid, e.item_flat, e.user_flat, *model.extra_features(e)], 1)
        gates = model.gate_logits(e, batch)
        layers = model.mlp.layers
        for i, layer in enumerate(layers[:-1]):
            x = layer(x) if gates is None else layer(x, gates[i])
        if gates is not None:
            x = layers[-1].gate_scale * torch.sigmoid(gates[-1]) * x
        return x
    finally:
        model.train(was)


def pick_users(test, k: int = 2) -> list[int]:
    """The k test users with the most samples of their rarer label (then the most samples, then
    the smaller id): the users whose two label clusters are both well populated."""
    users = np.asarray(test["user_id"])
    labels = np.asarray(test["label"])
    cands = []
    for u in np.unique(users):
        y = labels[users == u]
        pos = int(y.sum())
        if 0 < pos < len(y):
            cands.append((-min(pos, len(y) - pos), -len(y), int(u)))
    if len(cands) < k:
        raise ExperimentError(f"the test split has only {len(cands)} user(s) whose test samples hold both labels; "
                              f"t-SNE needs {k}")
    return [c[-1] for c in sorted(cands)[:k]]


def _silhouette(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    if len(np.unique(y)) < 2 or len(y) < 3:
        return float("nan")
    return float(silhouette_score(x, y))


def _embed(ctx: Context, spec: RunSpec, batch, labels: np.ndarray, perplexity: float):
    """(t-SNE map `[N, 2]`, stats) of one finished run's penultimate outputs for `batch`."""
    from sklearn.manifold import TSNE

    from udg_fast import metrics, train

    model, _ = train.load_checkpoint(ctx.run_dir(spec) / "best.pt", ctx.dataset.schema)
    feats = penultimate(model, batch).float().numpy()
    probs = model.score(batch).numpy()
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=spec.seed).fit_transform(feats)
    return emb, {"dim": int(feats.shape[1]), "silhouette_tsne": _silhouette(emb, labels),
                 "silhouette_features": _silhouette(feats, labels),
                 "auc": metrics.auc(torch.from_numpy(labels), torch.from_numpy(probs))}


def run_tsne(ctx: Context, seeds: Sequence[int] = (0,), users: Sequence[int] | None = None) -> dict:
    """Train (or reuse) PNN and PNN + UDG for every seed; embed the two users' test samples with
    t-SNE; write tsne.png (two panels, the first seed) and tsne.json / tsne.md (the separation
    numbers of every seed, and their mean ± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from udg_fast.experiments.runner import run_all_specs
    from udg_fast.experiments.tables import _save_fig, mean_std
    from udg_fast.train import _atomic_write_text

    seeds = list(seeds)
    test = ctx.dataset.test
    if users is None:
        users = pick_users(test)
    else:
        users = [int(u) for u in users]
        present = set(np.unique(np.asarray(test["user_id"])).tolist())
        missing = [u for u in users if u not in present]
        if len(users) != 2 or missing:
            raise ExperimentError(f"tsne users must be two user ids with test samples; got {users}"
                                  + (f" ({missing} have none)" if missing else ""))
    specs = [RunSpec(MODEL, v, s) for s in seeds for v in ("base", "udg")]
    for s in specs:  # t-SNE needs the weights: a finished run whose best.pt is gone is trained again
        if ctx.finished(s) is not None and not (ctx.run_dir(s) / "best.pt").is_file():
            (ctx.run_dir(s) / "metrics.json").unlink()
    run_all_specs(ctx, specs, "tsne")

    idx = np.flatnonzero(np.isin(np.asarray(test["user_id"]), users))
    sub = test.select(idx)
    labels = np.asarray(sub["label"]).astype(int)
    owner = np.asarray(sub["user_id"])
    batch = sub.to_torch()
    perplexity = float(min(30.0, max(2.0, (len(idx) - 1) / 3.0)))
    result = {"users": users, "samples": int(len(idx)), "positives": int(labels.sum()), "seeds": seeds,
              "figure_seed": seeds[0], "perplexity": perplexity, "models": {}, "per_seed": []}
    maps = {}
    for spec in specs:
        emb, stats = _embed(ctx, spec, batch, labels, perplexity)
        result["per_seed"].append({"model": model_label(MODEL, spec.variant), "seed": spec.seed, **stats})
        if spec.seed == seeds[0]:
            maps[spec.variant] = (emb, stats)
    for v in ("base", "udg"):
        name = model_label(MODEL, v)
        rows = [r for r in result["per_seed"] if r["model"] == name]
        agg = {"dim": rows[0]["dim"]}
        for k in ("silhouette_tsne", "silhouette_features", "auc"):
            agg[f"{k}_mean"], agg[f"{k}_std"] = mean_std([r[k] for r in rows])
        result["models"][name] = agg

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), dpi=120)
    for ax, v in zip(axes, ("base", "udg")):
        emb, stats = maps[v]
        for u, marker in zip(users, ("o", "^")):
            for lab, color in ((0, "#2c7bb6"), (1, "#d7191c")):
                sel = (owner == u) & (labels == lab)
                ax.scatter(emb[sel, 0], emb[sel, 1], s=18, c=color, marker=marker, alpha=0.8, linewidths=0,
                           label=f"user {u}, label {lab}")
        ax.set_title(f"{model_label(MODEL, v)} (dim {stats['dim']}): silhouette {stats['silhouette_tsne']:.3f} "
                     f"(t-SNE), {stats['silhouette_features']:.3f} (features)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{ctx.dataset.name}: penultimate layer of PNN vs PNN + UDG, test samples of users "
                 f"{users[0]} and {users[1]} (t-SNE, seed {seeds[0]})", fontsize=9)
    fig.tight_layout()
    out = ctx.setup.out_dir
    _save_fig(fig, out / "tsne.png")
    plt.close(fig)
    md = _tsne_markdown(result, ctx.dataset.name)
    _atomic_write_text(json.dumps(result, indent=2, default=float) + "\n", out / "tsne.json")
    _atomic_write_text(md, out / "tsne.md")
    return {**result, "markdown": md, "png": out / "tsne.png", "json": out / "tsne.json", "table": out / "tsne.md"}


def _f(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _pm(m: float, sd: float) -> str:
    return "–" if m is None or not math.isfinite(m) else f"{m:.3f} ± {sd:.3f}"


def _tsne_markdown(r: dict, dataset: str) -> str:
    lines = ["| model | dim | silhouette (t-SNE map) | silhouette (features) | AUC on these samples |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, s in r["models"].items():
        lines.append(f"| {name} | {s['dim']} | {_pm(s['silhouette_tsne_mean'], s['silhouette_tsne_std'])} | "
                     f"{_pm(s['silhouette_features_mean'], s['silhouette_features_std'])} | "
                     f"{_pm(s['auc_mean'], s['auc_std'])} |")
    per = "; ".join(f"{p['model']} seed {p['seed']}: {_f(p['silhouette_features'])}" for p in r["per_seed"])
    return ("\n".join(lines) + "\n\n"
            f"{r['samples']} test samples ({r['positives']} positive) of users {r['users'][0]} and {r['users'][1]} "
            f"of {dataset}; mean ± sample std over seeds {', '.join(map(str, r['seeds']))} (the figure: seed "
            f"{r['figure_seed']}); t-SNE perplexity {r['perplexity']:.1f}. Silhouette of the two label clusters "
            "(−1 … 1, higher = labels better separated; Euclidean). Per seed, silhouette in feature space: "
            f"{per}.\n")
