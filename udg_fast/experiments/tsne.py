"""Figure 3: t-SNE of the penultimate layer of PNN and PNN + UDG for the test samples of two users.

The penultimate output is what the output layer reads: the last hidden layer's activations
`h_{L−1}` `[N, hidden[-1]]` for the base model, and for the UDG model the gated
`γ·σ(g_L) ⊙ h_{L−1}` (Eq. 7 applied to the output layer's input), so both panels show exactly the
vectors whose linear read-out is the logit. Its size is the model's last hidden width (PNN's
default 128; pass `--hp hidden=…,80` for the paper's 80).

The two users are, unless given, the two test users with the most test samples among those whose
test samples hold both labels (ties: the smaller id). The separation of the label clusters is
stated by the silhouette score (scikit-learn, label = cluster), in the 2-D t-SNE map and in the
original feature space, and by the AUC of the model on these samples.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
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
    """The k test users with the most test samples among those with both labels (ties: smaller id)."""
    users = np.asarray(test["user_id"])
    labels = np.asarray(test["label"])
    cands = []
    for u in np.unique(users):
        y = labels[users == u]
        if 0 < y.sum() < len(y):
            cands.append((-len(y), int(u)))
    if len(cands) < k:
        raise ExperimentError(f"the test split has only {len(cands)} user(s) whose test samples hold both labels; "
                              f"t-SNE needs {k}")
    return [u for _, u in sorted(cands)[:k]]


def _silhouette(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    if len(np.unique(y)) < 2 or len(y) < 3:
        return float("nan")
    return float(silhouette_score(x, y))


def run_tsne(ctx: Context, seed: int = 0, users: Sequence[int] | None = None) -> dict:
    """Train (or reuse) PNN and PNN + UDG with `seed`, embed the two users' test samples with
    t-SNE, write tsne.png (two panels) and tsne.json / tsne.md (the separation numbers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from udg_fast import metrics, train
    from udg_fast.experiments.runner import run_all_specs
    from udg_fast.experiments.tables import _save_fig
    from udg_fast.train import _atomic_write_text

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
    specs = [RunSpec(MODEL, "base", seed), RunSpec(MODEL, "udg", seed)]
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
    result = {"users": users, "samples": int(len(idx)), "positives": int(labels.sum()), "seed": seed,
              "perplexity": perplexity, "models": {}}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), dpi=120)
    for ax, spec in zip(axes, specs):
        model, _ = train.load_checkpoint(ctx.run_dir(spec) / "best.pt", ctx.dataset.schema)
        feats = penultimate(model, batch).float().numpy()
        probs = model.score(batch).numpy()
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(feats)
        name = model_label(MODEL, spec.variant)
        stats = {"dim": int(feats.shape[1]), "silhouette_tsne": _silhouette(emb, labels),
                 "silhouette_features": _silhouette(feats, labels),
                 "auc": metrics.auc(torch.from_numpy(labels), torch.from_numpy(probs))}
        result["models"][name] = stats
        for u, marker in zip(users, ("o", "^")):
            for lab, color in ((0, "#2c7bb6"), (1, "#d7191c")):
                sel = (owner == u) & (labels == lab)
                ax.scatter(emb[sel, 0], emb[sel, 1], s=18, c=color, marker=marker, alpha=0.8, linewidths=0,
                           label=f"user {u}, label {lab}")
        ax.set_title(f"{name} (dim {stats['dim']}): silhouette {stats['silhouette_tsne']:.3f} (t-SNE), "
                     f"{stats['silhouette_features']:.3f} (features)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{ctx.dataset.name}: penultimate layer of PNN vs PNN + UDG, test samples of users "
                 f"{users[0]} and {users[1]} (t-SNE, seed {seed})", fontsize=9)
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


def _tsne_markdown(r: dict, dataset: str) -> str:
    lines = ["| model | dim | silhouette (t-SNE map) | silhouette (features) | AUC on these samples |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, s in r["models"].items():
        lines.append(f"| {name} | {s['dim']} | {_f(s['silhouette_tsne'])} | {_f(s['silhouette_features'])} | "
                     f"{_f(s['auc'])} |")
    return ("\n".join(lines) + "\n\n"
            f"{r['samples']} test samples ({r['positives']} positive) of users {r['users'][0]} and {r['users'][1]} "
            f"of {dataset}; seed {r['seed']}; t-SNE perplexity {r['perplexity']:.1f}. Silhouette of the two label "
            "clusters (−1 … 1, higher = labels better separated), Euclidean distance.\n")
