"""Training, evaluation and checkpoints for the models of `udg_fast.models`.

    >>> from udg_fast import data, models, train
    >>> ds = data.load("ml-100k")
    >>> train.set_seed(0)
    >>> model = models.build("din", ds.schema, udg=True)
    >>> result = train.fit(model, ds, train.TrainConfig(epochs=3), out_dir="runs/din-udg")
    >>> result["test"]                        # {"auc", "logloss", "rmse", "rig", "gauc"}

The recipe is the UDG authors': Adam, batch 256, 3 epochs, the learning rate halved after every
epoch. After each epoch the model is evaluated on `valid`; the best epoch by valid AUC is kept
(early stopping after `patience` epochs without improvement) and finally evaluated on `test`.
RIG uses the training set's positive rate. With an `out_dir`, `best.pt` (the best model, for
serving and `udg-fast evaluate`), `last.pt` (+ optimiser state, to resume) and `metrics.json` are
written there, every file atomically (a temporary file, then `os.replace`).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from udg_fast import metrics as _metrics
from udg_fast.data import Dataset, Schema, Split
from udg_fast.data.cache import atomic_write_bytes
from udg_fast.models import build_from_config
from udg_fast.models.base import CTRModel, ModelError

CHECKPOINT_FORMAT = "udg_fast.checkpoint/1"


def require_positive_ints(obj, names, error=ValueError, prefix: str = "") -> None:
    """Raise `error` naming the first attribute of `obj` in `names` that is not an int >= 1 (bools
    and floats are refused too): the size checks of every config dataclass (TrainConfig, the
    cold-start MetaConfig and StudyConfig)."""
    for k in names:
        v = getattr(obj, k)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise error(f"{prefix}{k} must be a positive int, got {v!r}")


@dataclasses.dataclass
class TrainConfig:
    """Options of `fit` (defaults: the UDG authors' recipe).

    Attributes:
        epochs: number of passes over `train` (3).
        batch_size: training batch size (256).
        lr: Adam's initial learning rate (1e-3).
        lr_decay: factor applied to the learning rate after every epoch (0.5: halved).
        weight_decay: Adam's L2 weight decay on every parameter (0).
        patience: stop after this many epochs without a better valid AUC (0: never stop early).
        seed: seeds the shuffling of every epoch and torch's RNG; the same seed repeats a CPU
            run exactly (model initialisation is seeded by the caller: `set_seed` before `build`).
        device: "auto" (CUDA if available), "cpu", "cuda", "cuda:1", …
        amp: bf16 autocast on CUDA (ignored on the CPU).
        eval_batch_size: batch size of evaluation (8192).
        progress: tqdm bars (None: only when stderr is a terminal).
        distributed: train with DistributedDataParallel over the initialised default process group
            (`torch.distributed.init_process_group`, as `udg-fast train --distributed` under
            torchrun does). `batch_size` is then the *global* batch: every global batch of the
            single-process order is split across the ranks (rank r takes rows r, r + W, …), the
            gradients are averaged by DDP and weighted so that a step equals the single-process
            step on the whole global batch; valid/test predictions are gathered from all ranks and
            the metrics computed once over the whole split; only rank 0 writes files and logs.
    """

    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    lr_decay: float = 0.5
    weight_decay: float = 0.0
    patience: int = 1
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    eval_batch_size: int = 8192
    progress: bool | None = None
    distributed: bool = False

    def __post_init__(self):
        for f in dataclasses.fields(self):  # numpy numbers (a sweep over np.arange) become Python's
            if isinstance(getattr(self, f.name), np.generic):
                setattr(self, f.name, plain(getattr(self, f.name)))
        require_positive_ints(self, ("epochs", "batch_size", "eval_batch_size"), ValueError, "TrainConfig: ")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"TrainConfig: patience must be an int >= 0, got {self.patience!r}")

        def number(name, ok, expected):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ValueError(f"TrainConfig: {name} must be {expected}, got {v!r}")

        number("lr", lambda v: v > 0, "a positive number")
        number("lr_decay", lambda v: 0 < v <= 1, "a number in (0, 1]")
        number("weight_decay", lambda v: v >= 0, "a number >= 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"TrainConfig: seed must be an int >= 0, got {self.seed!r}")
        if not isinstance(self.device, (str, torch.device)):
            raise ValueError(f"TrainConfig: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        for name in ("amp", "distributed"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig: {name} must be True or False, got {getattr(self, name)!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise ValueError(f"TrainConfig: progress must be True, False or None, got {self.progress!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- small helpers -----------------------------------------------------------------------------

def set_seed(seed: int) -> None:
    """Seed torch (CPU and CUDA) and numpy's legacy global RNG."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(d)!r} was requested but no CUDA GPU is available")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(d)!r} was requested but there are {torch.cuda.device_count()} CUDA GPU(s)")
    return d


def positive_rate(split: Split) -> float:
    """The positive rate of a split's labels (RIG's base rate is the training set's)."""
    return float(np.asarray(split["label"], dtype=np.float64).mean())


def _shuffle_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def _autocast(device: torch.device, amp: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(amp) and device.type == "cuda")


def _bar(total: int, desc: str, progress: bool | None):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if progress is None else not progress
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, disable=disable, dynamic_ncols=True)


