"""The run store shared by every experiment: one training run = (model, variant, seed).

    >>> setup = Setup("ml-100k", out_dir=Path("docs/results/ml-100k"), threads=1)
    >>> ctx = Context(setup)                        # loads the dataset once
    >>> row = ctx.run(RunSpec("din", "udg", seed=0), label="table2 [1/10]")
    >>> row["auc"], row["params"]

A run is trained through `udg_fast.train.fit` into `RUNS/<model>-<variant>-seed<S>-<key>/`, where
`<key>` hashes everything that changes the result (dataset, its options and path, the model's
resolved hyper-parameters, the training recipe, the seed). A run whose `metrics.json` exists is
**reused**, so an interrupted experiment continues where it stopped, and `table3` / `tsne` reuse
the base and UDG runs of `table2`. A run interrupted mid-training continues from its `last.pt`
(bit-identical to an uninterrupted run, `fit(resume=…)`).

Variants: `base` (the base model), `udg` (base + UDG), `emb2x` (the base model with twice the
embedding size: Table 3's control for "UDG is just more parameters").
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

VARIANTS = ("base", "udg", "emb2x")
#: label of each variant in tables and figures
VARIANT_LABELS = {"base": "", "udg": " + UDG", "emb2x": " (2× emb.)"}
MODEL_LABELS = {"pnn": "PNN", "deepfm": "DeepFM", "wdl": "W&D", "din": "DIN", "dien": "DIEN"}
#: options of TrainConfig that do not change a run's result (left out of its key)
_NOT_IN_KEY = ("progress", "eval_batch_size")


class ExperimentError(ValueError):
    """Bad experiment input (an unknown experiment, model or option): raised before any training."""


def model_label(model: str, variant: str = "base") -> str:
    return MODEL_LABELS.get(model, model) + VARIANT_LABELS[variant]


@dataclasses.dataclass
class RunSpec:
    model: str
    variant: str  # one of VARIANTS
    seed: int

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ExperimentError(f"variant must be one of {VARIANTS}, got {self.variant!r}")


@dataclasses.dataclass
class Setup:
    """Everything an experiment command needs besides its own options.

    Attributes:
        dataset: a dataset name of `udg_fast.data.available()` (ml-100k, synthetic, …), or the
            path of its raw files when their name starts with the dataset's (ml-1m.zip).
        out_dir: where the tables, figures and the report go.
        data_path: the raw files for datasets that need them (a zip or a folder).
        data_options: dataset options (`max_len`, `n_users` for synthetic, …).
        hparams: hyper-parameters for every model (those a model does not take are skipped for
            it; one that no model takes is an error).
        train: `udg_fast.train.TrainConfig` options (default: the authors' recipe).
        runs_dir: the run store (default `out_dir/runs`, ignored by git).
        threads: torch CPU threads (None: torch's choice; 1 is faster on a busy machine).
        progress: tqdm bars per run (None: only on a terminal).
        log: where status lines go (default stderr).
    """

    dataset: str
    out_dir: Path
    data_path: str | None = None
    data_options: dict = dataclasses.field(default_factory=dict)
    hparams: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)
    runs_dir: Path | None = None
    threads: int | None = None
    progress: bool | None = None
    log: Callable[[str], None] | None = None

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.runs_dir = Path(self.runs_dir) if self.runs_dir is not None else self.out_dir / "runs"
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ExperimentError(f"threads must be a positive int, got {self.threads!r}")


def check_models(models: Sequence[str] | str | None) -> list[str]:
    """`models` as a list of model names ("all" or None: the five), unknown names raising."""
    from udg_fast.models import MODELS

    if models is None or models == "all" or list(models) == ["all"]:
        return list(MODELS)
    if isinstance(models, str):
        models = [m for m in models.split(",") if m]
    out = [str(m).strip().lower() for m in models]
    bad = [m for m in out if m not in MODELS]
    if bad:
        raise ExperimentError(f"unknown model(s) {', '.join(map(repr, bad))} (models: {', '.join(MODELS)}, or all)")
    if not out:
        raise ExperimentError("no model given (models: " + ", ".join(MODELS) + ", or all)")
    return list(dict.fromkeys(out))


def check_seeds(runs: int) -> list[int]:
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ExperimentError(f"runs must be a positive int (the number of seeds), got {runs!r}")
    return list(range(runs))


def dataset_from_path(path: str) -> str | None:
    """The dataset name of an existing file or folder of raw files, from its name (`ml-1m.zip` →
    ml-1m, `ml-latest-small/` → ml-latest), or None."""
    from udg_fast import data

    p = Path(str(path)).expanduser()
    if not p.exists():
        return None
    stem = p.name[:-4] if p.name.lower().endswith(".zip") else p.name
    names = sorted(data.available(), key=len, reverse=True)  # ml-100k before ml-1m… prefixes
    for n in names:
        if stem == n or stem.startswith(n + "-") or stem.startswith(n + "_"):
            return n
    return None


def _key(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


class Context:
    """The loaded dataset, the checked options and the run store of one experiment command.

    Everything that can be wrong with the input (dataset name or path, data options, a
    hyper-parameter, the training options) raises here, before any training starts."""

    def __init__(self, setup: Setup, models: Sequence[str] | None = None):
        import torch

        from udg_fast import data, train
        from udg_fast.data import DataError
        from udg_fast.models import MODELS, ModelError

        self.setup = setup
        self.log = setup.log or (lambda s: print(s, file=sys.stderr, flush=True))
        if setup.threads:
            torch.set_num_threads(setup.threads)
        if setup.dataset not in data.available():
            name = dataset_from_path(setup.dataset)
            if name is None:
                raise ExperimentError(f"unknown dataset {setup.dataset!r} (datasets: {', '.join(data.available())}; "
                                      "or the path of a dataset's raw files whose name starts with one of them, "
                                      "e.g. ml-1m.zip; or give the name and data_path / --data-path)")
            if setup.data_path is not None:
                raise ExperimentError(f"dataset {setup.dataset!r} is a path and data_path is given too: give one")
            setup.dataset, setup.data_path = name, str(setup.dataset)
        try:
            self.train_config = train.TrainConfig(**{"progress": setup.progress, **setup.train})
        except TypeError as e:
            raise ExperimentError(f"bad training option: {e}") from None
        # hyper-parameters: each must be taken by at least one model (a typo fails here); a model
        # is given only those it takes (att_hidden goes to DIN and DIEN, not to PNN)
        self.models = check_models(models)
        allowed = {m: set(MODELS[m].resolve_hparams({})) for m in MODELS}
        unknown = [k for k in setup.hparams if not any(k in a for a in allowed.values())]
        if unknown:
            raise ExperimentError(f"unknown hyper-parameter(s) {', '.join(map(repr, unknown))} (valid: "
                                  f"{', '.join(sorted(set().union(*allowed.values())))})")
        self._allowed = allowed
        try:
            self.dataset = data.load(setup.dataset, setup.data_path, progress=False, **setup.data_options)
        except DataError as e:
            raise ExperimentError(str(e)) from None
        if len(self.dataset.test) == 0:
            raise ExperimentError(f"{setup.dataset}: the test split is empty; the experiments report test metrics")
        self.dataset_info = {"name": self.dataset.name,
                             "path": None if setup.data_path is None else str(Path(setup.data_path).resolve()),
                             "options": dict(self.dataset.meta.get("options", {}))}
        try:  # build every variant once (cheap) so that a bad value fails now, not after hours
            for m in self.models:
                for v in VARIANTS:
                    MODELS[m](self.dataset.schema, udg=(v == "udg"), **self.hparams(m, v))
        except (ModelError, TypeError, ValueError) as e:
            raise ExperimentError(f"bad hyper-parameter: {e}") from None
        self.trained = 0
        self.reused = 0

    # ---- runs --------------------------------------------------------------------------------

    def hparams(self, model: str, variant: str) -> dict:
        """The hyper-parameters given to `models.build` for (model, variant)."""
        from udg_fast.models import MODELS

        hp = {k: v for k, v in self.setup.hparams.items() if k in self._allowed[model]}
        if variant == "emb2x":
            hp["embed_dim"] = 2 * int(MODELS[model].resolve_hparams(hp)["embed_dim"])
        return hp

    def run_dir(self, spec: RunSpec) -> Path:
        from udg_fast.models import MODELS

        resolved = MODELS[spec.model].resolve_hparams(self.hparams(spec.model, spec.variant))
        cfg = {k: v for k, v in self.train_config.to_dict().items() if k not in _NOT_IN_KEY}
        cfg["seed"] = spec.seed
        key = _key({"dataset": self.dataset_info, "data_key": self.dataset.meta.get("key"), "model": spec.model,
                    "udg": spec.variant == "udg", "hparams": resolved, "train": cfg})
        return self.setup.runs_dir / f"{spec.model}-{spec.variant}-seed{spec.seed}-{key}"

    def finished(self, spec: RunSpec) -> dict | None:
        """The metrics.json of a finished run, or None."""
        path = self.run_dir(spec) / "metrics.json"
        if not path.is_file():
            return None
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return res if isinstance(res, dict) and res.get("test") else None

    def run(self, spec: RunSpec, label: str = "") -> dict:
        """Train (or reuse) one run → a row: model, variant, seed, the test metrics, params, …"""
        import dataclasses as _dc

        from udg_fast import models, train
        from udg_fast.models import ModelError

        out = self.run_dir(spec)
        res = self.finished(spec)
        what = f"{model_label(spec.model, spec.variant)}, seed {spec.seed}"
        if res is not None:
            self.reused += 1
            self.log(f"{label} {what}: finished earlier, reused ({out.name})")
        else:
            self.log(f"{label} {what}: training → {out}")
            cfg = _dc.replace(self.train_config, seed=spec.seed)
            out.mkdir(parents=True, exist_ok=True)
            spec_doc = {"model": spec.model, "variant": spec.variant, "seed": spec.seed,
                        "hparams": self.hparams(spec.model, spec.variant), "train": cfg.to_dict(),
                        "dataset": self.dataset_info}
            train._atomic_write_text(json.dumps(spec_doc, indent=2, default=str) + "\n", out / "spec.json")
            t0 = time.perf_counter()
            last = out / "last.pt"
            res = None
            if last.is_file():
                try:  # an interrupted run: continue it (the same result as an uninterrupted run)
                    train.set_seed(spec.seed)
                    model = models.build(spec.model, self.dataset.schema, udg=spec.variant == "udg",
                                         **self.hparams(spec.model, spec.variant))
                    res = train.fit(model, self.dataset, cfg, out_dir=out, resume=last,
                                    dataset_info=self.dataset_info, log=self._epoch_log(label))
                except ModelError as e:
                    self.log(f"{label} cannot resume from {last} ({e}); training from scratch")
                    res = None
            if res is None:
                train.set_seed(spec.seed)
                model = models.build(spec.model, self.dataset.schema, udg=spec.variant == "udg",
                                     **self.hparams(spec.model, spec.variant))
                res = train.fit(model, self.dataset, cfg, out_dir=out, dataset_info=self.dataset_info,
                                log=self._epoch_log(label))
            res["wall_seconds"] = round(time.perf_counter() - t0, 2)
            train._atomic_write_text(train.to_json(res), out / "metrics.json")
            if last.is_file():  # only needed to resume; best.pt stays (t-SNE reads it)
                last.unlink()
            self.trained += 1
        return self._row(spec, res, out)

    def _epoch_log(self, label: str):
        return lambda msg: self.log(f"{label}   {msg}")

    @staticmethod
    def _row(spec: RunSpec, res: Mapping, out: Path) -> dict:
        test = res["test"]
        hist = res.get("history") or []
        return {"model": spec.model, "variant": spec.variant, "seed": spec.seed,
                "auc": test.get("auc"), "logloss": test.get("logloss"), "rmse": test.get("rmse"),
                "rig": test.get("rig"), "gauc": test.get("gauc"), "params": res.get("parameters"),
                "best_epoch": res.get("best_epoch"), "epochs_run": len(hist),
                "train_seconds": round(sum(h.get("train_seconds", 0.0) for h in hist), 2),
                "wall_seconds": res.get("wall_seconds"), "run_dir": out.name}


def run_all_specs(ctx: Context, specs: Sequence[RunSpec], name: str) -> list[dict]:
    """Run `specs` in order, showing `name [k/N]` for each; returns their rows."""
    n = len(specs)
    width = len(str(n))
    return [ctx.run(s, label=f"{name} [{i + 1:>{width}}/{n}]") for i, s in enumerate(specs)]
