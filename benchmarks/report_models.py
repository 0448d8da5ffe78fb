"""Turn a pytest-benchmark JSON of benchmarks/bench_models.py into the markdown table with ratios.

    python benchmarks/report_models.py RESULTS.json [--out TABLE.md]

RESULTS.json: pytest-benchmark's --benchmark-json output, or a committed
benchmarks/results/cpu-models-*.json (its "pytest_benchmark" part).

Rows are (mode, batch, T, d, variant); columns the providers' median ms per step, fused samples/s,
fused vs reference / compile, DeepCTR-Torch / fused and UDG / base (`udg_fast.bench.format_table`),
then the peak-memory rows of `test_peak_memory` if present.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from udg_fast.bench import format_table


def rows(data: dict) -> tuple[list[dict], list[dict]]:
    """(timing rows, memory rows) from a pytest-benchmark JSON."""
    timing, memory = [], []
    for b in data["benchmarks"]:
        ex = b.get("extra_info", {})
        if ex.get("mode") == "memory":
            memory.append(ex)
        elif "provider" in ex:
            timing.append({**ex, "median_s": b["stats"]["median"], "min_s": b["stats"]["min"],
                           "rounds": b["stats"]["rounds"]})
    return timing, memory


def render(data: dict) -> str:
    if "pytest_benchmark" in data:  # a committed results file: the pytest-benchmark run inside
        data = data["pytest_benchmark"]
    timing, memory = rows(data)
    out = [format_table(timing)]
    if memory:
        out += ["", "| peak memory, one training step | provider | MiB | method |", "|---|---|---:|---|"]
        for m in memory:
            out.append(f"| {m['model']}{'+udg' if m['udg'] else ''} B={m['batch']} T={m['hist_len']} d={m['embed_dim']} "
                       f"| {m['provider']} | {m['peak_bytes'] / 2**20:.1f} | {m['method']} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    text = render(json.loads(args.json.read_text()))
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