# ---- multi-process (torchrun + DistributedDataParallel) -----------------------------------------

def dist_info() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _global_mean_loss(loss: torch.Tensor, n_local: int, n_global: int) -> float:
    """The mean loss over the whole global batch (all-reduced sum of n_r · loss_r, / n): every rank
    logs, and checks for NaN, the same number."""
    import torch.distributed as dist

    t = (loss.float() * n_local).reshape(1)
    dist.all_reduce(t)
    return float(t) / n_global


class _LossModule(torch.nn.Module):
    """`model.loss(batch)` as a module's forward, so that DistributedDataParallel wraps the call
    that training makes (DDP's bookkeeping for the gradient all-reduce runs in its forward)."""

    def __init__(self, model: CTRModel):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


def shard_batches(split: Split, batch_size: int, *, seed: int, rank: int, world: int, device=None,
                  fields=None):
    """This rank's share of each shuffled global batch: yields (local batch, global batch size).

    The global batches are those of `split.batches(batch_size, shuffle=True, seed=seed)` — taken
    from it, so the order is the single-process order by construction; rank r keeps rows r, r + W,
    r + 2W, … of each, as DistributedSampler does, so the union over the ranks of step k is the
    single-process batch k. A last global batch smaller than the world size (some rank would get
    no row) is dropped on every rank.
    """
    for batch in split.batches(batch_size, shuffle=True, seed=seed, fields=fields):
        n = len(next(iter(batch.values())))
        if n < world:
            return
        mine = {k: t[rank::world].contiguous() for k, t in batch.items()}
        if device is not None:
            mine = {k: t.to(device, non_blocking=True) for k, t in mine.items()}
        yield mine, n


def _gather_predictions(model: CTRModel, split: Split, batch_size: int, device, amp: bool, rank: int,
                        world: int) -> torch.Tensor:
    """Probabilities of every sample of `split`, in order: rank r predicts rows r, r + W, …, and
    all ranks gather all shares (`all_gather_object`), so each holds the whole split's."""
    import torch.distributed as dist

    n = len(split)
    mine = predict(model, split.select(np.arange(rank, n, world)), batch_size, device, amp).numpy()
    parts: list = [None] * world
    dist.all_gather_object(parts, mine)
    out = np.empty(n, dtype=np.float32)
    for r, p in enumerate(parts):
        out[r::world] = p
    return torch.from_numpy(out)


