"""Turn a pytest-benchmark JSON file into a markdown table with ratios.

    python benchmarks/report.py RESULTS.json [--out RESULTS.md] [--title TITLE]

Rows are (op, mode, shape); columns the providers' median times in ms, then for each udg_fast
backend its speed-up over eager and its time relative to the GEMM-only floor (where measured).
"""
from __future__ import annotations

import argparse
import json
import platform
from collections import defaultdict
from pathlib import Path

BACKENDS = ("cpu", "triton", "cuda")


def _shape(extra: dict) -> str:
    keys = [k for k in ("cell", "batch", "T", "V", "H", "d_in", "d_out", "embed_dim", "model", "threads") if k in extra]
    return " ".join(f"{k}={extra[k]}" for k in keys)


def render(data: dict, title: str) -> str:
    rows = defaultdict(dict)
    providers = []
    for bench in data["benchmarks"]:
        ex = bench.get("extra_info", {})
        prov = ex.get("provider", bench["name"])
        if prov not in providers:
            providers.append(prov)
        key = (bench["fullname"].split("::")[0].split("/")[-1], ex.get("mode", ""), _shape(ex))
        rows[key][prov] = bench["stats"]["median"] * 1e3
    m = data.get("machine_info", {})
    c = data.get("commit_info", {})
    lines = [f"# {title}", ""]
    lines.append(f"- date: {data.get('datetime', '?')}")
    lines.append(f"- machine: {m.get('cpu', {}).get('brand_raw', m.get('processor', '?'))}, "
                 f"{m.get('cpu', {}).get('count', '?')} logical CPUs, {m.get('system', platform.system())}")
    if "gpu" in data.get("udg_fast", {}):
        lines.append(f"- gpu: {data['udg_fast']['gpu']}")
    lines.append(f"- python {m.get('python_version', '?')}; commit {c.get('id', '?')[:10]}"
                 f"{' (dirty)' if c.get('dirty') else ''}")
    lines.append("- times: median per call in ms (pytest-benchmark; its timer, wall or process time, as run); lower is better")
    lines.append("")
    order = [p for p in ("eager", "compile") if p in providers] + [p for p in BACKENDS if p in providers] + \
            [p for p in providers if p not in ("eager", "compile", "gemm_floor", *BACKENDS)] + \
            (["gemm_floor"] if "gemm_floor" in providers else [])
    ratio_cols = [p for p in BACKENDS if p in providers]
    head = ["bench", "mode", "shape"] + order + [f"{p} vs eager" for p in ratio_cols] + \
           ([f"{p} / floor" for p in ratio_cols] if "gemm_floor" in providers else [])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for key in sorted(rows, key=lambda k: (k[0], k[1], k[2])):
        r = rows[key]
        cells = list(key) + [f"{r[p]:.3f}" if p in r else "" for p in order]
        for p in ratio_cols:
            cells.append(f"{r['eager'] / r[p]:.2f}×" if p in r and "eager" in r else "")
        if "gemm_floor" in providers:
            for p in ratio_cols:
                cells.append(f"{r[p] / r['gemm_floor']:.2f}" if p in r and "gemm_floor" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--title", default="udg_fast benchmarks")
    args = ap.parse_args(argv)
    text = render(json.loads(args.json.read_text()), args.title)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
