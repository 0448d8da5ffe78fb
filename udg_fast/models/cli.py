"""``udg-fast train`` and ``udg-fast evaluate``.

    udg-fast train --dataset ml-100k --model din [--udg] [--epochs 3] [--seed 0] [--out DIR]
                   [--embed-dim 18] [--hidden 256,128] [--gate-scale 1] [--gate-inputs paper]
                   [--hp KEY=VALUE ...] [--batch-size 256] [--lr 1e-3] [--lr-decay 0.5]
                   [--patience 1] [--device auto] [--threads N] [--resume DIR/last.pt]
    torchrun --nproc_per_node=N -m udg_fast.cli train ... --distributed   (DDP; --batch-size is global)
    udg-fast evaluate --checkpoint DIR/best.pt [--split test]
    udg-fast export --checkpoint DIR/best.pt --out model.pt2 [--reference]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from udg_fast.data.cli import add_data_arguments, parse_pairs


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, e.g. 256,128; got {text!r}") from None


def add_parsers(subparsers) -> None:
    from udg_fast.models import MODELS

    p = subparsers.add_parser("train", help="train a model (optionally with UDG), evaluate it on test",
                              description="Train on the train split, keep the epoch with the best valid AUC, "
                                          "print its test metrics; write best.pt, last.pt and metrics.json to --out.")
    add_data_arguments(p.add_argument_group("data"))
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, choices=sorted(MODELS), help="the base model")
    g.add_argument("--udg", action="store_true", help="add User-Dependent Gating")
    g.add_argument("--embed-dim", type=int, default=None, help="embedding size d (default 18)")
    g.add_argument("--hidden", type=_ints, default=None, help="hidden widths of the MLP, e.g. 256,128")
    g.add_argument("--gate-scale", type=float, default=None, help="UDG gate scale γ (default 1, the paper's)")
    g.add_argument("--gate-inputs", choices=("paper", "official"), default=None,
                   help="UDG gate input: paper (item, behaviour, UDG embedding) or official (UDG + profile)")
    g.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                   help="any other hyper-parameter, e.g. --hp att_norm=softmax --hp product=outer")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=3)
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--lr-decay", type=float, default=0.5, help="learning-rate factor per epoch (0.5: halved)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--patience", type=int, default=1, help="early stopping: epochs without a better valid AUC")
    g.add_argument("--seed", type=int, default=0, help="seeds initialisation and shuffling")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")
    g.add_argument("--out", default=None,
                   help="output folder (default runs/DATASET-MODEL[-udg]-seedS; with --resume: the last.pt's)")
    g.add_argument("--resume", default=None, metavar="LAST_PT", help="continue a run from its last.pt")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it such a folder is refused)")
    g.add_argument("--distributed", action="store_true",
                   help="multi-process training under torchrun (DistributedDataParallel; gloo on CPU, NCCL on GPU): "
                        "the data sharded by rank, --batch-size the global batch, metrics over the whole split, "
                        "files written by rank 0 (docs/throughput.md)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--json", action="store_true", help="print metrics.json instead of the table")
    p.set_defaults(func=_cmd_train)

    e = subparsers.add_parser("evaluate", help="evaluate a checkpoint (best.pt) on a split",
                              description="Reload the checkpoint's dataset (or --dataset), check that it fits the "
                                          "checkpoint, and print the metrics on --split.")
    e.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by udg-fast train")
    e.add_argument("--split", default="test", choices=("train", "valid", "test"))
    add_data_arguments(e, dataset_default=None, dataset_help="another dataset than the checkpoint's")
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=int, default=8192)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(func=_cmd_evaluate)

    x = subparsers.add_parser("export", help="export a checkpoint's scoring as a torch.export program (.pt2)",
                              description="Reload the checkpoint and its dataset, export model.score on the CPU with a "
                                          "dynamic batch (udg_fast.serving.export; call it from Python with a model on "
                                          "a GPU for a GPU program), check the program against the model on "
                                          "example rows, and write it atomically. Load it with `import udg_fast; "
                                          "torch.export.load(PATH).module()(batch)` (with --reference: torch alone), "
                                          "batch a dict of exactly the fields the command prints.")
    x.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by udg-fast train")
    x.add_argument("--out", required=True, help="the .pt2 file to write")
    x.add_argument("--reference", action="store_true",
                   help="export every op's reference form: ATen only, loads without udg_fast, slower for DIN/DIEN")
    x.add_argument("--example-rows", type=int, default=256,
                   help="rows of the test split to export with and to check the program on (>= 2)")
    add_data_arguments(x, dataset_default=None, dataset_help="another dataset than the checkpoint's")
    x.add_argument("--threads", type=int, default=None)
    x.set_defaults(func=_cmd_export)


def _fail(msg: str) -> int:
    print(f"udg-fast: error: {msg}", file=sys.stderr)
    return 2


def _label(model: str, udg: bool) -> str:
    return f"{model}+udg" if udg else model


def _init_distributed(args):
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, … in the
    environment): NCCL when training on CUDA, else gloo. Returns (rank, world size)."""
    import torch
    import torch.distributed as dist

    from udg_fast import train

    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"--distributed: the environment lacks {', '.join(missing)}; start the command under "
                         f"torchrun, e.g. torchrun --nproc_per_node=2 -m udg_fast.cli train ... --distributed")
    device = train.resolve_device(args.device)
    backend = "gloo"
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        if device.index is None:
            args.device = f"cuda:{local}"
        torch.cuda.set_device(torch.device(args.device))
        backend = "nccl"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _cmd_train(args) -> int:
    from udg_fast.data import DataError
    from udg_fast.models import ModelError

    ok = False
    try:
        code = _train(args)
        ok = code == 0
        return code
    except (DataError, ModelError, ValueError, FloatingPointError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        last = _out_dir(args) / "last.pt"
        print("\nudg-fast train: interrupted" + (f"; continue with --resume {last}" if last.is_file()
                                                 else " before the first epoch ended"), file=sys.stderr)
        return 130
    finally:
        if args.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                # After a successful run all ranks meet before tearing gloo/NCCL down, so that no
                # rank destroys its process group and exits while another is still writing files
                # (a rank killed by SIGABRT, "terminate called without an active exception", once
                # in ~10 two-process test runs here). Not after an error: the other ranks may never
                # reach the barrier (torchrun stops them).
                if ok:
                    dist.barrier()
                dist.destroy_process_group()


def _out_dir(args) -> Path:
    """--out, else the resumed last.pt's folder, else runs/DATASET-MODEL[-udg]-seedS."""
    if args.out:
        return Path(args.out)
    if args.resume:
        return Path(args.resume).parent
    return Path(f"runs/{args.dataset}-{args.model}{'-udg' if args.udg else ''}-seed{args.seed}")


def _train(args) -> int:
    import torch

    from udg_fast import data, models, train

    rank = 0
    data_opts = parse_pairs(args.data_option, "data option")
    hp = parse_pairs(args.hp, "hyper-parameter")
    for k, v in (("embed_dim", args.embed_dim), ("hidden", args.hidden), ("gate_scale", args.gate_scale),
                 ("gate_inputs", args.gate_inputs)):
        if v is not None:
            hp[k] = v
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive int, got {args.threads}")
        torch.set_num_threads(args.threads)
    out = _out_dir(args)
    if args.resume is None and not args.overwrite and any((out / n).is_file()
                                                          for n in ("metrics.json", "last.pt", "best.pt")):
        raise ValueError(f"--out {out} holds a run already: --resume {out / 'last.pt'} continues it, --overwrite "
                         f"replaces it, or give another --out")
    if args.distributed:
        rank, _ = _init_distributed(args)
    cfg = train.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
                            weight_decay=args.weight_decay, patience=args.patience, seed=args.seed,
                            device=args.device, amp=not args.no_amp,
                            progress=False if args.no_progress else None, distributed=args.distributed)
    if args.distributed and rank != 0:  # rank 0 prepares (and caches) the data first, then the others read it
        torch.distributed.barrier()
    ds = data.load(args.dataset, args.data_path, progress=False if args.no_progress or rank else None,
                   **data_opts)
    if args.distributed and rank == 0:
        torch.distributed.barrier()
    train.set_seed(args.seed)
    model = models.build(args.model, ds.schema, udg=args.udg, **hp)
    info = {"name": ds.name, "path": None if args.data_path is None else str(Path(args.data_path).resolve()),
            "options": dict(ds.meta.get("options", {}))}
    result = train.fit(model, ds, cfg, out_dir=out, resume=args.resume, dataset_info=info)
    if rank != 0:  # rank 0 reports
        return 0
    if args.json:
        print(train.to_json(result), end="")
        return 0
    row = dict(result.get("test") or {})
    row.update(epochs=len(result["history"]), best=result["best_epoch"], spe=result["seconds_per_epoch"],
               params=result["parameters"])
    chosen = "best valid AUC" if result.get("valid") is not None else "the last epoch: the valid split is empty"
    if result.get("test") is None:
        print(f"{ds.name}: the test split is empty, no test metrics (epoch {result['best_epoch']} of "
              f"{len(result['history'])} kept, {chosen})")
    else:
        print(f"{ds.name} test metrics (epoch {result['best_epoch']} of {len(result['history'])}, {chosen}):")
    print(train.format_table({_label(args.model, args.udg): row},
                             extra=(("spe", "s/epoch", ".1f"), ("params", "params", ","))))
    print(f"wrote {out / 'metrics.json'}, {out / 'best.pt'}")
    return 0