# ---- evaluation --------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: CTRModel, split: Split, batch_size: int = 8192, device=None, amp: bool = True,
            progress: bool | None = False) -> torch.Tensor:
    """Click probabilities `[N]` (float32, CPU) of every sample of `split`, in order."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    bar = _bar(split.num_batches(batch_size), f"predict {split.name}", progress)
    try:
        fields = [f for f in model.required_fields() if f in split]
        for batch in split.batches(batch_size, device=device if device.type != "cpu" else None, fields=fields):
            with _autocast(device, amp):
                logits = model(batch)
            out.append(torch.sigmoid(logits.float()).cpu())
            bar.update(1)
    finally:
        bar.close()
        model.train(was)
    return torch.cat(out) if out else torch.zeros(0)


def evaluate_split(model: CTRModel, split: Split, base_rate: float | None = None, batch_size: int = 8192,
                   device=None, amp: bool = True, progress: bool | None = False,
                   distributed: bool = False) -> dict[str, float]:
    """AUC, Log Loss, RMSE, RIG (with `base_rate`, the *training* positive rate) and gAUC (by user)
    of the model on `split` (`udg_fast.metrics.evaluate`).

    distributed: every rank of the process group predicts its share and the predictions of all
    ranks are gathered; the metrics are then computed once over the whole split (every rank gets
    the same numbers), never averaged over ranks."""
    if len(split) == 0:
        raise ValueError(f"cannot evaluate on the empty split {split.name!r}")
    rank, world = dist_info()
    if distributed and world > 1:
        device = torch.device(device) if device is not None else next(model.parameters()).device
        probs = _gather_predictions(model, split, batch_size, device, amp, rank, world)
    else:
        probs = predict(model, split, batch_size, device, amp, progress)
    return _metrics.evaluate(torch.from_numpy(np.asarray(split["label"])), probs,
                             groups=torch.from_numpy(np.asarray(split["user_id"])), base_rate=base_rate)


# ---- checkpoints -------------------------------------------------------------------------------

def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save into a temp file beside `path`, then rename (data.cache.atomic_write_bytes: a
    failed write leaves neither a partial file nor its temp file)."""
    atomic_write_bytes(Path(path), lambda f: torch.save(obj, f))


def _atomic_write_text(text: str, path: Path) -> None:
    atomic_write_bytes(Path(path), lambda f: f.write(text.encode("utf-8")))


def plain(x: Any, where: str = "value") -> Any:
    """`x` with numpy scalars and arrays turned into Python numbers and lists (recursively through
    dicts, lists and tuples; tensors kept), so that a checkpoint holding it loads with
    `torch.load(weights_only=True)` — which refuses numpy objects — and JSON can write it. Anything
    else that weights_only could not load is a ModelError naming `where`."""
    if isinstance(x, np.generic):  # first: np.float64 is a float, and pickles as numpy's
        return x.item()
    if x is None or isinstance(x, (bool, int, float, str, torch.Tensor)):
        return x
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Mapping):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(plain(v, f"{where}[{i}]") for i, v in enumerate(x))
    raise ModelError(f"{where} is a {type(x).__name__}, which a checkpoint cannot hold (plain Python numbers, "
                     f"strings, lists, dicts and tensors only)")


