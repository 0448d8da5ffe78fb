"""`experiment all`, the Table 5 hook, the run record and the report `DIR/README.md`.

Every experiment command records itself in `DIR/experiment.json` (its exact command, seeds,
models, wall time, runs trained and reused, the machine and the library versions); the report is
built from that record and the files present in `DIR`, so `udg-fast experiment report --out DIR`
rebuilds it at any time (e.g. after `table5/` was added) without training anything, and it links
only files that exist. A hand-written `DIR/NOTES.md`, if present, is embedded as the discussion.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

from udg_fast.experiments.runner import Context, ExperimentError, model_label

EXPERIMENTS = ("table2", "table3", "tsne", "table5")

#: The paper's MovieLens numbers for Tables 2 and 3, from /work/shared/notes/model-notes.md (the
#: project's only record of them). The notes hold none, so nothing is compared numerically and
#: the report says so; no number is typed in from memory.
PAPER_MOVIELENS: dict[str, Any] = {}


# ---- Table 5: the cold-start study of udg_fast.coldstart ------------------------------------

def run_table5(ctx: Context, seeds: Sequence[int]) -> dict:
    """The cold-start study (Table 5, Figure 4) of `udg_fast.coldstart`, into `out_dir/table5/`."""
    from udg_fast.coldstart import run_table5 as _run_table5  # at call time: tests substitute a fake

    s = ctx.setup
    res = _run_table5(dataset=s.dataset, models=list(ctx.models), out_dir=Path(s.out_dir) / "table5",
                      seeds=list(seeds), k=None, data_path=s.data_path, data_options=dict(s.data_options),
                      progress=s.progress)
    return dict(res or {})


# ---- the record --------------------------------------------------------------------------------

def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001 - not installed as a distribution
        try:
            return str(__import__(mod).__version__)
        except Exception:  # noqa: BLE001
            return "?"


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if out.returncode == 0 else "?"
    except Exception:  # noqa: BLE001
        return "?"


def environment() -> dict:
    """The machine and the versions that produced the results."""
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "torch_threads": torch.get_num_threads(), "load_average_at_start": load,
            "python": platform.python_version(), "torch": torch.__version__, "numpy": _version("numpy"),
            "pandas": _version("pandas"), "scikit-learn": _version("scikit-learn"),
            "matplotlib": _version("matplotlib"), "udg_fast_commit": _git_commit()}


def read_record(out_dir: Path) -> dict:
    path = Path(out_dir) / "experiment.json"
    if not path.is_file():
        return {"experiments": {}}
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"experiments": {}}
    rec.setdefault("experiments", {})
    return rec


def record(out_dir: Path, name: str, entry: dict, setup_doc: dict | None = None) -> dict:
    """Merge `entry` as experiment `name` into `out_dir/experiment.json` (atomically)."""
    from udg_fast.train import _atomic_write_text

    rec = read_record(out_dir)
    prev = rec["experiments"].get(name)
    if (prev and entry.get("runs_trained") == 0 and prev.get("runs_trained") and prev.get("status") == "done"
            and prev.get("seeds") == entry.get("seeds")
            and prev.get("models", entry.get("models")) == entry.get("models")
            and prev.get("runs_key") == entry.get("runs_key")):
        # the same runs again (same seeds, models, data, hyper-parameters and recipe), all reused:
        # keep the record of the command that trained them (its wall time), and note that the
        # files were regenerated
        entry = {**prev, "regenerated": {k: entry.get(k) for k in ("command", "started", "wall_seconds")}}
    rec["experiments"][name] = entry
    if setup_doc is not None:
        rec["setup"] = setup_doc
    _atomic_write_text(json.dumps(rec, indent=2, default=str) + "\n", Path(out_dir) / "experiment.json")
    return rec


def runs_key(ctx: Context) -> str:
    """A hash of what decides an experiment's runs besides seeds and models: the data, the
    hyper-parameters and the recipe (two commands with the same key trained the same runs)."""
    import hashlib

    doc = setup_doc(ctx)
    text = json.dumps({k: doc[k] for k in ("dataset", "data_key", "hparams", "train")}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def setup_doc(ctx: Context) -> dict:
    s = ctx.setup
    return {"dataset": ctx.dataset_info, "data_key": ctx.dataset.meta.get("key"),
            "models": list(ctx.models), "hparams": dict(s.hparams), "train": ctx.train_config.to_dict(),
            "threads": s.threads, "runs_dir": str(s.runs_dir),
            "dataset_stats": {k: ctx.dataset.stats.get(k) for k in ("users", "items", "samples", "positive_rate",
                                                                    "splits") if k in ctx.dataset.stats}}


def run_experiment(name: str, ctx: Context, seeds: Sequence[int], command: str, tsne_users=None) -> dict:
    """Run one experiment, timed, and record it. Returns the experiment's result dict."""
    from udg_fast.experiments.tables import run_table2, run_table3
    from udg_fast.experiments.tsne import run_tsne

    if name not in EXPERIMENTS:
        raise ExperimentError(f"unknown experiment {name!r} (experiments: {', '.join(EXPERIMENTS)}, all, report)")
    t0, trained0, reused0 = time.perf_counter(), ctx.trained, ctx.reused
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if name == "table2":
        res = run_table2(ctx, seeds)
    elif name == "table3":
        res = run_table3(ctx, seeds)
    elif name == "tsne":
        res = run_tsne(ctx, seeds=seeds, users=tsne_users)
    else:
        res = run_table5(ctx, seeds)
    if name == "table5" and res:  # the cold-start study pre-trains one model per model and seed itself
        ctx.trained += len(ctx.models) * len(seeds)
    entry = {"status": "done", "command": command, "seeds": list(seeds), "models": list(ctx.models),
             "started": started, "wall_seconds": round(time.perf_counter() - t0, 1),
             "runs_trained": ctx.trained - trained0, "runs_reused": ctx.reused - reused0,
             "runs_key": runs_key(ctx), "environment": environment()}
    record(ctx.setup.out_dir, name, entry, setup_doc(ctx))
    return res


