"""Table 2 (every base model with and without UDG) and Table 3 (UDG against a base model with
twice the embedding size: is UDG's gain just more parameters?).

Both aggregate the runs of `runner.Context` over seeds 0 … runs−1 as mean ± sample standard
deviation (ddof = 1; 0 with one run). Files written to `out_dir`:

    table2.md   the paper's layout: one row per model and model + UDG, Log Loss, AUC, RMSE, RIG,
                gAUC as mean ± std, UDG's relative AUC change and its per-seed wins
    table2.csv  every run (model, variant, seed, metrics, parameters, epochs, seconds)
    table2.png  Figure 2: test AUC, mean with ±std error bars, base vs UDG per model
    table3.md / table3.csv   per model: parameters and AUC of base, base with 2× embedding, base + UDG
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from udg_fast.experiments.runner import (Context, RunSpec, model_label, run_all_specs)

METRICS = (("logloss", "Log Loss"), ("auc", "AUC"), ("rmse", "RMSE"), ("rig", "RIG"), ("gauc", "gAUC"))
RUN_COLUMNS = ["model", "variant", "seed", "auc", "logloss", "rmse", "rig", "gauc", "params", "best_epoch",
               "epochs_run", "train_seconds", "wall_seconds", "run_dir"]


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    from udg_fast.train import _atomic_write_text

    _atomic_write_text(df.to_csv(index=False, float_format="%.6f"), path)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value) of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _pm(m: float, s: float, digits: int = 4) -> str:
    if not math.isfinite(m):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, variant): n, params, and mean / std of every metric."""
    rows = []
    for (model, variant), g in runs.groupby(["model", "variant"], sort=False):
        row = {"model": model, "variant": variant, "n": len(g), "params": int(g["params"].iloc[0])}
        for k, _ in METRICS:
            row[f"{k}_mean"], row[f"{k}_std"] = mean_std(g[k].tolist())
        rows.append(row)
    return pd.DataFrame(rows)


# ---- Table 2 -----------------------------------------------------------------------------------

def table2_specs(models: Sequence[str], seeds: Sequence[int]) -> list[RunSpec]:
    # seed-major: an interrupted command leaves whole seeds behind, each a complete comparison
    return [RunSpec(m, v, s) for s in seeds for m in models for v in ("base", "udg")]


def table2_markdown(runs: pd.DataFrame, models: Sequence[str], dataset: str) -> str:
    summ = summarize(runs).set_index(["model", "variant"])
    n = int(runs.groupby(["model", "variant"]).size().min())
    heads = ["model"] + [h for _, h in METRICS] + ["params", "AUC change", "UDG better (seeds)"]
    lines = ["| " + " | ".join(heads) + " |", "| --- | " + " | ".join(["---:"] * (len(heads) - 1)) + " |"]
    for m in models:
        base, udg = summ.loc[(m, "base")], summ.loc[(m, "udg")]
        for v, s in (("base", base), ("udg", udg)):
            cells = [model_label(m, v)] + [_pm(s[f"{k}_mean"], s[f"{k}_std"]) for k, _ in METRICS]
            cells.append(f"{int(s['params']):,}")
            if v == "udg":
                rel = (udg["auc_mean"] - base["auc_mean"]) / base["auc_mean"] * 100
                b = runs[(runs.model == m) & (runs.variant == "base")].set_index("seed")["auc"]
                u = runs[(runs.model == m) & (runs.variant == "udg")].set_index("seed")["auc"]
                common = b.index.intersection(u.index)
                wins = int((u[common] > b[common]).sum())
                cells += [f"{rel:+.2f}%", f"{wins} of {len(common)}"]
            else:
                cells += ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nTest metrics on {dataset}, mean ± sample standard deviation over {n} seed(s) "
            f"(seeds {', '.join(map(str, sorted(runs.seed.unique())))}). AUC change = (AUC(UDG) − AUC(base)) / "
            f"AUC(base) of the means; *UDG better* counts the seeds whose UDG run has the higher test AUC "
            f"(same seed: same shared initial weights, same batches). Lower is better for Log Loss and RMSE.\n")
    return "\n".join(lines) + "\n" + note