def to_json(obj: Any) -> str:
    """`obj` (metrics, a run's result) as strict JSON text: numpy numbers as Python's, and a metric
    that is undefined (NaN: gAUC when no user has both labels; ±inf) as `null`, which every JSON
    parser reads (a bare NaN is not JSON: JavaScript's JSON.parse and jq refuse or change it)."""
    def safe(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: safe(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [safe(v) for v in x]
        return x

    return json.dumps(safe(plain(obj, "value")), indent=2, allow_nan=False) + "\n"


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _prepare_out_dir(out: Path, fresh: bool) -> None:
    """Make `out` and check that it takes files before any training (a bad --out used to fail
    after the first epoch); for a fresh run remove an earlier run's best.pt, last.pt and
    metrics.json, so a run killed early never leaves files of two runs side by side."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".udg_fast_write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ModelError(f"out_dir {str(out)!r}: cannot write there ({e.strerror or e})") from None
    if fresh:
        for name in ("metrics.json", "best.pt", "last.pt"):
            (out / name).unlink(missing_ok=True)


def save_checkpoint(path, model: CTRModel, *, epoch: int, metrics: Mapping | None = None,
                    extra: Mapping | None = None) -> Path:
    """Write `{"format", "config", "state_dict", "epoch", "metrics", …extra}` to `path` atomically
    (`path.tmp`, then `os.replace`). Everything but the tensors is plain Python, so the file loads
    with `torch.load(path, weights_only=True)`."""
    path = Path(path)
    obj = {"format": CHECKPOINT_FORMAT, "config": plain(model.config, "the model's config"),
           "state_dict": _cpu_state(model), "epoch": int(epoch), "metrics": plain(dict(metrics or {}), "metrics")}
    obj.update(plain(dict(extra or {}), "extra"))
    _atomic_save(obj, path)
    return path


def check_schema(expected: Mapping, schema: Schema, what: str = "checkpoint") -> None:
    """Raise ModelError naming the first field in which `schema` differs from the schema dict
    `expected` (a checkpoint's), so a model is never run on ids it was not built for."""
    if expected.get("max_len") != schema.max_len:
        raise ModelError(f"{what} does not fit the data: max_len is {expected.get('max_len')} in the {what} but "
                         f"{schema.max_len} in the data")
    for f in expected["fields"]:
        name = f["name"]
        if name not in schema:
            raise ModelError(f"{what} does not fit the data: field {name!r} of the {what} is missing from the data "
                             f"(data fields: {', '.join(schema.names)})")
        got = schema[name].to_dict()
        for k in ("role", "vocab_size", "shape", "key"):
            if got.get(k) != f.get(k):
                raise ModelError(f"{what} does not fit the data: field {name!r} has {k} {f.get(k)!r} in the {what} "
                                 f"but {got.get(k)!r} in the data")
    extra = [n for n in schema.names if n not in {f["name"] for f in expected["fields"]}
             and schema[n].role in ("user", "item", "profile", "context")]
    if extra:
        raise ModelError(f"{what} does not fit the data: the data has input field(s) {', '.join(map(repr, extra))} "
                         f"that the {what} does not know")


def read_checkpoint(path, map_location="cpu") -> dict:
    """The checkpoint dict (`torch.load(weights_only=True)`), its format checked."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no checkpoint at {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated file, a foreign pickle, ...
        raise ModelError(f"{path}: not a readable udg_fast checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not a udg_fast checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    cfg = ckpt.get("config")
    problem = ("has no 'config' dict" if not isinstance(cfg, dict) else
               "has no 'state_dict' dict" if not isinstance(ckpt.get("state_dict"), dict) else
               "its config lacks 'model', 'udg', 'hparams' or 'schema'"
               if not all(k in cfg for k in ("model", "udg", "hparams", "schema")) else
               "its config's schema has no 'fields' list"
               if not isinstance(cfg["schema"], dict) or not isinstance(cfg["schema"].get("fields"), list) else None)
    if problem:
        raise ModelError(f"{path}: a damaged udg_fast checkpoint: {problem}")
    return ckpt


def load_state(model: CTRModel, state_dict: Mapping, what: str = "checkpoint") -> None:
    """`model.load_state_dict(state_dict)`, with a ModelError that lists the differences."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: {tuple(state_dict[k].shape)} in the {what}, {tuple(v.shape)} in the model"
              for k, v in own.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise ModelError(f"{what} does not fit the model {model.name}{'+udg' if model.udg else ''}: " + ", ".join(parts))
    model.load_state_dict(state_dict)


def load_checkpoint(path, schema: Schema | None = None, map_location="cpu") -> tuple[CTRModel, dict]:
    """(model, checkpoint dict) from a file written by `save_checkpoint` / `fit`.

    With `schema` (the data it will run on), a mismatch raises ModelError naming the field."""
    if schema is not None and not isinstance(schema, Schema):
        raise ModelError(f"load_checkpoint: schema must be a udg_fast.data.Schema (dataset.schema) or None, got "
                         f"{type(schema).__name__}")
    ckpt = read_checkpoint(path, map_location)
    cfg = ckpt["config"]
    if schema is not None:
        check_schema(cfg["schema"], schema)
    model = build_from_config(cfg)
    load_state(model, ckpt["state_dict"])
    return model.to(map_location) if map_location is not None else model, ckpt


# ---- training ----------------------------------------------------------------------------------

class _Running:
    """Running loss (exponential average) and AUC over the last `window` batches, for tqdm."""

    def __init__(self, window: int = 50):
        self.loss = None
        self.labels = collections.deque(maxlen=window)
        self.scores = collections.deque(maxlen=window)

    def update(self, loss: float, labels: torch.Tensor, logits: torch.Tensor) -> None:
        self.loss = loss if self.loss is None else 0.98 * self.loss + 0.02 * loss
        self.labels.append(labels.detach().float().cpu())
        self.scores.append(logits.detach().float().cpu())

    def auc(self) -> float:
        try:
            return _metrics.auc(torch.cat(list(self.labels)), torch.cat(list(self.scores)))
        except ValueError:  # one class only so far
            return float("nan")


def fit(model: CTRModel, dataset: Dataset, config: TrainConfig | None = None, out_dir=None, resume=None,
        dataset_info: Mapping | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Train `model` on `dataset.train`, select the epoch by valid AUC, evaluate it on test.

    Args:
        model: a `udg_fast.models` model for `dataset.schema` (moved to `config.device`).
        dataset: a `udg_fast.data.Dataset`; `valid` may be empty (then the last epoch is kept).
        config: `TrainConfig` (default: the authors' recipe).
        out_dir: where to write `best.pt`, `last.pt` and `metrics.json` (None: nothing written).
        resume: a `last.pt` of an earlier run with the same model: training goes on from the epoch
            after it, with its optimiser state, so the result equals an uninterrupted run.
        dataset_info: stored in checkpoints and metrics.json (name, options, path) so that
            `udg-fast evaluate` can reload the data.
        log: called with a line per epoch (default: print to stderr).

    Returns:
        dict with `history` (per epoch: lr, train loss, seconds, valid metrics), `best_epoch`,
        `valid` (best epoch), `test`, `seconds_per_epoch`, `parameters`, `config`.
    """
    if not isinstance(model, CTRModel):
        raise ModelError(f"fit: model must be a udg_fast model (udg_fast.models.build), got {type(model).__name__}")
    if not isinstance(dataset, Dataset):
        raise ModelError(f"fit: dataset must be a udg_fast.data.Dataset (data.load, data.from_interactions), got "
                         f"{type(dataset).__name__}")
    if config is not None and not isinstance(config, TrainConfig):
        raise ModelError(f"fit: config must be a TrainConfig or None, got {type(config).__name__}")
    cfg = config or TrainConfig()
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    check_schema(model.config["schema"], dataset.schema, what="model")
    for split in (dataset.train, dataset.valid, dataset.test):  # a NaN label read as "lower the lr" later
        lab = np.asarray(split["label"]) if len(split) else np.zeros(0)
        bad = ~((lab == 0) | (lab == 1))
        if bad.any():
            raise ModelError(f"fit: the {split.name} split's labels must be 0 or 1, found {float(lab[bad][0])!r} "
                             f"in row {int(np.flatnonzero(bad)[0])}")
    if len(dataset.train) == 0:
        raise ModelError("fit: the train split is empty")
    rank, world = dist_info() if cfg.distributed else (0, 1)
    if cfg.distributed:
        if not _dist_initialized():
            raise ValueError("TrainConfig(distributed=True) needs an initialised torch.distributed process group "
                             "(run `udg-fast train --distributed` under torchrun, or call init_process_group)")
        if cfg.batch_size < world:
            raise ValueError(f"TrainConfig: batch_size is the global batch under distributed training and must be "
                             f">= the world size {world}, got {cfg.batch_size}")
    main = rank == 0
    if not main:  # one voice: rank 0 logs, shows progress and writes the files
        log = lambda s: None  # noqa: E731
        cfg = dataclasses.replace(cfg, progress=False)
    device = resolve_device(cfg.device)
    if cfg.distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
    model.to(device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        problem = None
        if main:
            try:
                _prepare_out_dir(out, fresh=resume is None)
            except ModelError as e:
                problem = str(e)
        if cfg.distributed:  # every rank stops on rank 0's error (the others would wait in DDP)
            import torch.distributed as dist

            box = [problem]
            dist.broadcast_object_list(box, src=0)
            problem = box[0]
        if problem:
            raise ModelError(problem)
    info = dict(dataset_info or {"name": dataset.name, "options": dict(dataset.meta.get("options", {}))})
    base_rate = positive_rate(dataset.train)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    history: list[dict] = []
    best_auc, best_epoch, bad_epochs, start = -math.inf, -1, 0, 0
    best_state = None
    stopped = False
    if resume is not None:
        ck = read_checkpoint(resume, map_location="cpu")
        if ck["config"] != model.config:
            was, now = ck["config"], model.config
            diff = [f"{k}: {was.get(k)!r} there, {now.get(k)!r} here" for k in ("model", "udg")
                    if was.get(k) != now.get(k)]
            if not diff:  # the same model: name the hyper-parameters that differ
                diff = [f"{k}: {was['hparams'].get(k)!r} there, {now['hparams'].get(k)!r} here"
                        for k in sorted(set(was["hparams"]) | set(now["hparams"]))
                        if was["hparams"].get(k) != now["hparams"].get(k)]
            raise ModelError(f"{resume}: the checkpoint is of another model than the one to train ("
                             + ("; ".join(diff) or "its schema differs") + "); resume with the run's model "
                             "(udg_fast.models.build_from_config(checkpoint['config']), or the same --model, --udg "
                             "and --hp options)")
        if "optimizer" not in ck:
            raise ModelError(f"{resume}: has no optimiser state (resume from a last.pt, not a best.pt)")
        # The run goes on as it was: a recipe that differs would make "equal to an uninterrupted
        # run" false while metrics.json recorded the new recipe for the whole run.
        was = ck.get("train_config") or {}
        changed = [k for k in ("batch_size", "lr", "lr_decay", "weight_decay", "seed")
                   if k in was and was[k] != getattr(cfg, k)]
        if changed:
            raise ModelError(f"{resume}: the run was trained with " + ", ".join(f"{k}={was[k]!r}" for k in changed)
                             + "; resume it with the same values (" + ", ".join(
                                 f"{k}={getattr(cfg, k)!r}" for k in changed) + " given), or start a new run")
        load_state(model, ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        history = list(ck["history"])
        start = ck["epoch"] + 1
        best_auc, best_epoch, bad_epochs = ck["best_auc"], ck["best_epoch"], ck["bad_epochs"]
        stopped = bool(ck.get("stopped"))
        if best_epoch == ck["epoch"]:
            # the last epoch was the best: last.pt holds its weights (an epoch writes last.pt
            # before best.pt, so a run stopped between the two still resumes)
            best_state = ck["state_dict"]
            if out is not None and main:
                save_checkpoint(out / "best.pt", model, epoch=best_epoch, metrics=history[best_epoch].get("valid"),
                                extra={k: ck[k] for k in ("dataset", "train_config") if k in ck})
        elif best_epoch >= 0:
            # an earlier best epoch: the best.pt written beside this last.pt by the same run (not
            # one in out_dir, which may be another run's), checked to be that run's and epoch's
            best_path = Path(resume).with_name("best.pt")
            bk = read_checkpoint(best_path) if best_path.is_file() else None
            same_run = bk is not None and bk["config"] == ck["config"] and \
                bk.get("train_config") == ck.get("train_config")
            if bk is None or not same_run or bk.get("epoch") != best_epoch:
                raise ModelError(f"{resume}: the run's best epoch {best_epoch + 1} needs its best.pt beside it, "
                                 f"and {best_path} " + ("does not exist" if bk is None else
                                                        f"holds epoch {bk.get('epoch', -1) + 1} of another run"
                                                        if not same_run else
                                                        f"holds epoch {bk.get('epoch', -1) + 1}"))
            best_state = bk["state_dict"]
            if out is not None and main and best_path.resolve() != (out / "best.pt").resolve():
                _atomic_save(bk, out / "best.pt")  # the resumed run's folder is complete on its own
        log(f"resumed from {resume} after epoch {ck['epoch'] + 1}")
        if stopped or start >= cfg.epochs:
            log(f"nothing left to train: the run {'stopped early' if stopped else 'finished'} after epoch "
                f"{start} (epochs={cfg.epochs})")

    model.train()
    fields = [f for f in model.required_fields(training=True) if f in dataset.train]
    has_valid = len(dataset.valid) > 0
    step_module = None
    if cfg.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # DDP broadcasts rank 0's parameters and buffers here, so every rank starts from them.
        # DIEN's auxiliary network gets no gradient from a shard without a (t, t+1) history pair
        # (its loss is then 0); DDP must be told to look for such parameters every step.
        step_module = DistributedDataParallel(_LossModule(model),
                                              device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=getattr(model, "aux_net", None) is not None)
        if world > 1 and len(dataset.train) % cfg.batch_size and len(dataset.train) % cfg.batch_size < world:
            log(f"distributed: the last {len(dataset.train) % cfg.batch_size} training rows of every epoch are "
                f"dropped (fewer than the {world} ranks)")
        log(f"distributed: {world} processes ({'nccl' if device.type == 'cuda' else 'gloo'}), global batch "
            f"{cfg.batch_size}, about {cfg.batch_size // world} rows per rank")
    for epoch in range(start, cfg.epochs if not stopped else start):
        lr = cfg.lr * cfg.lr_decay ** epoch
        for g in opt.param_groups:
            g["lr"] = lr
        torch.manual_seed(_shuffle_seed(cfg.seed, epoch))  # for any random op inside a model
        model.train()
        run, total, n = _Running(), 0.0, 0
        bar = _bar(dataset.train.num_batches(cfg.batch_size), f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress)
        t0 = time.perf_counter()
        if cfg.distributed:
            batches = shard_batches(dataset.train, cfg.batch_size, seed=_shuffle_seed(cfg.seed, epoch), rank=rank,
                                    world=world, device=device if device.type != "cpu" else None, fields=fields)
        else:
            batches = ((b, None) for b in dataset.train.batches(
                cfg.batch_size, shuffle=True, seed=_shuffle_seed(cfg.seed, epoch),
                device=device if device.type != "cpu" else None, fields=fields))
        for step, (batch, global_n) in enumerate(batches):
            if step_module is None:
                with _autocast(device, cfg.amp):
                    loss, logits = model.loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                lv = float(loss.detach())
            else:
                with _autocast(device, cfg.amp):
                    loss, logits = step_module(batch)
                # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of
                # the global batch (n_r · W / n) makes that average the gradient of the global mean
                # loss, also when the ranks' shares differ by a row.
                opt.zero_grad(set_to_none=True)
                (loss * (len(logits) * world / global_n)).backward()
                opt.step()
                lv = _global_mean_loss(loss.detach(), len(logits), global_n)
            if not math.isfinite(lv):
                bar.close()
                raise FloatingPointError(f"training loss became {lv} at epoch {epoch + 1}, step {step} "
                                         f"(lr {lr:g}); lower the learning rate")
            rows = len(logits) if global_n is None else global_n
            total += lv * rows
            n += rows
            run.update(lv, batch["label"], logits)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{run.loss:.4f}", auc=f"{run.auc():.4f}")
            bar.update(1)
        bar.close()
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": total / max(n, 1), "train_seconds": round(seconds, 3)}
        if has_valid:
            t1 = time.perf_counter()
            row["valid"] = evaluate_split(model, dataset.valid, base_rate, cfg.eval_batch_size, device, cfg.amp,
                                          cfg.progress, distributed=cfg.distributed)
            row["eval_seconds"] = round(time.perf_counter() - t1, 3)
            auc = row["valid"]["auc"]
            improved = auc > best_auc or best_epoch < 0
        else:
            auc, improved = float("nan"), True
        history.append(row)
        msg = f"epoch {epoch + 1}: loss {row['train_loss']:.4f}, {seconds:.1f} s"
        if has_valid:
            msg += f", valid AUC {auc:.4f}, gAUC {row['valid'].get('gauc', float('nan')):.4f}"
        if improved:
            best_auc, best_epoch, bad_epochs = (auc if has_valid else best_auc), epoch, 0
            best_state = _cpu_state(model)
        else:
            bad_epochs += 1
            msg += f" (no better than epoch {best_epoch + 1})"
        stopped = bool(cfg.patience) and bad_epochs >= cfg.patience and epoch + 1 < cfg.epochs
        if out is not None and main:
            # last.pt first: a run stopped before best.pt is written resumes from last.pt, which
            # then says the best epoch is its own (resume takes the best weights from it)
            save_checkpoint(out / "last.pt", model, epoch=epoch, metrics=row.get("valid"),
                            extra={"dataset": info, "train_config": cfg.to_dict(), "optimizer": opt.state_dict(),
                                   "history": history, "best_auc": best_auc, "best_epoch": best_epoch,
                                   "bad_epochs": bad_epochs, "stopped": stopped})
            if improved:
                save_checkpoint(out / "best.pt", model, epoch=epoch, metrics=row.get("valid"),
                                extra={"dataset": info, "train_config": cfg.to_dict()})
        log(msg)
        if stopped:
            log(f"early stop: valid AUC did not improve for {bad_epochs} epoch(s)")
            break

    if best_state is not None:
        load_state(model, best_state)
    model.to(device)
    result = {
        "model": model.name,
        "udg": model.udg,
        "dataset": info,
        "hparams": dict(model.hparams),
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": cfg.to_dict(),
        "history": history,
        "best_epoch": best_epoch + 1,
        "valid": history[best_epoch]["valid"] if has_valid and 0 <= best_epoch < len(history) else None,
        "seconds_per_epoch": (sum(h["train_seconds"] for h in history) / len(history)) if history else None,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "world_size": world,
    }
    if len(dataset.test):
        result["test"] = evaluate_split(model, dataset.test, base_rate, cfg.eval_batch_size, device, cfg.amp,
                                        cfg.progress, distributed=cfg.distributed)
    if out is not None and main:
        _atomic_write_text(to_json(result), out / "metrics.json")
    return result


# ---- reporting ---------------------------------------------------------------------------------

METRIC_COLUMNS = (("auc", "AUC"), ("logloss", "Log Loss"), ("rmse", "RMSE"), ("rig", "RIG"), ("gauc", "gAUC"))


def format_table(rows: Mapping[str, Mapping[str, Any]], extra: tuple[tuple[str, str, str], ...] = ()) -> str:
    """A fixed-width table, one row per name: AUC, Log Loss, RMSE, RIG, gAUC, then `extra`
    columns given as (key, header, format)."""
    heads = ["model"] + [h for _, h in METRIC_COLUMNS] + [h for _, h, _ in extra]
    body = []
    for name, m in rows.items():
        cells = [name] + [("-" if m.get(k) is None else f"{m[k]:.4f}") for k, _ in METRIC_COLUMNS]
        cells += [("-" if m.get(k) is None else format(m[k], fmt)) for k, _, fmt in extra]
        body.append(cells)
    widths = [max(len(r[i]) for r in [heads] + body) for i in range(len(heads))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(r) for r in body])
