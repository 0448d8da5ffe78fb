"""Model-level throughput: ``udg-fast bench`` and the cases of ``benchmarks/bench_models.py``.

One *case* is (provider, model, udg, batch, history length, embedding size, mode):

    providers  fused      udg_fast with its fused backends (what `models.build` gives you)
               reference  the same model with every udg_fast op forced to the `reference`
                          backend (eager PyTorch): what the model costs without the kernels
               compile    `torch.compile` (inductor) of the reference model
               deepctr    DeepCTR-Torch 0.3.0's DIN, DIEN, PNN, DeepFM, WDL on the same batch
                          (benchmarks only: `pip install -r requirements-bench.txt`)
    modes      train      forward + loss + backward + Adam step, samples/s
               infer      forward in eval mode under `torch.no_grad()`

Inputs are synthetic batches shaped like ml-100k (`synthetic_schema`: its vocabularies, profile
fields and categories; history lengths uniform in [1, T]; labels Bernoulli(0.5)), so no dataset is
needed and every provider sees the same ids.

    udg-fast bench                                   # ~1 min: 10 variants × fused / reference / deepctr
    udg-fast bench --models din,dien --batch 2048 --providers fused,reference,compile --threads 1

`measure_peak_memory` gives the peak memory of one training step (CPU: the profiler's allocation
events; CUDA: `torch.cuda.max_memory_allocated`), see there.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from udg_fast.data.core import Schema, standard_fields

PROVIDERS = ("fused", "reference", "compile", "deepctr")
MODES = ("train", "infer")
BASE_MODELS = ("pnn", "deepfm", "wdl", "din", "dien")
#: DeepCTR-Torch's counterpart of each base model (it has no UDG variants)
DEEPCTR_MODELS = {"pnn": "PNN", "deepfm": "DeepFM", "wdl": "WDL", "din": "DIN", "dien": "DIEN"}
#: ml-100k's sizes (943 users, 1682 items, 19 genres, age 7 / gender 2 / occupation 21 values)
ML100K = {"n_users": 943, "n_items": 1682, "n_cats": 19, "profile": {"age": 7, "gender": 2, "occupation": 21}}


class BenchError(ValueError):
    """Bad benchmark input (an unknown model, provider or mode, a non-positive size)."""


def variants(models: Sequence[str] = BASE_MODELS) -> list[tuple[str, bool]]:
    """(model, udg) pairs: each base model, then its UDG variant."""
    return [(m, u) for m in models for u in (False, True)]


def label(model: str, udg: bool) -> str:
    return f"{model}+udg" if udg else model


# ---- inputs ------------------------------------------------------------------------------------

def synthetic_schema(hist_len: int = 50, sizes: dict | None = None) -> Schema:
    """A schema with ml-100k's fields and vocabularies and history length `hist_len`."""
    s = {**ML100K, **(sizes or {})}
    return standard_fields(n_users=s["n_users"], n_items=s["n_items"], n_cats=s["n_cats"],
                           profile=s["profile"], max_len=hist_len)


def synthetic_batch(schema: Schema, batch_size: int, seed: int = 0, device=None) -> dict[str, torch.Tensor]:
    """One batch `{field: [B] or [B, T]}` for `schema`: ids uniform over each vocabulary (0 is
    padding), every item with one fixed category, history lengths uniform in [1, T] with the
    padded steps 0, one sampled negative per history step, labels Bernoulli(0.5)."""
    g = torch.Generator().manual_seed(seed)
    B, T = int(batch_size), schema.max_len
    n_items = schema.vocab_size("item_id") - 1
    item_cat = torch.randint(1, schema.vocab_size("item_cat"), (n_items + 1,), generator=g)
    item_cat[0] = 0
    out: dict[str, torch.Tensor] = {}
    for f in schema.user_fields + schema.profile_fields + schema.context_fields:
        out[f] = torch.randint(1, schema.vocab_size(f), (B,), generator=g)
    out["item_id"] = torch.randint(1, n_items + 1, (B,), generator=g)
    out["item_cat"] = item_cat[out["item_id"]]
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T) < lengths.unsqueeze(1)
    for prefix in ("", "neg_"):
        items = torch.randint(1, n_items + 1, (B, T), generator=g) * mask
        out[prefix + "hist_item"] = items
        out[prefix + "hist_cat"] = item_cat[items]
    out["hist_len"] = lengths
    out["label"] = (torch.rand(B, generator=g) < 0.5).float()
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out


