"""`make demo`: what udg_fast offers on this machine, in one minute.

Prints the backend table and times one UDG-gated MLP layer (Eq. 7, B=4096, 400 → 200, forward +
backward) on every backend usable here against eager PyTorch.
"""
from __future__ import annotations

import torch
import torch.utils.benchmark as tb

import udg_fast
from udg_fast.ops import gated_linear, gated_linear_reference


def _time(fn, *args) -> float:
    t = tb.Timer("fn(*args)", globals={"fn": fn, "args": args}, num_threads=torch.get_num_threads())
    return t.blocked_autorange(min_run_time=0.5).median * 1e3


def main() -> int:
    print("udg_fast", udg_fast.__version__, "| torch", torch.__version__)
    print(udg_fast.format_backends())
    print()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    b, k, n = 4096, 400, 200
    x = torch.randn(b, k, device=device, requires_grad=True)
    g = torch.randn(b, k, device=device, requires_grad=True)
    layer = udg_fast.GatedLinear(k, n).to(device)
    dy = torch.randn(b, n, device=device)

    def step(fn):
        def run():
            y = fn(x, g, layer.weight, layer.bias)
            y.backward(dy)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return run

    print(f"GatedLinear forward+backward, B={b}, {k} -> {n}, float32, {device}:")
    base = _time(step(gated_linear_reference))
    print(f"  {'eager PyTorch':<14} {base:8.3f} ms")
    for name, st in udg_fast.backends().items():
        if name == "reference" or not st["usable"]:
            continue
        if (name == "cpu") != (device.type == "cpu"):
            continue

        def fused(x, g, w, b, _name=name):
            with udg_fast.use_backend(_name):
                return gated_linear(x, g, w, b)

        t = _time(step(fused))
        print(f"  {name:<14} {t:8.3f} ms   ({base / t:.2f}x eager)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