def _load_run(args, device):
    """The checkpoint's dataset (or --dataset) and its model: (dataset, model, checkpoint)."""
    from udg_fast import data, train
    from udg_fast.models import ModelError

    ckpt = train.read_checkpoint(args.checkpoint)
    info = dict(ckpt.get("dataset") or {})
    if args.dataset is not None:
        info = {"name": args.dataset, "path": args.data_path, "options": {}}
    if not info.get("name"):
        raise ModelError(f"{args.checkpoint}: records no dataset; pass --dataset")
    opts = {**info.get("options", {}), **parse_pairs(args.data_option, "data option")}
    ds = data.load(info["name"], args.data_path or info.get("path"), progress=False, **opts)
    model, ckpt = train.load_checkpoint(args.checkpoint, ds.schema, map_location=device)
    return ds, model, ckpt


def _cmd_evaluate(args) -> int:
    import torch

    from udg_fast import train
    from udg_fast.data import DataError
    from udg_fast.models import ModelError

    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        device = train.resolve_device(args.device)
        ds, model, ckpt = _load_run(args, device)
        split = ds[args.split]
        m = train.evaluate_split(model, split, train.positive_rate(ds.train), args.batch_size, device)
    except (DataError, ModelError, ValueError) as e:
        return _fail(str(e))
    if args.json:
        print(train.to_json(m), end="")
        return 0
    cfg = ckpt["config"]
    print(f"{args.checkpoint} (epoch {ckpt['epoch'] + 1}) on {ds.name} {args.split}:")
    print(train.format_table({_label(cfg["model"], cfg["udg"]): m}))
    return 0


