"""Where one training step's time goes: torch.profiler over a few steps of each model case, the
top operators by device time (self), the step's wall time and its kernel-launch count, as
markdown and JSON.

    python benchmarks/profile_step.py OUT_DIR [--cases din+udg,dien+udg] [--batch 2048] [--steps 3]
        [--providers fused,reference] [--device cuda]

Written for the GPU check (benchmarks/gpu_check.sh): on the 2026-11-28 H200 every model's step
grew linearly with the batch (DIN 28.5 ms at B = 2048, 111.6 at 8192) and the cause was inferred,
not seen; this names the operators. It runs on a CPU too (CPU activity only; the "device" column
is then the CPU's self time), which is how its test exercises it.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from udg_fast import bench


def _case_list(text: str) -> list[tuple[str, bool]]:
    out = []
    for name in text.split(","):
        name = name.strip()
        model, udg = (name[:-4], True) if name.endswith("+udg") else (name, False)
        if model not in bench.BASE_MODELS:
            raise SystemExit(f"profile_step: unknown case {name!r} (models: {', '.join(bench.BASE_MODELS)}, "
                             f"each optionally with +udg)")
        out.append((model, udg))
    return out


def profile_case(provider: str, model: str, udg: bool, batch: int, steps: int, device: torch.device,
                 top: int = 25) -> dict:
    """Profile `steps` training steps (after two warm-up steps) of one case."""
    case = bench.make_case(provider, model, udg, batch, 50, 18, "train", device=device)
    case.warmup(2)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            case.step()
        bench._sync(device)
    wall_ms = (time.perf_counter() - t0) / steps * 1e3
    events = prof.key_averages()

    def dev_self(e):  # self device time in µs (CPU self time where there is no device)
        if cuda:
            return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))
        return e.self_cpu_time_total

    rows = sorted(events, key=dev_self, reverse=True)
    total_dev = sum(dev_self(e) for e in events) / steps
    kernels = sum(e.count for e in events if getattr(e, "device_type", None) is not None
                  and str(e.device_type).endswith("CUDA")) / steps if cuda else None
    return {
        "provider": provider, "case": bench.label(model, udg), "batch": batch, "device": str(device),
        "steps": steps, "wall_ms_per_step": wall_ms, "device_ms_per_step": total_dev / 1e3,
        "kernels_per_step": kernels,
        "top": [{"name": e.key, "self_device_ms_per_step": dev_self(e) / steps / 1e3,
                 "calls_per_step": e.count / steps,
                 "self_cpu_ms_per_step": e.self_cpu_time_total / steps / 1e3} for e in rows[:top]],
    }


def to_markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        k = f", {r['kernels_per_step']:.0f} device kernels per step" if r["kernels_per_step"] is not None else ""
        lines += [f"## {r['case']} ({r['provider']}), B = {r['batch']}, {r['device']}", "",
                  f"wall {r['wall_ms_per_step']:.2f} ms per step (profiled), device self time "
                  f"{r['device_ms_per_step']:.2f} ms{k}", "",
                  "| operator / kernel | self device ms / step | calls / step | self CPU ms / step |",
                  "|---|---:|---:|---:|"]
        lines += [f"| `{t['name'][:90]}` | {t['self_device_ms_per_step']:.3f} | {t['calls_per_step']:.0f} | "
                  f"{t['self_cpu_ms_per_step']:.3f} |" for t in r["top"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--cases", default="din+udg,dien+udg")
    ap.add_argument("--providers", default="fused,reference")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for model, udg in _case_list(args.cases):
        for provider in args.providers.split(","):
            r = profile_case(provider.strip(), model, udg, args.batch, args.steps, device)
            results.append(r)
            print(f"{r['case']} {r['provider']}: {r['wall_ms_per_step']:.2f} ms/step, top: "
                  f"{r['top'][0]['name']} {r['top'][0]['self_device_ms_per_step']:.3f} ms", flush=True)
            # written after every case, so a cut-off run keeps what it finished
            (out / "profile_step.json").write_text(json.dumps(results, indent=1))
            (out / "profile_step.md").write_text(to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
