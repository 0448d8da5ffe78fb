"""``udg-fast experiment``: the paper's tables and figures, one command each.

    udg-fast experiment table2|table3|tsne|table5|all --dataset ml-100k [--models all] [--runs 5]
                        [--out DIR] [--data-path P] [-o KEY=VALUE] [--hp KEY=VALUE] [--epochs 3]
                        [--threads 1] [--runs-dir DIR/runs] [--tsne-users U1,U2] [--no-progress]
    udg-fast experiment report --out DIR       rebuild DIR/README.md from what is there
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from udg_fast.data.cli import add_data_arguments

CHOICES = ("table2", "table3", "tsne", "table5", "all", "report")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "experiment", help="the paper's tables and figures (table2, table3, tsne, table5, all, report)",
        description="Train every needed run (finished runs are reused: an interrupted command continues), "
                    "then write the tables, CSVs, figures and, for `all`, the report DIR/README.md.")
    p.add_argument("experiment", choices=CHOICES,
                   help="table2: base vs UDG; table3: vs doubled embedding; tsne: Figure 3; table5: cold start; "
                        "all: all of them + the report; report: rebuild the report only")
    add_data_arguments(p.add_argument_group("data"),
                       dataset_help="dataset name (udg-fast data list; default ml-100k), or the path of its raw "
                                    "files named like it (ml-1m.zip)")
    g = p.add_argument_group("runs")
    g.add_argument("--models", default="all", help="comma-separated models (pnn,deepfm,wdl,din,dien) or all")
    g.add_argument("--runs", type=int, default=5, help="seeds per variant: 0 … runs−1 (default 5)")
    g.add_argument("--out", default=None, help="output folder (default results/DATASET)")
    g.add_argument("--runs-dir", default=None, help="the run store (default OUT/runs; kept out of git)")
    g.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                   help="a hyper-parameter for every model that takes it, e.g. --hp gate_scale=2")
    g.add_argument("--tsne-users", default=None, help="the two users of the t-SNE figure, e.g. 13,405")
    g = p.add_argument_group("training (default: the authors' recipe)")
    g.add_argument("--epochs", type=int, default=3)
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--lr-decay", type=float, default=0.5)
    g.add_argument("--patience", type=int, default=1)
    g.add_argument("--device", default="auto")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    g.add_argument("--no-progress", action="store_true", help="no per-run progress bars")
    p.set_defaults(func=_cmd_experiment)


def command_line(args) -> str:
    """The canonical command that repeats this one (every option that differs from its default)."""
    parts = ["udg-fast", "experiment", args.experiment, "--dataset", args.dataset]
    if args.data_path:
        parts += ["--data-path", args.data_path]
    for o in args.data_option:
        parts += ["-o", o]
    if args.experiment != "report":
        parts += ["--models", args.models, "--runs", str(args.runs)]
    parts += ["--out", str(args.out)]
    if args.runs_dir:
        parts += ["--runs-dir", args.runs_dir]
    for h in args.hp:
        parts += ["--hp", h]
    if args.tsne_users:
        parts += ["--tsne-users", args.tsne_users]
    for opt, default in (("epochs", 3), ("batch_size", 256), ("lr", 1e-3), ("lr_decay", 0.5), ("patience", 1),
                         ("device", "auto"), ("threads", None)):
        v = getattr(args, opt)
        if v != default:
            parts += ["--" + opt.replace("_", "-"), str(v)]
    return shlex.join(parts)


def _fail(msg: str) -> int:
    print(f"udg-fast experiment: error: {msg}", file=sys.stderr)
    return 2


def _cmd_experiment(args) -> int:
    from udg_fast.data import DataError
    from udg_fast.experiments import ExperimentError, Setup, make_context, run_all, run_experiment, write_report
    from udg_fast.experiments.runner import check_seeds
    from udg_fast.models import ModelError
    from udg_fast.data.cli import parse_pairs

    if args.out is None:
        args.out = f"results/{args.dataset}"
    out = Path(args.out)
    if args.experiment == "report":
        if not (out / "experiment.json").is_file():
            return _fail(f"--out {out}: no experiment.json there (run an experiment into it first)")
        print(f"wrote {write_report(out)}")
        return 0
    try:
        data_opts = parse_pairs(args.data_option, "data option")
        hp = parse_pairs(args.hp, "hyper-parameter")
        for k in ("hidden", "att_hidden", "aux_hidden"):
            if isinstance(hp.get(k), int):
                hp[k] = (hp[k],)
        seeds = check_seeds(args.runs)
        users = None
        if args.tsne_users:
            try:
                users = [int(u) for u in args.tsne_users.split(",")]
            except ValueError:
                raise ExperimentError(f"--tsne-users must be two comma-separated user ids, got {args.tsne_users!r}") \
                    from None
        if out.exists() and not out.is_dir():
            raise ExperimentError(f"--out {out} exists and is not a folder")
        setup = Setup(args.dataset, out, data_path=args.data_path, data_options=data_opts, hparams=hp,
                      train=dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
                                 patience=args.patience, device=args.device),
                      runs_dir=args.runs_dir, threads=args.threads,
                      progress=False if args.no_progress else None)
        ctx = make_context(setup, args.models)
        cmd = command_line(args)
        if args.experiment == "all":
            res = run_all(ctx, seeds, cmd, tsne_users=users)
            print(f"wrote {res['report']}")
        else:
            res = run_experiment(args.experiment, ctx, seeds, cmd, tsne_users=users)
            if res.get("markdown"):
                print(res["markdown"])
            files = [str(res[k]) for k in ("table", "csv", "summary_csv", "runs_csv", "png", "json") if res.get(k)]
            print("wrote " + ", ".join(files))
    except (ExperimentError, DataError, ModelError, ValueError) as e:
        return _fail(str(e))
    return 0
