"""``udg-fast coldstart``: the cold-start study (the UDG paper's Table 5 and Figure 4).

    udg-fast coldstart --dataset ml-100k --models pnn,deepfm [--k 10] [--lower 40] [--upper 100]
                       [--seeds 3] [--out DIR] [--threads 1] [--pre-epochs 3] [--meta-steps 300]
                       [--meta-alpha 2.0] [--first-order] [--hp KEY=VALUE ...] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

from udg_fast.data.cli import add_data_arguments


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "coldstart", help="the cold-start study: random vs meta-learned initial UDG embeddings (Table 5)",
        description="Pre-train each model (with UDG) and the meta-embedding generator on the active users, "
                    "then test on the new users' held-out samples after random or meta initialisation and after "
                    "warm-up on batch-a, -b, -c. Writes table5.md, table5.csv, figure4.png, table5.json.")
    add_data_arguments(p, dataset_help="a dataset with user-profile fields (default ml-100k)")
    p.add_argument("--models", default="pnn,deepfm", help="comma-separated models (default pnn,deepfm)")
    p.add_argument("--k", type=int, default=None, help="K, samples in each of batch-a, -b, -c (default 10)")
    p.add_argument("--lower", type=int, default=None, help="new users have at least this many samples (default 4K)")
    p.add_argument("--upper", type=int, default=None,
                   help="new users have at most, active users more than, this many samples (default 100)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1; default 3)")
    p.add_argument("--out", default=None, help="output folder (default runs/coldstart-DATASET)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--pre-epochs", type=int, default=None, help="pre-training epochs on the active users (3)")
    p.add_argument("--meta-steps", type=int, default=None, help="generator training steps (300)")
    p.add_argument("--meta-alpha", type=float, default=None, help="α, the inner step (2.0)")
    p.add_argument("--meta-lr", type=float, default=None, help="β, the generator's Adam step (1e-2)")
    p.add_argument("--first-order", action="store_true", help="first-order meta-gradient (no second derivative)")
    p.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                   help="a model hyper-parameter, e.g. --hp gate_scale=2.0 --hp embed_dim=18")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other study option (udg_fast.coldstart.StudyConfig), e.g. --set warm_lr=5e-4")
    p.add_argument("--device", default=None, help="auto, cpu, cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_coldstart)


def _cmd_coldstart(args) -> int:
    import torch

    from udg_fast.coldstart import ColdStartError, run_table5
    from udg_fast.data import DataError
    from udg_fast.models import ModelError
    from udg_fast.data.cli import parse_pairs

    try:
        over = parse_pairs(args.set, "option")
        hp = parse_pairs(args.hp, "hyper-parameter")
        if hp:
            over["hparams"] = {**over.get("hparams", {}), **hp}
        for k, v in (("pre_epochs", args.pre_epochs), ("meta_steps", args.meta_steps),
                     ("meta_alpha", args.meta_alpha), ("meta_lr", args.meta_lr), ("device", args.device)):
            if v is not None:
                over[k] = v
        if args.first_order:
            over["first_order"] = True
        if args.threads:
            torch.set_num_threads(args.threads)
        out = Path(args.out or f"runs/coldstart-{args.dataset}")
        res = run_table5(args.dataset, args.models, out, seeds=args.seeds, k=args.k, lower=args.lower,
                         upper=args.upper, data_path=args.data_path, data_options=parse_pairs(args.data_option, "data option"),
                         progress=False if args.no_progress else None, **over)
    except (ColdStartError, DataError, ModelError, ValueError, FloatingPointError) as e:
        print(f"udg-fast: error: {e}", file=sys.stderr)
        return 2
    print(res["markdown"])
    print(f"wrote {res['table']}, {res['csv']}, {res['png']}, {res['json']} ({res['seconds']:.0f} s)")
    return 0