def table5_blocker(ctx: Context) -> str | None:
    """Why the cold-start study cannot run on this context's dataset (no user-profile fields, or no
    new or active users at the default thresholds), or None when it can."""
    import udg_fast.coldstart  # at call time, as run_table5

    try:
        udg_fast.coldstart.check_study(ctx.dataset)
    except udg_fast.coldstart.ColdStartError as e:
        return str(e)
    return None


def run_all(ctx: Context, seeds: Sequence[int], command: str, tsne_users=None) -> dict:
    """table2, table3, tsne and table5, then the report. Table 5 is skipped — logged, recorded as
    "skipped: why" and said in the report — when the dataset cannot give it (asked before the first
    run, so that `all` on a dataset without user profiles still writes the other tables and the
    report instead of failing at its end)."""
    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    trained0 = ctx.trained
    out = {}
    blocker = table5_blocker(ctx)
    if blocker:
        ctx.log(f"table5 will be skipped: {blocker}")
    for name in EXPERIMENTS:
        ctx.log(f"==== experiment {name} ({EXPERIMENTS.index(name) + 1}/{len(EXPERIMENTS)}) ====")
        if name == "table5" and blocker:
            record(ctx.setup.out_dir, name, {"status": f"skipped: {blocker}", "command": command},
                   setup_doc(ctx))
            continue
        out[name] = run_experiment(name, ctx, seeds, command, tsne_users)
    record(ctx.setup.out_dir, "all", {"status": "done", "command": command, "seeds": list(seeds),
                                      "models": list(ctx.models), "started": started,
                                      "wall_seconds": round(time.perf_counter() - t0, 1),
                                      "runs_trained": ctx.trained - trained0, "runs_reused": ctx.reused,
                                      "runs_key": runs_key(ctx),
                                      "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                      "environment": environment()})
    out["report"] = write_report(ctx.setup.out_dir)
    return out


# ---- the report --------------------------------------------------------------------------------

def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base).replace(os.sep, "/")


def _link(path: Path, base: Path, text: str | None = None) -> str | None:
    """A markdown link to `path` if the file exists, else None."""
    if not path.is_file():
        return None
    r = _rel(path, base)
    return f"[{text or r}]({r})"


def _image(path: Path, base: Path, alt: str) -> str | None:
    return f"![{alt}]({_rel(path, base)})" if path.is_file() else None


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def _fmt_seconds(s) -> str:
    if s is None:
        return "–"
    s = float(s)
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def _table2_findings(out_dir: Path) -> list[str]:
    import pandas as pd

    from udg_fast.experiments.tables import summarize

    path = out_dir / "table2.csv"
    if not path.is_file():
        return []
    runs = pd.read_csv(path)
    summ = summarize(runs).set_index(["model", "variant"])
    models = list(dict.fromkeys(runs["model"]))
    lines, better, beyond = [], 0, 0
    for m in models:
        if (m, "base") not in summ.index or (m, "udg") not in summ.index:
            continue
        b, u = summ.loc[(m, "base")], summ.loc[(m, "udg")]
        d = u["auc_mean"] - b["auc_mean"]
        better += d > 0
        noise = max(b["auc_std"], u["auc_std"])
        beyond += abs(d) > noise and noise > 0
        bb = runs[(runs.model == m) & (runs.variant == "base")].set_index("seed")["auc"]
        uu = runs[(runs.model == m) & (runs.variant == "udg")].set_index("seed")["auc"]
        c = bb.index.intersection(uu.index)
        diffs = (uu[c] - bb[c])
        ll = u["logloss_mean"] - b["logloss_mean"]
        lines.append(f"- {model_label(m)}: UDG − base test AUC {d:+.4f} (per seed {diffs.min():+.4f} … "
                     f"{diffs.max():+.4f}, higher in {int((diffs > 0).sum())} of {len(c)} seeds; std base "
                     f"{b['auc_std']:.4f}, UDG {u['auc_std']:.4f}); Log Loss {ll:+.4f}.")
    n = int(runs.groupby(["model", "variant"]).size().min())
    head = (f"Computed from table2.csv: UDG's mean test AUC is higher than the base model's for {better} of "
            f"{len(lines)} models; for {beyond} of them the difference exceeds the larger of the two seed "
            f"standard deviations ({n} seeds).")
    return [head, ""] + lines


def _table3_findings(out_dir: Path) -> list[str]:
    import pandas as pd

    path = out_dir / "table3.csv"
    if not path.is_file():
        return []
    f = pd.read_csv(path)
    lines = []
    for _, r in f.iterrows():
        d_udg = r["udg_auc_mean"] - r["base_auc_mean"]
        d_emb = r["emb2x_auc_mean"] - r["base_auc_mean"]
        lines.append(f"- {model_label(r['model'])}: + UDG {d_udg:+.4f} AUC for {int(r['udg_params'] - r['base_params']):,} "
                     f"extra parameters; 2× embedding {d_emb:+.4f} for {int(r['emb2x_params'] - r['base_params']):,}; "
                     f"UDG − 2× emb. {r['udg_auc_mean'] - r['emb2x_auc_mean']:+.4f}.")
    wins = int((f["udg_auc_mean"] > f["emb2x_auc_mean"]).sum())
    return [f"Computed from table3.csv: + UDG beats the doubled embedding in mean test AUC for {wins} of "
            f"{len(f)} models.", ""] + lines


def write_report(out_dir: Path) -> Path:
    """Write `out_dir/README.md` from experiment.json and the files present; returns its path."""
    from udg_fast.train import _atomic_write_text

    out_dir = Path(out_dir)
    rec = read_record(out_dir)
    exps = rec.get("experiments", {})
    setup = rec.get("setup", {})
    ds = (setup.get("dataset") or {}).get("name", out_dir.name)
    L: list[str] = [f"# UDG experiments on {ds}", ""]
    L += ["This report is generated by `udg-fast experiment` (docs/experiments.md) from `experiment.json` and "
          "the files in this folder; `udg-fast experiment report --out <this folder>` rebuilds it without "
          "training. Per-run outputs (checkpoints, per-run metrics) stay in the run store, outside git.", ""]

    # how it was produced
    L += ["## How these results were produced", ""]
    if exps:
        L += ["| experiment | status | wall time | runs trained / reused | command |", "| --- | --- | ---: | ---: | --- |"]
        for name in ("all", *EXPERIMENTS):
            e = exps.get(name)
            if not e:
                continue
            ran = (f"{e.get('runs_trained', '–')} / {e.get('runs_reused', '–')}" if "runs_trained" in e else "–")
            cmd = e.get("command", "?")
            shown = "(part of `all`)" if name != "all" and cmd == exps.get("all", {}).get("command") else f"`{cmd}`"
            L.append(f"| {name} | {e.get('status', '?')} | {_fmt_seconds(e.get('wall_seconds'))} | {ran} | {shown} |")
        L.append("")
        L.append("Wall time of a command that reused finished runs covers only what it trained itself.")
        regen = [(n, e["regenerated"]) for n, e in exps.items() if e.get("regenerated")]
        for n, r in regen:
            L.append(f"{n}: files regenerated from the same (reused) runs on {r.get('started') or '?'} by "
                     f"`{r.get('command')}` ({_fmt_seconds(r.get('wall_seconds'))}).")
        L.append("")
    if setup:
        tr = setup.get("train", {})
        seeds = next((e.get("seeds") for e in exps.values() if e.get("seeds")), None)
        L += [f"- Dataset: `{ds}`, options `{json.dumps((setup.get('dataset') or {}).get('options', {}))}`"
              + (f", path `{setup['dataset']['path']}`" if (setup.get('dataset') or {}).get('path') else "")
              + f" (cache key `{setup.get('data_key')}`).",
              f"- Seeds: {seeds} — seed s seeds the model's initialisation (`train.set_seed(s)` before "
              f"`models.build`) and the shuffling (`TrainConfig(seed=s)`); base and UDG runs of one seed start "
              "from the same shared weights and see the same batches.",
              f"- Models: {', '.join(model_label(m) for m in setup.get('models', []))}; hyper-parameters "
              f"`{json.dumps(setup.get('hparams', {}))}` over the defaults of docs/models.md.",
              f"- Training (`udg_fast.train.TrainConfig`): epochs {tr.get('epochs')}, batch {tr.get('batch_size')}, "
              f"Adam lr {tr.get('lr')} × {tr.get('lr_decay')} per epoch, weight decay {tr.get('weight_decay')}, "
              f"early-stopping patience {tr.get('patience')} on valid AUC, device {tr.get('device')}; "
              f"torch threads {setup.get('threads') or 'default'}. The best epoch by valid AUC is evaluated on test."]
        st = setup.get("dataset_stats") or {}
        if st:
            sp = st.get("splits") or {}
            parts = [f"{k} {v['samples']:,} samples, positive rate {v['positive_rate']:.3f}" for k, v in sp.items()
                     if isinstance(v, dict) and "samples" in v and "positive_rate" in v]
            L += [f"- Data: {st.get('users', '?')} users, {st.get('items', '?')} items, {st.get('samples', '?')} samples"
                  + (f"; {'; '.join(parts)}" if parts else "") + "."]
        L += [""]
    env = next((e.get("environment") for e in (exps.get("all"), exps.get("table2")) if e and e.get("environment")),
               None)
    if env:
        L += ["Machine and versions: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".", ""]

    # Table 2
    L += ["## Table 2: every base model with and without UDG", ""]
    t2 = _read(out_dir / "table2.md")
    if t2:
        L += [t2, ""]
        img = _image(out_dir / "table2.png", out_dir, "Figure 2: test AUC, base vs UDG")
        if img:
            L += [img, "", "Figure 2 style: mean test AUC with ±1 std error bars (the y axis does not start at 0).", ""]
        links = [x for x in (_link(out_dir / "table2.csv", out_dir, "every run (CSV)"),
                             _link(out_dir / "table2_summary.csv", out_dir, "summary (CSV)")) if x]
        if links:
            L += ["Data: " + ", ".join(links) + ".", ""]
        L += _table2_findings(out_dir) + [""]
    else:
        L += ["Not run (`udg-fast experiment table2`).", ""]

    L += ["### Against the paper", ""]
    if PAPER_MOVIELENS:
        L += ["(paper numbers)", ""]
    else:
        L += ["The project's notes (`/work/shared/notes/model-notes.md`, README, docs/models.md) do not record the "
              "paper's MovieLens values of Tables 2 and 3, so no paper number is quoted here: a number typed in "
              "from memory could be wrong. What can be compared is the paper's *claim* — UDG improves every base "
              "model's AUC, Log Loss and RIG, and the gain is not explained by parameter count — and the findings "
              "above and below say, model by model, whether our runs support it. Note also that the protocols "
              "differ: this project's ml-100k split is per user 80/10/10 by time, label rating > 3 (docs/data.md), "
              "not necessarily the paper's preprocessing, so absolute values are not comparable anyway.", ""]

    # Table 3
    L += ["## Table 3: more parameters or UDG?", ""]
    t3 = _read(out_dir / "table3.md")
    if t3:
        L += [t3, ""]
        links = [x for x in (_link(out_dir / "table3.csv", out_dir, "summary (CSV)"),
                             _link(out_dir / "table3_runs.csv", out_dir, "every run (CSV)")) if x]
        if links:
            L += ["Data: " + ", ".join(links) + ".", ""]
        L += _table3_findings(out_dir) + [""]
    else:
        L += ["Not run (`udg-fast experiment table3`).", ""]

    # Figure 3
    L += ["## Figure 3: t-SNE of the penultimate layer, PNN vs PNN + UDG", ""]
    ts = _read(out_dir / "tsne.md")
    if ts:
        img = _image(out_dir / "tsne.png", out_dir, "Figure 3: t-SNE of PNN and PNN + UDG")
        L += ([img, ""] if img else []) + [ts, ""]
        lk = _link(out_dir / "tsne.json", out_dir, "tsne.json")
        if lk:
            L += [f"Numbers: {lk}. The penultimate output is the output layer's input (gated under UDG, Eq. 7). "
                  "Two users' test samples are few points: read the silhouette scores with their spread over "
                  "the seeds.", ""]
    else:
        L += ["Not run (`udg-fast experiment tsne`).", ""]

    # Table 5
    L += ["## Table 5 / Figure 4: cold start", ""]
    t5dir = out_dir / "table5"
    t5 = _read(t5dir / "table5.md")
    e5 = exps.get("table5", {})
    if t5:
        if e5.get("status") != "done":
            L += ["Produced separately by the cold-start study (`udg-fast experiment table5`), not by the command "
                  "recorded above.", ""]
        cfg = {}
        try:
            cfg = json.loads((t5dir / "table5.json").read_text()).get("config") or {}
        except (OSError, ValueError):
            pass
        recipe = ", ".join(f"{k} {cfg[k]}" for k in ("pre_epochs", "meta_steps", "warm_lr") if k in cfg)
        L += ["The cold-start study trains with its own recipe" + (f" ({recipe}; model hyper-parameters "
              f"{json.dumps(cfg.get('hparams') or {})} over the defaults)" if cfg else "")
              + ", not the hyper-parameters and training options of the setup above "
              "(docs/coldstart.md).", "", t5, ""]
        img = _image(t5dir / "figure4.png", out_dir, "Figure 4: cold start")
        if img:
            L += [img, ""]
        lk = _link(t5dir / "table5.csv", out_dir, "table5/table5.csv")
        if lk:
            L += [f"Data: {lk}.", ""]
    else:
        status = e5.get("status", "not run")
        L += [f"Table 5 is {status}." if status.startswith("not") else f"Table 5: {status}.",
              "`udg-fast experiment table5` writes it into table5/; for other thresholds, "
              "`udg-fast coldstart --dataset … --lower L --upper U --out DIR/table5`, then "
              "`udg-fast experiment report --out DIR`.", ""]

    notes = _read(out_dir / "NOTES.md")
    if notes:
        L += ["## Discussion", "", notes, ""]
    path = out_dir / "README.md"
    _atomic_write_text("\n".join(L).rstrip() + "\n", path)
    return path
