"""`make demo`: DIN and DIN+UDG trained on ml-100k with the authors' recipe, side by side.

Prints the backend table, then trains DIN without and with User-Dependent Gating (3 epochs,
batch 256, Adam 1e-3 halved every epoch, embedding size 18, seed 0; the epoch with the best
valid AUC is kept) and prints their test metrics (AUC, Log Loss, RMSE, RIG, gAUC), the seconds per
training epoch and the parameter counts. About a minute on a 2-core CPU (50 s on 2026-11-28; ml-100k
is fetched and prepared first if it is not cached yet); run `udg-fast train` for any other model.

    python -m udg_fast.demo [--epochs 3] [--threads 1] [--dataset ml-100k]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

import udg_fast


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m udg_fast.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    # One thread by default: on this project's shared 2-core machines a second OpenMP thread that
    # waits for a busy core made a DIN+UDG step 7× slower (341 vs 47 ms at batch 256, load ≈ 5).
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)

    print("udg_fast", udg_fast.__version__, "| torch", torch.__version__)
    print(udg_fast.format_backends())
    print()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from udg_fast import data, models, train

    t0 = time.perf_counter()
    ds = data.load(args.dataset)
    print(f"{ds.name}: {len(ds.train)} train / {len(ds.valid)} valid / {len(ds.test)} test samples "
          f"({time.perf_counter() - t0:.1f} s to load)", flush=True)
    cfg = train.TrainConfig(epochs=args.epochs, seed=args.seed)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="udg_demo_") as tmp:
        for udg in (False, True):
            label = "din+udg" if udg else "din"
            print(f"training {label} ...", flush=True)
            train.set_seed(args.seed)
            model = models.build("din", ds.schema, udg=udg, embed_dim=18)
            res = train.fit(model, ds, cfg, out_dir=f"{tmp}/{label}", log=lambda s: print("  " + s, flush=True))
            rows[label] = {**res["test"], "spe": res["seconds_per_epoch"], "params": res["parameters"],
                           "best": res["best_epoch"]}
    print()
    print(f"{ds.name}, test split (epoch with the best valid AUC; {torch.get_num_threads()} CPU thread(s), "
          f"device {res['device']}):")
    print(train.format_table(rows, extra=(("spe", "s/epoch", ".1f"), ("best", "epoch", "d"), ("params", "params", ","))))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