# ---- DeepCTR-Torch -----------------------------------------------------------------------------

def deepctr_available() -> tuple[bool, str]:
    """(importable, why not)."""
    try:
        _quiet_import_deepctr()
    except Exception as e:  # noqa: BLE001 - ImportError, or its missing `requests`
        return False, (f"deepctr-torch is not installed ({type(e).__name__}: {e}); "
                       f"pip install -r requirements-bench.txt")
    return True, ""


def _quiet_import_deepctr():
    # deepctr_torch's __init__ starts a thread that asks PyPI for a newer version (and prints when
    # it cannot reach it): no network traffic in the middle of a benchmark, so that one thread is
    # not started. Nothing else is changed.
    import threading

    start = threading.Thread.start

    def _start(self):
        if getattr(getattr(self, "_target", None), "__qualname__", "") == "check_version.<locals>.check":
            return None
        return start(self)

    threading.Thread.start = _start
    try:
        import deepctr_torch
        from deepctr_torch import models as dm
        from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    finally:
        threading.Thread.start = start
    return deepctr_torch, dm, SparseFeat, VarLenSparseFeat


def build_deepctr(model: str, schema: Schema, embed_dim: int, hidden=None, device="cpu", seed: int = 0):
    """DeepCTR-Torch's `model` built to match udg_fast's base model of the same name:
    the same fields and vocabularies, embedding size, prediction-MLP widths (ours: 256, 128; PNN
    128, 128), attention MLP (80, 40) with sigmoid, DIEN's AUGRU with negative sampling and its
    (100, 50) auxiliary net, no L2 (ours has none by default). Returns (model, feature names in
    input order)."""
    from udg_fast.models import hparam_defaults

    _, dm, SparseFeat, VarLenSparseFeat = _quiet_import_deepctr()
    hp = hparam_defaults(model)
    hidden = tuple(hidden or hp["hidden"])
    d, T = int(embed_dim), schema.max_len
    sparse = [SparseFeat(f, schema.vocab_size(f), d) for f in
              schema.user_fields + schema.profile_fields + schema.context_fields + schema.item_fields]
    hist = [VarLenSparseFeat(SparseFeat(f"hist_{k}", schema.vocab_size(k), d, embedding_name=k), T,
                             combiner="mean", length_name="seq_length") for k in ("item_id", "item_cat")]
    torch.manual_seed(seed)
    common = dict(dnn_hidden_units=hidden, l2_reg_embedding=0.0, seed=seed, device=str(device))
    if model == "din":
        cols = sparse + hist
        net = dm.DIN(cols, ["item_id", "item_cat"], att_hidden_size=tuple(hp["att_hidden"]),
                     att_activation="sigmoid", att_weight_normalization=False, **common)
    elif model == "dien":
        neg = [VarLenSparseFeat(SparseFeat(f"neg_hist_{k}", schema.vocab_size(k), d, embedding_name=k), T,
                                combiner="mean", length_name="seq_length") for k in ("item_id", "item_cat")]
        cols = sparse + hist + neg
        net = dm.DIEN(cols, ["item_id", "item_cat"], gru_type="AUGRU", use_negsampling=True, alpha=1.0,
                      att_hidden_units=tuple(hp["att_hidden"]), att_activation="sigmoid", **common)
    elif model == "pnn":
        cols = sparse + hist
        net = dm.PNN(cols, use_inner=True, use_outter=False, **common)
    elif model in ("deepfm", "wdl"):
        cols = sparse + hist
        cls = dm.DeepFM if model == "deepfm" else dm.WDL
        net = cls(cols, cols, l2_reg_linear=0.0, **common)
    else:
        raise BenchError(f"DeepCTR-Torch has no counterpart of {model!r} here (models: {', '.join(DEEPCTR_MODELS)})")
    return net.to(device), list(net.feature_index)


def deepctr_input(batch: dict, feature_names: Sequence[str]) -> torch.Tensor:
    """Our batch as DeepCTR-Torch's input: one float matrix, a column per feature (T per history
    feature), in the model's `feature_index` order."""
    cols = []
    for name in feature_names:
        key = "hist_len" if name == "seq_length" else name
        if key.startswith(("hist_", "neg_hist_")) and key.endswith("_id"):
            key = key[:-3]                                                   # hist_item_id → hist_item
        elif key.startswith(("hist_item_", "neg_hist_item_")):
            key = key.replace("item_cat", "cat")                             # hist_item_cat → hist_cat
        v = batch[key]
        cols.append(v.unsqueeze(1) if v.dim() == 1 else v)
    return torch.cat(cols, 1).float()


