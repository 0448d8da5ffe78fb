"""The `udg-fast` command line.

Each area of the package adds its own sub-command through an `add_parser(subparsers)` function
that registers a parser and sets `func` (called with the parsed args, returns an exit code):

    udg-fast backends              the backend table (udg_fast.backends())
    udg-fast data prepare|info     udg_fast/data/cli.py
    udg-fast coldstart             udg_fast/coldstart/cli.py
    udg-fast bench                 udg_fast/bench.py
    udg-fast experiment …          udg_fast/experiments/cli.py
"""
from __future__ import annotations

import argparse
import sys


def _add_backends_parser(sub):
    p = sub.add_parser("backends", help="show which kernel backends are built and usable")
    p.set_defaults(func=_cmd_backends)


def _cmd_backends(args) -> int:
    from udg_fast import format_backends

    print(format_backends())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="udg-fast",
        description="User-Dependent Gating (UDG) recommendation models with fused kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_backends_parser(sub)
    from udg_fast.data.cli import add_parser as add_data_parser

    add_data_parser(sub)
    from udg_fast.models.cli import add_parsers as add_model_parsers  # udg-fast train | evaluate
    add_model_parsers(sub)
    from udg_fast.coldstart.cli import add_parser as add_coldstart_parser  # udg-fast coldstart
    add_coldstart_parser(sub)
    from udg_fast.bench import add_parser as add_bench_parser  # udg-fast bench
    add_bench_parser(sub)
    from udg_fast.experiments.cli import add_parser as add_experiment_parser  # udg-fast experiment
    add_experiment_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # python -m udg_fast.cli
    sys.exit(main())
