"""Compile (not run) every Triton kernel of kernels/ for sm_90 with Triton's real compiler, on a
machine without a GPU: the interpreter the other tests use does not apply the compiler's typing,
layout and shared-memory rules, so a kernel can pass them and still fail to build on a GPU.

Run as a script, without TRITON_INTERPRET (tests/ops/test_triton_compile.py does that); prints one
line per kernel (its shared memory) and exits non-zero on the first failure. Every autotune config
of the gated_linear kernels is compiled, both the on-chip and the chunked AUGRU kernels at
their largest tiles, and the din_attention kernels at DIN's sizes and their largest tiles; then every kernel once more with each integer argument equal to 1, which
Triton specialises into a compile-time Python int (B=1 broke the chunked AUGRU kernel on an H200,
2026-11-28: `B.to(...)` on an int).
"""
import inspect
import os
import sys

assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import udg_fast.kernels.augru as augru  # noqa: E402
import udg_fast.kernels.din_attention as din_attention  # noqa: E402
import udg_fast.kernels.gated_linear as gated_linear  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
# The most dynamic shared memory one block may opt into on sm_90 (227 KiB, H100 and H200).
SM90_MAX_SHARED = 232448


def compile_kernel(kernel, constexprs, num_warps=4, num_stages=3, ints_equal_one=False):
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel  # the JITFunction
    params = inspect.signature(fn.fn).parameters
    names = list(params)
    declared = [n for n, p in params.items() if "constexpr" in str(p.annotation)]
    missing = [n for n in declared if n not in constexprs]
    assert not missing, f"{fn.__name__}: no value given for the constexpr parameters {missing}"
    signature, const = {}, {}
    for i, n in enumerate(names):
        if n in constexprs:
            signature[n], const[(i,)] = "constexpr", constexprs[n]
        elif n.endswith("_ptr"):
            signature[n] = "*i64" if n == "len_ptr" else "*fp32"
        elif "scale" in n:
            signature[n] = "fp32"
        elif ints_equal_one:  # what the launcher does with an int argument that is 1
            signature[n], const[(i,)] = "constexpr", 1
        else:
            signature[n] = "i32"
    c = triton.compile(ASTSource(fn, signature, constexprs=const), target=TARGET,
                       options={"num_warps": num_warps, "num_stages": num_stages})
    print(f"{fn.__name__} {constexprs}{' ints=1' if ints_equal_one else ''}: shared {c.metadata.shared} B")
    assert c.metadata.shared <= SM90_MAX_SHARED, (
        f"{fn.__name__} {constexprs} needs {c.metadata.shared} B of shared memory, sm_90 allows {SM90_MAX_SHARED}")


def main():
    opts = dict(HAS_BIAS_IH=True, HAS_BIAS_HH=True, HAS_ATT=True, HAS_LENGTHS=True, INPUT_PRECISION="ieee",
                BLOCK_B=augru._BLOCK_B)
    on_chip = dict(opts, BLOCK_I=augru._ON_CHIP_MAX, BLOCK_H=augru._ON_CHIP_MAX)
    chunked = dict(opts, BLOCK_H=augru._MAX_DIM, BLOCK_K=augru._CHUNK_K)
    for ones in (False, True):
        compile_kernel(augru._augru_fwd_kernel, on_chip, ints_equal_one=ones)
        compile_kernel(augru._augru_bwd_kernel, on_chip, ints_equal_one=ones)
        compile_kernel(augru._augru_fwd_chunked_kernel, chunked, ints_equal_one=ones)
        compile_kernel(augru._augru_bwd_chunked_kernel, chunked, ints_equal_one=ones)
    # DIN's attention at DIN's padded sizes (D 36 → 64, H2 40 → 64) and the largest tiles, two
    # hidden layers with sigmoid and one with ReLU, both dot precisions (TF32 operands take more
    # shared memory); then DIN's sizes with every integer argument 1
    for prec in ("ieee", "tf32"):
        for blocks in (dict(BLOCK_D=64, BLOCK_H2=64), dict(BLOCK_D=din_attention._MAX_D, BLOCK_H2=din_attention._MAX_H2)):
            for two, sigmoid in ((True, True), (False, False)):
                opts = dict(blocks, HAS_MASK=True, TWO=two, SIGMOID=sigmoid, INPUT_PRECISION=prec,
                            BLOCK_T=din_attention._BLOCK_T, BLOCK_C=din_attention._BLOCK_C)
                compile_kernel(din_attention._din_att_fwd_kernel, opts)
                compile_kernel(din_attention._din_att_bwd_kernel, opts)
    opts = dict(BLOCK_D=64, BLOCK_H2=64, HAS_MASK=True, TWO=True, SIGMOID=True, INPUT_PRECISION="ieee",
                BLOCK_T=din_attention._BLOCK_T, BLOCK_C=din_attention._BLOCK_C)
    compile_kernel(din_attention._din_att_fwd_kernel, opts, ints_equal_one=True)
    compile_kernel(din_attention._din_att_bwd_kernel, opts, ints_equal_one=True)
    for kernel, extra in ((gated_linear._gated_linear_fwd_kernel, dict(HAS_BIAS=True, BLOCK_N=256)),
                          (gated_linear._gated_linear_bwd_dgrad_kernel, {}),
                          (gated_linear._gated_linear_bwd_wgrad_kernel, {})):
        for cfg in kernel.configs:
            compile_kernel(kernel, dict(extra, APPLY_RELU=True, INPUT_PRECISION="ieee", **cfg.kwargs),
                           cfg.num_warps, cfg.num_stages)
        cfg = kernel.configs[0]
        compile_kernel(kernel, dict(extra, APPLY_RELU=True, INPUT_PRECISION="ieee", **cfg.kwargs),
                       cfg.num_warps, cfg.num_stages, ints_equal_one=True)


if __name__ == "__main__":
    sys.exit(main())