def bar_chart(runs: pd.DataFrame, models: Sequence[str], path: Path, title: str,
              variants: Sequence[str] = ("base", "udg")) -> None:
    """Figure 2: mean test AUC per model, one bar per variant, ±std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summarize(runs).set_index(["model", "variant"])
    x = np.arange(len(models))
    w = 0.8 / len(variants)
    colors = {"base": "#7f8c8d", "udg": "#e67e22", "emb2x": "#2980b9"}
    fig, ax = plt.subplots(figsize=(1.4 * len(models) + 2.5, 3.8), dpi=120)
    lo, hi = math.inf, -math.inf
    for i, v in enumerate(variants):
        means = np.array([summ.loc[(m, v), "auc_mean"] for m in models])
        stds = np.array([summ.loc[(m, v), "auc_std"] for m in models])
        lo, hi = min(lo, float(np.min(means - stds))), max(hi, float(np.max(means + stds)))
        ax.bar(x + (i - (len(variants) - 1) / 2) * w, means, w, yerr=stds, capsize=3, color=colors[v],
               label="base" if v == "base" else model_label("", v).strip(" +()"), edgecolor="black", linewidth=0.5)
    pad = max(0.002, 0.15 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)  # the differences are ~1e-3: a zero-based axis would hide them
    ax.set_xticks(x, [model_label(m) for m in models])
    ax.set_ylabel("test AUC (mean ± std)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def _save_fig(fig, path: Path) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def run_table2(ctx: Context, seeds: Sequence[int]) -> dict:
    """Train (or reuse) every model with and without UDG for every seed; write table2.md/.csv/.png.

    Returns {"markdown", "table", "csv", "png", "summary_csv", "runs": DataFrame}."""
    from udg_fast.train import _atomic_write_text

    models = ctx.models
    rows = run_all_specs(ctx, table2_specs(models, seeds), "table2")
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    out = ctx.setup.out_dir
    md = table2_markdown(runs, models, ctx.dataset.name)
    _atomic_write_text(md, out / "table2.md")
    _atomic_csv(runs, out / "table2.csv")
    _atomic_csv(summarize(runs), out / "table2_summary.csv")
    bar_chart(runs, models, out / "table2.png",
              f"{ctx.dataset.name}: test AUC, base vs UDG ({len(seeds)} seed(s), ± std)")
    return {"markdown": md, "table": out / "table2.md", "csv": out / "table2.csv",
            "summary_csv": out / "table2_summary.csv", "png": out / "table2.png", "runs": runs}


# ---- Table 3 -----------------------------------------------------------------------------------

def table3_specs(models: Sequence[str], seeds: Sequence[int]) -> list[RunSpec]:
    return [RunSpec(m, v, s) for s in seeds for m in models for v in ("base", "emb2x", "udg")]


def table3_frame(runs: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    summ = summarize(runs).set_index(["model", "variant"])
    rows = []
    for m in models:
        row = {"model": m, "n": int(summ.loc[(m, "base"), "n"])}
        for v in ("base", "emb2x", "udg"):
            s = summ.loc[(m, v)]
            row[f"{v}_params"] = int(s["params"])
            row[f"{v}_auc_mean"], row[f"{v}_auc_std"] = s["auc_mean"], s["auc_std"]
        rows.append(row)
    return pd.DataFrame(rows)


def table3_markdown(frame: pd.DataFrame, dataset: str, embed_dims: dict) -> str:
    heads = ["model", "base params", "base AUC", "2× emb. params", "2× emb. AUC", "+ UDG params", "+ UDG AUC"]
    lines = ["| " + " | ".join(heads) + " |", "| --- | " + " | ".join(["---:"] * (len(heads) - 1)) + " |"]
    for _, r in frame.iterrows():
        cells = [model_label(r["model"])]
        for v in ("base", "emb2x", "udg"):
            cells += [f"{int(r[f'{v}_params']):,}", _pm(r[f"{v}_auc_mean"], r[f"{v}_auc_std"])]
        lines.append("| " + " | ".join(cells) + " |")
    dims = ", ".join(f"{model_label(m)} {a} → {b}" for m, (a, b) in embed_dims.items())
    n = int(frame["n"].min()) if len(frame) else 0
    return ("\n".join(lines) + "\n\n" + f"Test AUC on {dataset}, mean ± sample std over {n} seed(s). "
            f"2× emb.: the base model with twice the embedding size ({dims}); + UDG: the base embedding size "
            "with UDG's gate networks and user embedding.\n")


def run_table3(ctx: Context, seeds: Sequence[int]) -> dict:
    """Per model: parameters and test AUC of base, base with 2× embedding, base + UDG (reusing
    table2's base and UDG runs). Writes table3.md / table3.csv (+ table3_runs.csv, every run)."""
    from udg_fast.train import _atomic_write_text

    models = ctx.models
    rows = run_all_specs(ctx, table3_specs(models, seeds), "table3")
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    frame = table3_frame(runs, models)
    dims = {m: (ctx.hparams(m, "base").get("embed_dim", _default_dim(m)), ctx.hparams(m, "emb2x")["embed_dim"])
            for m in models}
    md = table3_markdown(frame, ctx.dataset.name, dims)
    out = ctx.setup.out_dir
    _atomic_write_text(md, out / "table3.md")
    _atomic_csv(frame, out / "table3.csv")
    _atomic_csv(runs, out / "table3_runs.csv")
    return {"markdown": md, "table": out / "table3.md", "csv": out / "table3.csv",
            "runs_csv": out / "table3_runs.csv", "frame": frame, "runs": runs}


def _default_dim(model: str) -> int:
    from udg_fast.models import hparam_defaults

    return int(hparam_defaults(model)["embed_dim"])
