"""The cold-start study: the UDG paper's Table 5 and Figure 4.

For every model asked for (with UDG) and every seed:

1. users split by their number of samples n: *active* (n > upper) and *new* (lower ≤ n ≤ upper);
   each new user's samples in time order → batch-a, batch-b, batch-c (K each) and the rest,
   held out; the held-out samples of all new users are the test set (`udg_fast.coldstart.split`);
2. pre-train the model on the active users' samples (the authors' recipe: Adam, batch 256,
   lr halved every epoch), then the generator f_meta on the same samples (Algorithm 1);
3. cold-start phase: the new users' E^UDG rows get the *random* initialisation (the table's own
   N(0, std²)) or the *meta* one (f_meta of their profile), `CTRModel.init_new_users`; test;
4. warm-up phases a, b, c: starting from each initialisation (two copies of the same pre-trained
   model), one pass of Adam over batch-a (all the model's parameters, the new users' rows
   included), test; then batch-b, test; then batch-c, test. One optimiser per copy carries its
   state through a → b → c; both copies see the same batches in the same order.

Output: AUC and Log Loss of every phase (mean ± std over seeds), relative to the first column
(cold-start, random initialisation), as `table5.md`, `table5.csv`, `figure4.png` (and
`table5.json` with every number and the configuration), each written atomically.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from udg_fast import data as _data
from udg_fast import metrics as _metrics
from udg_fast.coldstart.generator import ColdStartError, MetaGenerator, require_profiles, user_profiles
from udg_fast.coldstart.meta import MetaConfig, train_generator
from udg_fast.coldstart.split import merge_splits, phase_split, resolve_thresholds, split_halves, split_users
from udg_fast.train import require_positive_ints

PHASES = ("cold", "a", "b", "c")
PHASE_NAMES = {"cold": "cold-start", "a": "warm-up a", "b": "warm-up b", "c": "warm-up c"}
INITS = ("random", "meta")
MODEL_LABELS = {"pnn": "PNN", "deepfm": "DeepFM", "wdl": "W&D", "din": "DIN", "dien": "DIEN"}


@dataclasses.dataclass
class StudyConfig:
    """The training options of the study (`run_table5(..., **training_overrides)` sets them).

    Pre-training (on the active users): `pre_epochs` 3, `batch_size` 256, `lr` 1e-3, `lr_decay`
    0.5 (the authors' recipe), `hparams` (model hyper-parameters, e.g. {"gate_scale": 2.0}).
    Generator (Algorithm 1, `MetaConfig`): `meta_steps` 300, `meta_alpha` α 2.0, `meta_lr` β 1e-2
    (Adam; `meta_optimizer="sgd"` for the plain step), `meta_gamma` γ 0.1, `meta_users` 32 users ×
    `meta_samples` 8 rows per minibatch, `first_order` False.
    Warm-up: `warm_lr` 1e-3 (Adam), `warm_batch_size` 256, `warm_epochs` 1 pass per phase.
    `eval_batch_size` 8192, `device` "auto".
    `profile_in_model` True: the model reads the profile fields as usual; False builds it on a
    schema whose profile fields are hidden (role "meta"), so a new user's profile reaches its
    predictions only through f_meta (the synthetic test uses this to isolate the generator).
    """

    pre_epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    lr_decay: float = 0.5
    hparams: dict = dataclasses.field(default_factory=dict)
    meta_steps: int = 300
    meta_alpha: float = 2.0
    meta_lr: float = 1e-2
    meta_gamma: float = 0.1
    meta_users: int = 32
    meta_samples: int = 8
    meta_optimizer: str = "adam"
    first_order: bool = False
    warm_lr: float = 1e-3
    warm_batch_size: int = 256
    warm_epochs: int = 1
    eval_batch_size: int = 8192
    device: str = "auto"
    profile_in_model: bool = True

    def __post_init__(self):
        require_positive_ints(self, ("pre_epochs", "batch_size", "warm_batch_size", "warm_epochs", "eval_batch_size"),
                              ColdStartError)
        for k in ("lr", "warm_lr"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ColdStartError(f"{k} must be a positive number, got {v!r}")
        if not isinstance(self.hparams, Mapping):
            raise ColdStartError(f"hparams must be a dict of model hyper-parameters, got {self.hparams!r}")
        self.meta_config(0)  # checks the generator's options

    def meta_config(self, seed: int, progress: bool | None = None) -> MetaConfig:
        return MetaConfig(alpha=self.meta_alpha, lr=self.meta_lr, gamma=self.meta_gamma,
                          users_per_batch=self.meta_users, samples_per_user=self.meta_samples,
                          steps=self.meta_steps, first_order=self.first_order, optimizer=self.meta_optimizer,
                          seed=seed, progress=progress)

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> "StudyConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - names)
        if bad:
            raise ColdStartError(f"unknown training option(s) {', '.join(map(repr, bad))} "
                                 f"(valid: {', '.join(sorted(names))})")
        return cls(**overrides)


# ---- data --------------------------------------------------------------------------------------

@dataclasses.dataclass
class StudyData:
    """Everything the study reads, prepared once for all models and seeds."""

    dataset: _data.Dataset
    merged: _data.Split
    active: _data.Split          # the active users' samples (pre-training and meta-training)
    phases: dict                 # "a", "b", "c", "held_out" → Split
    new_users: np.ndarray
    new_profiles: torch.Tensor   # [n_new, F]
    counts: dict


def _checked_users(dataset: _data.Dataset, lower: int, upper: int):
    """(merged split, user split) of `dataset`; ColdStartError when it has no profile fields or the
    thresholds leave no active or no new users."""
    require_profiles(dataset.schema, repr(dataset.name))
    merged = merge_splits(dataset)
    us = split_users(merged, lower, upper)
    _check_split(dataset.name, len(us.new_users), len(us.active_users), lower, upper)
    return merged, us


def check_study(dataset: _data.Dataset, k: int | None = None, lower: int | None = None,
                upper: int | None = None) -> None:
    """Raise ColdStartError when the study cannot run on `dataset` with these thresholds (no
    profile fields; no new or no active users), without preparing or training anything —
    `udg-fast experiment all` asks this before its first run. It counts samples per user from the
    user_id columns alone (merging the splits, as the study does, copies every history matrix)."""
    _, lower, upper = resolve_thresholds(k, lower, upper)
    require_profiles(dataset.schema, repr(dataset.name))
    ids = [np.asarray(sp["user_id"]) for sp in (dataset.train, dataset.valid, dataset.test) if len(sp)]
    if not ids:
        raise ColdStartError(f"{dataset.name}: the dataset has no samples")
    count = np.bincount(np.concatenate(ids))
    count = count[count > 0]
    _check_split(dataset.name, int(((count >= lower) & (count <= upper)).sum()), int((count > upper).sum()),
                 lower, upper)


def _check_split(name, n_new: int, n_active: int, lower: int, upper: int) -> None:
    if n_new == 0:
        raise ColdStartError(f"{name}: no user has between lower = {lower} and upper = {upper} samples; "
                             f"change --lower / --upper")
    if n_active == 0:
        raise ColdStartError(f"{name}: no user has more than upper = {upper} samples to pre-train on; "
                             f"lower --upper")


def prepare_study_data(dataset: _data.Dataset, k: int, lower: int, upper: int) -> StudyData:
    """Split `dataset` for the study (see the module docstring); raises ColdStartError when the
    thresholds leave no active or no new users."""
    merged, us = _checked_users(dataset, lower, upper)
    ph = phase_split(merged, us.new_users, k)
    active = merged.select(us.active_rows)
    active.name = "active"
    phases = {}
    for name, rows in ph.as_dict().items():
        phases[name] = merged.select(rows)
        phases[name].name = name
    profiles = user_profiles(merged, dataset.schema)[torch.from_numpy(us.new_users)]
    held = phases["held_out"]
    counts = {
        "dataset": dataset.name, "users": int(len(np.unique(merged["user_id"]))),
        "k": k, "lower": lower, "upper": upper,
        "active_users": int(len(us.active_users)), "active_samples": int(len(active)),
        "new_users": int(len(us.new_users)), "excluded_users": us.excluded_users,
        "batch_a_samples": int(len(phases["a"])), "batch_b_samples": int(len(phases["b"])),
        "batch_c_samples": int(len(phases["c"])), "test_samples": int(len(held)),
        "test_positive_rate": float(np.asarray(held["label"]).mean()) if len(held) else float("nan"),
    }
    return StudyData(dataset, merged, active, phases, us.new_users, profiles, counts)


def format_counts(c: Mapping) -> str:
    return (f"{c['dataset']}: {c['users']} users; active (n > {c['upper']}): {c['active_users']} users, "
            f"{c['active_samples']} samples; new ({c['lower']} ≤ n ≤ {c['upper']}): {c['new_users']} users; "
            f"{c['excluded_users']} users with n < {c['lower']} left out; K = {c['k']}: batch-a/b/c "
            f"{c['batch_a_samples']}/{c['batch_b_samples']}/{c['batch_c_samples']} samples, test (held out) "
            f"{c['test_samples']} samples (positive rate {c['test_positive_rate']:.3f})")


# ---- one model, one seed ----------------------------------------------------------------------

def hide_profiles(schema: _data.Schema) -> _data.Schema:
    """`schema` with its profile fields turned into role "meta": a model built on it reads no
    profile (the columns stay in the data for the generator)."""
    return _data.Schema([dataclasses.replace(f, role="meta") if f.role == "profile" else f for f in schema],
                        schema.max_len)


def _evaluate(model, split, cfg: StudyConfig, progress) -> dict[str, float]:
    from udg_fast import train

    probs = train.predict(model, split, cfg.eval_batch_size, progress=progress)
    m = _metrics.evaluate(torch.from_numpy(np.asarray(split["label"])), probs)
    return {"auc": m["auc"], "logloss": m["logloss"]}


def _warm_up(model, opt, split, cfg: StudyConfig, seed: int, desc: str, progress) -> float:
    """One (or `warm_epochs`) Adam pass over `split` updating every parameter; mean training loss."""
    from udg_fast import train

    device = next(model.parameters()).device
    fields = [f for f in model.required_fields(training=True) if f in split]
    model.train()
    total, n = 0.0, 0
    bar = train._bar(split.num_batches(cfg.warm_batch_size) * cfg.warm_epochs, desc, progress)
    try:
        for ep in range(cfg.warm_epochs):
            for batch in split.batches(cfg.warm_batch_size, shuffle=True, seed=seed * 1_000_003 + ep, fields=fields,
                                       device=device if device.type != "cpu" else None):
                loss, logits = model.loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(logits)
                n += len(logits)
                bar.update(1)
    finally:
        bar.close()
    return total / max(n, 1)


def run_one(sd: StudyData, model_name: str, seed: int, cfg: StudyConfig, progress: bool | None = None,
            log: Callable[[str], None] | None = None) -> dict:
    """Pre-train `model_name` (+UDG) and the generator on the active users, then the cold-start and
    warm-up phases for both initialisations. Returns {"random"|"meta": {phase: {"auc", "logloss"}},
    "seconds": {...}, "meta_train": {...}}."""
    from udg_fast import models, train

    log = log or (lambda s: None)
    t0 = time.perf_counter()
    schema = sd.dataset.schema if cfg.profile_in_model else hide_profiles(sd.dataset.schema)
    train.set_seed(seed)
    model = models.build(model_name, schema, udg=True, **cfg.hparams)
    pre = _data.Dataset(f"{sd.dataset.name}-active", schema, sd.active, sd.active.select(slice(0, 0)),
                        sd.active.select(slice(0, 0)), meta=dict(sd.dataset.meta))
    tc = train.TrainConfig(epochs=cfg.pre_epochs, batch_size=cfg.batch_size, lr=cfg.lr, lr_decay=cfg.lr_decay,
                           patience=0, seed=seed, device=cfg.device, progress=progress)
    fit = train.fit(model, pre, tc, log=lambda s: log(f"  pre-train {model_name}+udg seed {seed}: {s}"))
    t1 = time.perf_counter()

    torch.manual_seed(seed)
    gen = MetaGenerator(sd.dataset.schema, model.udg_dim)   # reads the profile even when the model does not
    halves = split_halves(sd.active)
    meta_hist = train_generator(model, gen, sd.active, cfg.meta_config(seed, progress), halves=halves,
                                log=lambda s: log(f"  {model_name} seed {seed}: {s}"))
    gen.eval()
    t2 = time.perf_counter()

    out: dict[str, Any] = {}
    for init in INITS:
        m = copy.deepcopy(model)
        with torch.no_grad():
            m.init_new_users(sd.new_users, sd.new_profiles, generator=gen if init == "meta" else None, seed=seed)
        res = {"cold": _evaluate(m, sd.phases["held_out"], cfg, progress)}
        opt = torch.optim.Adam(m.parameters(), lr=cfg.warm_lr)
        for i, ph in enumerate(("a", "b", "c")):
            _warm_up(m, opt, sd.phases[ph], cfg, seed * 10 + i, f"warm-up {ph} ({init} init)", progress)
            res[ph] = _evaluate(m, sd.phases["held_out"], cfg, progress)
        out[init] = res
        log(f"  {model_name} seed {seed} {init:>6}: AUC " +
            "  ".join(f"{p} {res[p]['auc']:.4f}" for p in PHASES))
    t3 = time.perf_counter()
    out["seconds"] = {"pretrain": t1 - t0, "generator": t2 - t1, "phases": t3 - t2, "total": t3 - t0}
    out["pretrain_loss"] = [h["train_loss"] for h in fit["history"]]
    out["meta_train"] = {k: meta_hist[k] for k in ("seconds", "users", "rows_a", "rows_b")}
    out["meta_train"]["inner_step_last"] = float(np.mean(meta_hist["inner_step"][-20:]))
    out["meta_train"]["loss_meta_first_last"] = [float(np.mean(meta_hist["loss_meta"][:20])),
                                                 float(np.mean(meta_hist["loss_meta"][-20:]))]
    return out


# ---- tables and figure -------------------------------------------------------------------------

def summarize(runs: Mapping[str, Sequence[dict]]) -> list[dict]:
    """Rows (model, init, phase) with the mean and std over seeds and the change relative to the
    model's cold-start / random-init mean (AUC: (x / x₀ − 1)·100 %; Log Loss likewise, so negative
    is better)."""
    rows = []
    for model, seeds in runs.items():
        base = {m: float(np.mean([s["random"]["cold"][m] for s in seeds])) for m in ("auc", "logloss")}
        for init in INITS:
            for ph in PHASES:
                row = {"model": model, "init": init, "phase": ph, "seeds": len(seeds)}
                for m in ("auc", "logloss"):
                    v = np.array([s[init][ph][m] for s in seeds], dtype=np.float64)
                    row[f"{m}_mean"] = float(v.mean())
                    row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
                    row[f"{m}_rel_pct"] = 100.0 * (row[f"{m}_mean"] / base[m] - 1.0)
                    row[f"{m}_per_seed"] = " ".join(f"{x:.4f}" for x in v)
                rows.append(row)
    return rows


def _cell(r: dict, m: str) -> str:
    std = "" if math.isnan(r[f"{m}_std"]) else f" ± {r[f'{m}_std']:.4f}"
    if r["init"] == "random" and r["phase"] == "cold":
        return f"**{r[f'{m}_mean']:.4f}**{std}"
    return f"{r[f'{m}_rel_pct']:+.2f}% ({r[f'{m}_mean']:.4f}{std})"


def format_markdown(rows: list[dict], counts: Mapping, seeds: Sequence[int], title: str | None = None) -> str:
    """The paper's Table 5 layout: per metric, one row per model × initialisation, one column per
    phase; the first cell (cold-start, random init) absolute, the others relative to it."""
    lines = [title or f"# Table 5: cold start on {counts['dataset']} (UDG models, seeds {', '.join(map(str, seeds))})",
             "", format_counts(counts) + ".", ""]
    for m, name, better in (("auc", "AUC", "higher is better"), ("logloss", "Log Loss", "lower is better")):
        lines += [f"## {name} ({better}); relative to cold-start, random init (bold); mean ± std over "
                  f"{len(seeds)} seed(s)", "",
                  "| model | init | " + " | ".join(PHASE_NAMES[p] for p in PHASES) + " |",
                  "| --- | --- | " + " | ".join("---:" for _ in PHASES) + " |"]
        models = list(dict.fromkeys(r["model"] for r in rows))
        for model in models:
            for init in INITS:
                cells = [_cell(r, m) for p in PHASES for r in rows
                         if r["model"] == model and r["init"] == init and r["phase"] == p]
                lines.append(f"| {MODEL_LABELS.get(model, model)} + UDG | {init} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def format_csv(rows: list[dict]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_csv(index=False, float_format="%.6f")


def figure_png(rows: list[dict], counts: Mapping) -> bytes:
    """Figure 4 style: AUC per phase, meta vs random initialisation, one panel per model
    (mean over seeds, error bars = std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.4), squeeze=False)
    x = np.arange(len(PHASES))
    for ax, model in zip(axes[0], models):
        for init, style in (("random", dict(marker="o", linestyle="--", color="tab:gray")),
                            ("meta", dict(marker="s", linestyle="-", color="tab:red"))):
            rs = [next(r for r in rows if r["model"] == model and r["init"] == init and r["phase"] == p)
                  for p in PHASES]
            y = [r["auc_mean"] for r in rs]
            err = [0.0 if math.isnan(r["auc_std"]) else r["auc_std"] for r in rs]
            ax.errorbar(x, y, yerr=err, capsize=3, label=f"{init} init", **style)
        ax.set_xticks(x, [PHASE_NAMES[p].replace("warm-up ", "warm-") for p in PHASES])
        ax.set_title(f"{MODEL_LABELS.get(model, model)} + UDG")
        ax.set_ylabel("test AUC (new users' held-out samples)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Cold start on {counts['dataset']}: {counts['new_users']} new users, K = {counts['k']}",
                 fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def _atomic_bytes(data: bytes, path: Path) -> None:
    from udg_fast.data.cache import atomic_write_bytes

    atomic_write_bytes(Path(path), lambda f: f.write(data))


# ---- the entry point ---------------------------------------------------------------------------

def _parse_models(models) -> list[str]:
    from udg_fast.models import MODELS

    if isinstance(models, str):
        models = [m for m in models.replace(" ", "").split(",") if m]
    models = [str(m).lower() for m in (models or [])]
    if not models:
        raise ColdStartError("models: give at least one model (e.g. pnn,deepfm)")
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise ColdStartError(f"models: unknown model(s) {bad} (models: {', '.join(MODELS)})")
    if len(set(models)) != len(models):
        raise ColdStartError(f"models: {models} names a model twice")
    return models


def _parse_seeds(seeds) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ColdStartError(f"seeds must be >= 1 (the number of seeds) or a list of seeds, got {seeds!r}")
        return list(range(int(seeds)))
    try:
        out = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise ColdStartError(f"seeds must be a number of seeds or a list of ints, got {seeds!r}") from None
    if not out or any(s < 0 for s in out) or len(set(out)) != len(out):
        raise ColdStartError(f"seeds must be distinct ints >= 0, got {seeds!r}")
    return out


def run_table5(dataset: str = "ml-100k", models: Sequence[str] | str = ("pnn", "deepfm"), out_dir=None, *,
               seeds: int | Sequence[int] = 3, k: int | None = None, lower: int | None = None,
               upper: int | None = None, data_path=None, data_options: Mapping | None = None,
               progress: bool | None = None, log: Callable[[str], None] | None = None,
               **training_overrides) -> dict:
    """Run the cold-start study (Table 5, Figure 4) and write its outputs.

    Args:
        dataset: a `udg_fast.data` dataset name with user-profile fields (ml-100k, ml-1m, synthetic…).
        models: model names (with UDG), a list or "pnn,deepfm".
        out_dir: where `table5.md`, `table5.csv`, `figure4.png` and `table5.json` are written
            (atomically; default runs/coldstart-DATASET).
        seeds: the number of seeds (0..n−1) or a list of seeds.
        k: K, the size of batch-a, -b, -c (default 10; the paper's 20).
        lower, upper: new users have lower ≤ n ≤ upper samples, active users n > upper
            (defaults 4K and 100; the paper's new users 80–100 with K = 20).
        data_path, data_options: passed to `udg_fast.data.load`.
        progress: tqdm bars on every phase (None: only when stderr is a terminal).
        log: called with progress lines (default: stderr).
        **training_overrides: `StudyConfig` fields (pre_epochs, meta_steps, meta_alpha, warm_lr,
            hparams, …).

    Returns:
        {"markdown": str, "csv": Path, "table": Path, "png": Path, "json": Path,
         "counts": {...}, "rows": [...], "seconds": float}.

    Raises:
        ColdStartError (a ValueError) for bad arguments or a dataset without profile fields, and
        `udg_fast.data.DataError` for data problems — always before any training.
    """
    t0 = time.perf_counter()
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    model_names = _parse_models(models)
    seed_list = _parse_seeds(seeds)
    cfg = StudyConfig.from_overrides(training_overrides)
    k, lower, upper = resolve_thresholds(k, lower, upper)
    from udg_fast import models as _models

    for m in model_names:  # unknown hyper-parameters raise here, before any data or training
        _models.MODELS[m].resolve_hparams(cfg.hparams)
    out = Path(out_dir) if out_dir is not None else Path(f"runs/coldstart-{dataset}")
    ds = _data.load(dataset, data_path, progress=progress, **dict(data_options or {}))
    require_profiles(ds.schema, repr(ds.name))
    sd = prepare_study_data(ds, k, lower, upper)
    log(format_counts(sd.counts))

    runs: dict[str, list[dict]] = {}
    for model in model_names:
        runs[model] = []
        for seed in seed_list:
            runs[model].append(run_one(sd, model, seed, cfg, progress, log))
    rows = summarize(runs)
    md = format_markdown(rows, sd.counts, seed_list)
    seconds = time.perf_counter() - t0
    from udg_fast.train import _atomic_write_text, to_json

    paths = {"table": out / "table5.md", "csv": out / "table5.csv", "png": out / "figure4.png",
             "json": out / "table5.json"}
    _atomic_write_text(md, paths["table"])
    _atomic_write_text(format_csv(rows), paths["csv"])
    _atomic_bytes(figure_png(rows, sd.counts), paths["png"])
    doc = {"dataset": dataset, "data_options": dict(data_options or {}), "models": model_names, "seeds": seed_list,
           "counts": sd.counts, "config": dataclasses.asdict(cfg), "rows": rows,
           "runs": {m: [{k2: v for k2, v in r.items()} for r in rs] for m, rs in runs.items()},
           "seconds": seconds, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "machine": platform.machine(), "python": platform.python_version()}
    _atomic_write_text(to_json(doc), paths["json"])
    return {"markdown": md, **paths, "counts": sd.counts, "rows": rows, "seconds": seconds}