# ---- cases -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    """A runnable benchmark case: `step()` runs one training step or one inference batch."""

    provider: str
    model: str
    udg: bool
    batch: int
    hist_len: int
    embed_dim: int
    mode: str
    step: Callable[[], object]
    parameters: int
    device: str
    note: str = ""
    setup_seconds: float = 0.0      # compile time for `compile` (measured by `warmup`)

    @property
    def name(self) -> str:
        return label(self.model, self.udg)

    def warmup(self, n: int = 2) -> None:
        """Run `n` steps untimed (allocator, Adam state; for `compile` the compilation, timed)."""
        for i in range(n):
            t = time.perf_counter()
            self.step()
            _sync(self.device)
            if i == 0 and self.provider == "compile":
                self.setup_seconds = time.perf_counter() - t


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _check(provider, model, mode, batch, hist_len, embed_dim):
    from udg_fast.models import MODELS

    if provider not in PROVIDERS:
        raise BenchError(f"unknown provider {provider!r} (providers: {', '.join(PROVIDERS)})")
    if model not in MODELS:
        raise BenchError(f"unknown model {model!r} (models: {', '.join(MODELS)})")
    if mode not in MODES:
        raise BenchError(f"unknown mode {mode!r} (modes: {', '.join(MODES)})")
    for k, v in (("batch", batch), ("hist_len", hist_len), ("embed_dim", embed_dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BenchError(f"{k} must be a positive int, got {v!r}")


def make_case(provider: str, model: str, udg: bool, batch: int = 2048, hist_len: int = 50, embed_dim: int = 18,
              mode: str = "train", device="cpu", seed: int = 0, hparams: dict | None = None) -> Case:
    """Build the model of `provider` and its input; return a `Case` whose `step()` is timed.

    Raises BenchError for bad arguments, and for `deepctr` when it is not installed or has no
    such model (a UDG variant)."""
    import udg_fast
    from udg_fast import models

    _check(provider, model, mode, batch, hist_len, embed_dim)
    device = torch.device(device)
    schema = synthetic_schema(hist_len)
    data = synthetic_batch(schema, batch, seed=seed, device=device)
    train = mode == "train"

    if provider == "deepctr":
        if udg:
            raise BenchError("DeepCTR-Torch has no UDG variants")
        ok, why = deepctr_available()
        if not ok:
            raise BenchError(why)
        net, names = build_deepctr(model, schema, embed_dim, device=device, seed=seed)
        x, y = deepctr_input(data, names), data["label"].float()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        if train:
            net.train()

            def step():
                # DeepCTR-Torch's BaseModel.fit, one iteration
                pred = net(x).squeeze(-1)
                opt.zero_grad()
                loss = F.binary_cross_entropy(pred, y, reduction="sum") + net.get_regularization_loss() + net.aux_loss
                loss.backward()
                opt.step()
                return loss.detach()
        else:
            net.eval()

            def step():
                with torch.no_grad():
                    return net(x)
        return Case(provider, model, udg, batch, hist_len, embed_dim, mode, step,
                    sum(p.numel() for p in net.parameters()), str(device))

    torch.manual_seed(seed)
    net = models.build(model, schema, udg=udg, embed_dim=embed_dim, **(hparams or {})).to(device)
    net.train(train)
    fields = net.required_fields(training=train)
    data = {k: v for k, v in data.items() if k in fields}
    backend = None if provider == "fused" else "reference"
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    if provider == "compile":
        # The reference model compiled: the udg_fast ops choose their backend while being traced,
        # so tracing under use_backend("reference") puts the eager ops into inductor's graph.
        loss_fn = torch.compile(lambda b: net.loss(b)[0]) if train else torch.compile(net)
    else:
        loss_fn = (lambda b: net.loss(b)[0]) if train else net

    if train:
        def step():
            with udg_fast.use_backend(backend):
                loss = loss_fn(data)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            return loss.detach()
    else:
        def step():
            with udg_fast.use_backend(backend), torch.no_grad():
                return loss_fn(data)
    return Case(provider, model, udg, batch, hist_len, embed_dim, mode, step, models.count_parameters(net),
                str(device))


# ---- timing ------------------------------------------------------------------------------------

def time_case(case: Case, min_rounds: int = 3, max_rounds: int = 20, min_seconds: float = 1.0,
              timer: Callable[[], float] = time.perf_counter) -> dict:
    """Median seconds per step over at least `min_rounds` rounds (more, up to `max_rounds`, until
    `min_seconds` have been spent), after `case.warmup()`."""
    case.warmup()
    times: list[float] = []
    spent = 0.0
    while len(times) < max_rounds and (len(times) < min_rounds or spent < min_seconds):
        t = timer()
        case.step()
        _sync(case.device)
        dt = timer() - t
        times.append(dt)
        spent += dt
    med = _median(times)
    times.sort()
    return {"provider": case.provider, "model": case.model, "udg": case.udg, "batch": case.batch,
            "hist_len": case.hist_len, "embed_dim": case.embed_dim, "mode": case.mode, "median_s": med,
            "min_s": times[0], "rounds": len(times), "setup_s": case.setup_seconds, "parameters": case.parameters}


def _median(xs: Sequence[float]) -> float:
    xs = sorted(xs)
    k = len(xs) // 2
    return xs[k] if len(xs) % 2 else 0.5 * (xs[k - 1] + xs[k])


def run_interleaved(cases: Sequence[Case], rounds: int = 5,
                    timer: Callable[[], float] = time.perf_counter) -> list[dict]:
    """Time `cases` (the providers of a model's base and UDG rows) in interleaved rounds: round r
    times one step of every case in turn, so a burst of load from other processes on a shared
    machine hits all of them alike instead of whichever happened to run then. Median and min per
    case."""
    for c in cases:
        c.warmup()
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(rounds):
        for i, c in enumerate(cases):
            t = timer()
            c.step()
            _sync(c.device)
            times[i].append(timer() - t)
    return [{"provider": c.provider, "model": c.model, "udg": c.udg, "batch": c.batch, "hist_len": c.hist_len,
             "embed_dim": c.embed_dim, "mode": c.mode, "median_s": _median(ts), "min_s": min(ts),
             "rounds": len(ts), "setup_s": c.setup_seconds, "parameters": c.parameters}
            for c, ts in zip(cases, times)]


# ---- peak memory -------------------------------------------------------------------------------

def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of the bytes allocated and not yet freed while `fn()` runs, above what was allocated
    before: the running sum of the profiler's allocation events (`profile_memory=True` records
    every allocation and free of torch's CPU allocator with its size and time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    if not events:
        raise RuntimeError("the profiler recorded no CPU memory events")
    events.sort(key=lambda x: x[0])
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def measure_peak_memory(provider: str = "fused", model: str = "dien", udg: bool = True, batch: int = 2048,
                        hist_len: int = 100, embed_dim: int = 18, device="cpu", seed: int = 0) -> dict:
    """Peak memory of one training step of (model, udg) with `provider` ("fused" or "reference"),
    after two warm-up steps (so gradients and Adam's state exist, as in steady training).

    CPU: the peak, over the step, of the bytes torch's CPU allocator has handed out and not taken
    back, above those live before the step (`_cpu_peak_bytes`; allocator caching and the Python
    heap are not included). CUDA: `torch.cuda.max_memory_allocated` over the step minus
    `memory_allocated` before it (the same quantity from the caching allocator's own counters).
    """
    if provider not in ("fused", "reference"):
        raise BenchError(f"peak memory compares the fused and the reference backends, got {provider!r}")
    case = make_case(provider, model, udg, batch, hist_len, embed_dim, "train", device=device, seed=seed)
    case.warmup(2)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        case.step()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - before
        method = "torch.cuda.max_memory_allocated - memory_allocated before the step"
    else:
        peak = _cpu_peak_bytes(case.step)
        method = "torch.profiler(profile_memory=True): peak of the running sum of CPU allocation events"
    return {"provider": provider, "model": model, "udg": udg, "batch": batch, "hist_len": hist_len,
            "embed_dim": embed_dim, "device": str(dev), "peak_bytes": int(peak), "method": method}


# ---- the table ---------------------------------------------------------------------------------

def _ms(r):
    return r["median_s"] * 1e3


def format_table(results: Sequence[dict]) -> str:
    """A markdown table: one row per (mode, batch, T, d, variant); ms per step and samples/s of
    every provider, then the ratios the issue asks for: fused vs reference (×, higher is better),
    fused vs compile, DeepCTR-Torch / fused (×), and on UDG rows the cost of UDG (UDG / base,
    fused)."""
    by = {}
    for r in results:
        by[(r["mode"], r["batch"], r["hist_len"], r["embed_dim"], r["model"], r["udg"], r["provider"])] = r
    providers = [p for p in PROVIDERS if any(r["provider"] == p for r in results)]
    keys = sorted({k[:6] for k in by}, key=lambda k: (MODES.index(k[0]), k[1], k[2], k[3],
                                                       BASE_MODELS.index(k[4]) if k[4] in BASE_MODELS else 9, k[5]))
    head = ["mode", "B", "T", "d", "model"] + [f"{p} ms" for p in providers] + ["fused samples/s"]
    ratio_cols = [c for c, need in (("fused vs reference", "reference"), ("fused vs compile", "compile"),
                                    ("deepctr / fused", "deepctr")) if need in providers]
    head += ratio_cols + ["UDG / base (fused)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 5 + "---:|" * (len(head) - 5)]
    for k in keys:
        row = {p: by.get(k + (p,)) for p in providers}
        f = row.get("fused")
        cells = [k[0], str(k[1]), str(k[2]), str(k[3]), label(k[4], k[5])]
        cells += [f"{_ms(row[p]):.1f}" if row[p] else "" for p in providers]
        cells.append(f"{k[1] / f['median_s']:,.0f}" if f else "")
        for c in ratio_cols:
            other = row.get(c.split()[-1] if c.startswith("fused") else "deepctr")
            if c.startswith("deepctr"):
                base_key = k[:5] + (False, "deepctr")  # DeepCTR has no UDG: compare with its base model
                other = by.get(base_key)
            cells.append(f"{_ms(other) / _ms(f):.2f}×" if f and other else "")
        base = by.get(k[:5] + (False, "fused"))
        cells.append(f"{_ms(f) / _ms(base):.2f}" if k[5] and f and base else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment() -> dict:
    """Machine and versions for a results file."""
    import os
    import platform

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env = {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
           "platform": platform.platform()}
    try:
        env["loadavg"] = os.getloadavg()
    except OSError:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    ok, _ = deepctr_available()
    if ok:
        env["deepctr_torch"] = _quiet_import_deepctr()[0].__version__
    import udg_fast

    env["udg_fast_backends"] = {k: v["usable"] for k, v in udg_fast.backends().items()}
    return env


# ---- the command line --------------------------------------------------------------------------

def _csv(text: str) -> list[str]:
    return [x.strip().lower() for x in text.split(",") if x.strip()]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="model-level throughput: fused vs reference kernels vs DeepCTR-Torch",
        description="Time training steps (forward + backward + Adam) and inference of the models on a synthetic "
                    "batch shaped like ml-100k, per provider, and print ms/step, samples/s and the ratios. "
                    "A short version of benchmarks/bench_models.py (see docs/throughput.md).")
    p.add_argument("--models", default=",".join(BASE_MODELS),
                   help="comma-separated base models; each runs with and without UDG (default: all five)")
    p.add_argument("--providers", default="fused,reference,deepctr",
                   help=f"comma-separated, of {', '.join(PROVIDERS)} (default fused,reference,deepctr; "
                        "deepctr is skipped with a note when not installed; compile takes minutes per variant)")
    p.add_argument("--modes", default="train", help="train, infer or train,infer (default train)")
    p.add_argument("--batch", type=int, default=2048, help="batch size (default 2048)")
    p.add_argument("--hist-len", type=int, default=50, help="history length T (default 50)")
    p.add_argument("--embed-dim", type=int, default=18, help="embedding size d (default 18)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed steps per case, after 2 warm-up steps, interleaved over the providers (default 3)")
    p.add_argument("--timer", choices=("wall", "process"), default="wall",
                   help="wall clock, or this process's CPU time (steadier on a shared machine; one thread only)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--memory", action="store_true",
                   help="also measure the peak memory of one DIEN+UDG training step, fused vs reference")
    p.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                   help="a hyper-parameter of the udg_fast models, e.g. --hp gate_hidden=32 (not DeepCTR's)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    import json
    import os
    from pathlib import Path

    def fail(msg):
        print(f"udg-fast bench: error: {msg}", file=sys.stderr)
        return 2

    try:
        models_ = _csv(args.models)
        providers = _csv(args.providers)
        modes = _csv(args.modes)
        if not models_ or not providers or not modes:
            raise BenchError("--models, --providers and --modes must each name at least one")
        for m in models_:
            if m not in BASE_MODELS:
                raise BenchError(f"--models: unknown model {m!r} (models: {', '.join(BASE_MODELS)})")
        for p in providers:
            if p not in PROVIDERS:
                raise BenchError(f"--providers: unknown provider {p!r} (providers: {', '.join(PROVIDERS)})")
        for m in modes:
            if m not in MODES:
                raise BenchError(f"--modes: unknown mode {m!r} (modes: {', '.join(MODES)})")
        for k in ("batch", "hist_len", "embed_dim", "rounds"):
            if getattr(args, k) < 1:
                raise BenchError(f"--{k.replace('_', '-')} must be a positive int, got {getattr(args, k)}")
        if args.threads is not None:
            if args.threads < 1:
                raise BenchError(f"--threads must be a positive int, got {args.threads}")
            torch.set_num_threads(args.threads)
        from udg_fast.data.cli import parse_pairs
        from udg_fast.train import resolve_device

        hparams = parse_pairs(args.hp, "--hp")
        device = resolve_device(args.device)
        if args.timer == "process" and (torch.get_num_threads() > 1 or device.type != "cpu"):
            # process time adds up every thread's CPU time (and does not see a GPU's): with two threads
            # a 3.7 ms PNN step read as 183 ms (the idle OpenMP worker spins)
            raise BenchError(f"--timer process measures one CPU thread: give --threads 1 (torch has "
                             f"{torch.get_num_threads()} here) and a CPU device, or use --timer wall")
    except (BenchError, ValueError) as e:
        return fail(str(e))

    notes = []
    if "deepctr" in providers:
        ok, why = deepctr_available()
        if not ok:
            providers = [p for p in providers if p != "deepctr"]
            notes.append(f"deepctr skipped: {why}")
    results = []
    timer = time.process_time if args.timer == "process" else time.perf_counter
    t0 = time.perf_counter()
    for mode in modes:
        for m in models_:
            # a model's base and UDG variants in one interleaved group: UDG / base compares steps
            # taken in the same rounds (base PNN's step varied 19–34 ms between separate runs here)
            try:
                cases = [make_case(p, m, u, args.batch, args.hist_len, args.embed_dim, mode, device=device,
                                   hparams=None if p == "deepctr" else hparams)
                         for _, u in variants([m]) for p in providers if not (p == "deepctr" and u)]
            except ValueError as e:  # a bad --hp (ModelError) names itself
                return fail(str(e))
            for r in run_interleaved(cases, args.rounds, timer):
                results.append(r)
                extra = f", compile {r['setup_s']:.0f} s" if r["provider"] == "compile" else ""
                print(f"  {mode:5s} {label(m, r['udg']):12s} {r['provider']:9s} {_ms(r):9.1f} ms/step{extra}",
                      file=sys.stderr, flush=True)
            del cases
    env = environment()
    print(f"udg-fast bench: B={args.batch}, T={args.hist_len}, d={args.embed_dim}, {device}, "
          f"{torch.get_num_threads()} thread(s), median of {args.rounds} interleaved steps after 2 warm-up, "
          f"{'wall clock' if args.timer == 'wall' else 'process time'}; "
          f"{env['cpu']}, torch {env['torch']}"
          + (f", deepctr-torch {env['deepctr_torch']}" if "deepctr_torch" in env else "")
          + (f", load average {env['loadavg'][0]:.2f}" if "loadavg" in env else "")
          + (f"; hyper-parameters {hparams}" if hparams else ""))
    print(format_table(results))
    mem = []
    if args.memory:
        for p in ("fused", "reference"):
            mem.append(measure_peak_memory(p, "dien", True, args.batch, args.hist_len, args.embed_dim, device))
        print(f"peak memory of one dien+udg training step (B={args.batch}, T={args.hist_len}, d={args.embed_dim}): "
              + ", ".join(f"{r['provider']} {r['peak_bytes'] / 2**20:.1f} MiB" for r in mem)
              + f" [{mem[0]['method']}]")
    for n in notes:
        print(n)
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if args.json:
        from udg_fast.train import _atomic_write_text

        _atomic_write_text(json.dumps({"environment": env, "hparams": hparams, "results": results, "memory": mem,
                                       "argv": sys.argv, "cwd": os.getcwd()}, indent=2, default=str) + "\n",
                           Path(args.json))
    return 0
