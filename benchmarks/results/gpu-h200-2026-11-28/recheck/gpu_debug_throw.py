"""Which step makes an argument error of a C++ op crash the process (SIGSEGV) on the GPU machine?

On the H200 (2026-11-28) two xdist workers died with SIGSEGV at the first call of a C++ op that
raises (TORCH_CHECK) — each after that worker had run the op's opcheck test; on this machine
(torch 2.11 and 2.14, Python 3.11 and 3.12) the same calls raise RuntimeError. Each scenario runs
in its own process; `python gpu_debug_throw.py` prints one line per scenario with the exit code,
`python gpu_debug_throw.py NAME` runs one (for a debugger). Kept as the record of the
2026-11-28 re-check (the cause: a static libstdc++ in the extension, see ../README.md); the check
itself is now tests/test_backends.py::test_cpp_error_messages_with_numbers_arrive_whole.
"""
import subprocess
import sys


def _bad_call():
    import torch

    import udg_fast  # noqa: F401  (registers the ops)
    x, wi, wh = torch.randn(3, 4, 5), torch.randn(6, 5), torch.randn(6, 2)
    try:
        torch.ops.udg_fast.augru(x, wi, wh, None, None, None, torch.tensor([4, 9, 2]), torch.zeros(3, 2))
    except RuntimeError as e:
        print("raised:", str(e).splitlines()[0][:120])


def _opcheck():
    import torch

    import udg_fast  # noqa: F401
    x, wi, wh = torch.randn(3, 4, 5), torch.randn(6, 5), torch.randn(6, 2)
    args = (x.requires_grad_(), wi.requires_grad_(), wh, None, None, None, torch.tensor([4, 0, 2]), torch.zeros(3, 2))
    torch.library.opcheck(torch.ops.udg_fast.augru.default, args)


def _cuda_init():
    import torch
    torch.zeros(1, device="cuda").sum().item()


def _compile_cpu():
    import torch

    import udg_fast
    m = udg_fast.AUGRU(5, 2)
    torch.compile(lambda x: m(x)[0].sum(), fullgraph=True)(torch.randn(3, 4, 5)).backward()


SCENARIOS = {  # the likely crash first
    "after_cuda_opcheck": [_cuda_init, _opcheck, _bad_call],
    "after_opcheck": [_opcheck, _bad_call],
    "plain": [_bad_call],
    "after_cuda": [_cuda_init, _bad_call],
    "after_compile": [_compile_cpu, _bad_call],
}

if __name__ == "__main__":
    if len(sys.argv) > 1:
        for f in SCENARIOS[sys.argv[1]]:
            f()
        sys.exit(0)
    for name in SCENARIOS:
        r = subprocess.run([sys.executable, "-X", "faulthandler", __file__, name], capture_output=True, text=True,
                           timeout=120)
        print(f"{name}: rc={r.returncode} {r.stdout.strip()[-200:]} {r.stderr.strip()[-300:] if r.returncode else ''}")