def _cmd_export(args) -> int:
    import torch

    from udg_fast import serving
    from udg_fast.data import DataError
    from udg_fast.data.cache import atomic_write_bytes
    from udg_fast.models import ModelError

    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.example_rows < 2:
            raise ValueError(f"--example-rows must be >= 2 (torch.export specialises a batch of 1), got {args.example_rows}")
        ds, model, _ = _load_run(args, torch.device("cpu"))
        split = ds.test if len(ds.test) >= 2 else ds.train
        if len(split) < 2:
            raise ValueError(f"{ds.name}: needs at least 2 rows in its test or train split to export with")
        batch = next(split.batches(min(args.example_rows, len(split)), fields=model.required_fields()))
        ep = serving.export(model, batch, kernels=not args.reference)
        # the program must score the example rows as the model does before it is written
        diff = (ep.module()(batch) - model.score(batch)).abs().max().item()
        if not diff <= 1e-5:
            raise ModelError(f"the exported program differs from model.score by {diff:.3g} on the example rows")
        out = Path(args.out)
        atomic_write_bytes(out, lambda f: torch.export.save(ep, f))
    except (DataError, ModelError, ValueError) as e:
        return _fail(str(e))
    ops = sorted({str(n.target).split(".")[1] for n in ep.graph.nodes
                  if n.op == "call_function" and str(n.target).startswith("udg_fast.")})
    print(f"wrote {out} ({out.stat().st_size:,} bytes): model.score of {args.checkpoint}, dynamic batch, "
          f"max |difference| {diff:.2g} on {len(batch['hist_len'])} example rows")
    if ops:
        print(f"udg_fast ops in the program: {', '.join(ops)}; load it with "
              f"`import udg_fast; torch.export.load({str(out)!r}).module()(batch)`")
    else:
        print(f"ATen operators only; load it with `torch.export.load({str(out)!r}).module()(batch)`")
    # torch.export checks the dict's keys: a batch of a split (label, timestamp, …) is refused
    print(f"batch: a dict of exactly these fields, [B] or [B, {batch['hist_item'].shape[1]}] int64 tensors: "
          f"{', '.join(model.required_fields())}")
    return 0
