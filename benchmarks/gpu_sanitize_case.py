"""One small case of every CUDA op, forward and backward, for compute-sanitizer memcheck
(benchmarks/gpu_check.sh). Odd sizes so that every bounds check is exercised."""
import torch

import udg_fast
from udg_fast.ops import gated_linear

d = torch.device("cuda")
for backend in ("cuda", "triton"):
    if not udg_fast.backends()[backend]["usable"]:
        print(f"skip {backend}: {udg_fast.backends()[backend]['reason']}")
        continue
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(37, 33, device=d, dtype=dtype, requires_grad=True)
        g = torch.randn(37, 33, device=d, dtype=dtype, requires_grad=True)
        w = torch.randn(7, 33, device=d, dtype=dtype, requires_grad=True)
        b = torch.randn(7, device=d, dtype=dtype, requires_grad=True)
        with udg_fast.use_backend(backend):
            gated_linear(x, g, w, b).sum().backward()
    if hasattr(udg_fast.ops, "augru"):
        B, T, I, H = 5, 7, 6, 18
        x = torch.randn(B, T, I, device=d, requires_grad=True)
        wi = torch.randn(3 * H, I, device=d, requires_grad=True)
        wh = torch.randn(3 * H, H, device=d, requires_grad=True)
        att = torch.rand(B, T, device=d, requires_grad=True)
        lengths = torch.tensor([0, 7, 3, 1, 5], device=d)
        with udg_fast.use_backend(backend):
            out, hn = udg_fast.ops.augru(x, wi, wh, att=att, lengths=lengths)
            (out.sum() + hn.sum()).backward()
    torch.cuda.synchronize()
    print(f"{backend}: ok")
