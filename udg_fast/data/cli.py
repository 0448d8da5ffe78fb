"""``udg-fast data prepare|info``.

    udg-fast data prepare NAME [--path P] [--max-len L] [--seed S] [-o KEY=VALUE ...] [--refresh]
    udg-fast data info NAME [--path P] [--max-len L] [--seed S] [-o KEY=VALUE ...]
    udg-fast data list
"""
from __future__ import annotations

import ast
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="prepare datasets and show their statistics")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    def common(q, with_refresh):
        q.add_argument("name", help="dataset name (udg-fast data list)")
        q.add_argument("--path", "--data-path", dest="path", default=None,
                       help="raw files: a zip or a folder (ml-100k: optional)")
        q.add_argument("--max-len", type=int, default=None, help="history length (default 50)")
        q.add_argument("--seed", type=int, default=None,
                       help="seed of every random draw: negative sampling, synthetic data (default 0)")
        q.add_argument("-o", "--option", "--data-option", dest="option", action="append", default=[],
                       metavar="KEY=VALUE",
                       help="a dataset-specific option, e.g. -o n_users=2000 (synthetic)")
        if with_refresh:
            q.add_argument("--refresh", action="store_true", help="prepare again even if cached")
            q.add_argument("--no-progress", action="store_true", help="no progress bars")

    q = sub.add_parser("prepare", help="prepare (download, parse, cache) a dataset and print its statistics")
    common(q, True)
    q.set_defaults(func=_cmd_prepare)
    q = sub.add_parser("info", help="print a prepared dataset's statistics from the cache")
    common(q, False)
    q.set_defaults(func=_cmd_info)
    q = sub.add_parser("list", help="list the datasets and their options")
    q.set_defaults(func=_cmd_list)


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_pairs(items, what: str) -> dict:
    """["key=value", …] → {key: value}: values read as Python literals (ints, floats, tuples, …)
    where they parse, else kept as strings; '-' in keys becomes '_'. The one KEY=VALUE parser of
    every sub-command (-o data options, --hp hyper-parameters, …); a bad item raises ValueError
    naming `what`."""
    out = {}
    for kv in items:
        if "=" not in kv:
            raise ValueError(f"{what} {kv!r} is not KEY=VALUE")
        k, v = kv.split("=", 1)
        out[k.strip().replace("-", "_")] = _value(v.strip())
    return out


def add_data_arguments(parser, dataset_default: str | None = "ml-100k", dataset_help: str | None = None) -> None:
    """--dataset, --data-path and -o/--data-option, the dataset arguments of the sub-commands that
    train (train, evaluate, coldstart, experiment); parse the options with `parse_pairs`."""
    parser.add_argument("--dataset", default=dataset_default,
                        help=dataset_help or f"dataset name (udg-fast data list; default {dataset_default})")
    # --path and --option too, the names of `udg-fast data prepare` (the data layer's errors say "--path")
    parser.add_argument("--data-path", "--path", dest="data_path", default=None,
                        help="raw files of the dataset (a zip or a folder)")
    parser.add_argument("-o", "--data-option", "--option", dest="data_option", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="a dataset option, e.g. -o max_len=100 or -o n_users=2000 (synthetic)")


def _options(args) -> dict:
    opts = {}
    if args.max_len is not None:
        opts["max_len"] = args.max_len
    if args.seed is not None:
        opts["seed"] = args.seed
    try:
        opts.update(parse_pairs(args.option, "option"))
    except ValueError as e:  # a usage error: status 2, as argparse's own
        print(f"udg-fast data: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return opts


def _cmd_prepare(args) -> int:
    from . import DataError, load

    try:
        ds = load(args.name, args.path, refresh=args.refresh, progress=False if args.no_progress else None,
                  **_options(args))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(ds.summary())
    how = "read from cache" if ds.meta.get("from_cache") else "prepared"
    print(f"  {how}: {ds.meta.get('cache_path')}")
    return 0


def _cmd_info(args) -> int:
    from . import DataError, info
    from .core import format_stats

    try:
        docs = info(args.name, args.path, **_options(args))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for i, doc in enumerate(docs):
        if i:
            print()
        print(format_stats(doc["name"], doc["stats"]))
        meta = doc["meta"]
        print(f"  {'options':<20} {meta.get('options')}")
        print(f"  {'source':<20} {meta.get('source')}")
        print(f"  {'cache':<20} {meta.get('cache_path') or doc['key']} (written {meta.get('written_at')})")
    return 0


def _cmd_list(args) -> int:
    from . import COMMON_OPTIONS, DATASETS

    for name, spec in DATASETS.items():
        opts = {**COMMON_OPTIONS, **spec.options}
        print(f"{name:<20} {spec.description}")
        print(f"{'':<20} options: {', '.join(f'{k}={v!r}' for k, v in opts.items())}")
    return 0
