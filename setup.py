"""Build udg_fast and its extension `udg_fast._C`.

The C++ CPU kernels are always built. The CUDA kernels are built when torch is a CUDA build and
nvcc is found, unless UDG_FAST_SKIP_CUDA_BUILD=1. Switches (environment variables):

    UDG_FAST_SKIP_CUDA_BUILD=1   CPU-only build even where CUDA could be built
    UDG_FAST_CUDA_ARCHS="8.0;9.0" compute capabilities to build for (default sm_80 and sm_90)
    UDG_FAST_NO_EXTENSION=1      install the Python package only (the Makefile's editable step)
    MAX_JOBS=N                   parallel compile jobs (ninja)

Install into an environment that already has torch:  pip install --no-build-isolation .
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def _log(msg):
    print(f"[udg_fast setup] {msg}", file=sys.stderr, flush=True)


def _resolve_nvcc(path):
    """Follow symlinks and `exec /real/nvcc "$@"` wrapper scripts to the real nvcc binary."""
    for _ in range(4):
        path = os.path.realpath(path)
        try:
            with open(path, "rb") as f:
                head = f.read(2048)
        except OSError:
            return None
        if not head.startswith(b"#!"):
            return path
        m = re.search(rb"exec\s+\"?([^\s\"]+nvcc)\"?", head)
        if not m:
            return path
        path = m.group(1).decode()
    return path


def _find_cuda_home():
    """The toolkit folder that holds bin/nvcc and lib64/libcudart*, or None.

    torch guesses CUDA_HOME as the parent of the `nvcc` on PATH; where that nvcc is a wrapper
    script (/usr/local/bin/nvcc here) the guess is /usr/local and the link fails for want of
    -lcudart. So resolve the wrapper first. Must run before torch.utils.cpp_extension is imported,
    which reads CUDA_HOME at import time.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = _resolve_nvcc(nvcc)
        if real:
            candidates.append(str(Path(real).parent.parent))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if not c:
            continue
        p = Path(c)
        if (p / "bin" / "nvcc").exists() and (
            list((p / "lib64").glob("libcudart*")) or list((p / "lib").glob("libcudart*"))
        ):
            return str(p)
    return None


def _pip_cuda_include_dirs():
    """Headers the slim toolkit lacks (cusparse.h, cublas_v2.h, …) ship in pip's nvidia wheels."""
    dirs = []
    for sp in sys.path:
        base = Path(sp) / "nvidia"
        if not base.is_dir():
            continue
        for inc in sorted(base.glob("cu*/include")) + sorted(base.glob("*/include")):
            if inc.is_dir() and str(inc) not in dirs:
                dirs.append(str(inc))
    return dirs


CUDA_HOME = None
if os.environ.get("UDG_FAST_SKIP_CUDA_BUILD", "0") not in ("1", "true", "TRUE", "yes"):
    CUDA_HOME = _find_cuda_home()
    if CUDA_HOME:
        os.environ["CUDA_HOME"] = CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _libstdcxx_link_args():
    """Link libstdc++ as the shared library, by its path, where the compiler would take the static one.

    On the GPU machine's image (Ubuntu, GCC 13; H200, 2026-11-28) `-lstdc++` resolved to
    libstdc++.a (there is no libstdc++.so dev link), so the extension carried its own copy of the
    iostream/locale code beside the process's libstdc++.so.6. Formatting an integer then went
    through a locale facet the copy never initialised: every TORCH_CHECK message with a number
    segfaulted there (and came out cut short at the number here, linked that way on purpose).
    """
    if not sys.platform.startswith("linux"):
        return []
    cxx = os.environ.get("CXX", "c++")  # the compiler torch's BuildExtension links with

    def lookup(name):
        try:
            out = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True,
                                 timeout=60, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        return out if os.path.isabs(out) and os.path.exists(out) else None  # else just `name` back

    if lookup("libstdc++.so") is not None or lookup("libstdc++.a") is None:
        return []  # -lstdc++ finds the shared library (the usual case), or this is not libstdc++
    so6 = lookup("libstdc++.so.6")
    if so6 is None:
        _log("warning: only a static libstdc++ was found; the extension may not work (see setup.py)")
        return []
    _log(f"linking {so6} explicitly: the compiler's -lstdc++ would take libstdc++.a")
    return [so6]


def _extension():
    sources_cpp = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
    sources_cu = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
    sources = ["csrc/ops.cpp"] + sources_cpp

    skip = os.environ.get("UDG_FAST_SKIP_CUDA_BUILD", "0") in ("1", "true", "TRUE", "yes")
    with_cuda = False
    why = ""
    if skip:
        why = "UDG_FAST_SKIP_CUDA_BUILD is set"
    elif torch.version.cuda is None:
        why = "torch is a CPU-only build"
    elif CUDA_HOME is None:
        why = "nvcc / a CUDA toolkit was not found (set CUDA_HOME)"
    else:
        with_cuda = True

    archs = os.environ.get("UDG_FAST_CUDA_ARCHS", DEFAULT_CUDA_ARCHS)
    # torch adds the -std it needs (C++20 for torch 2.14). -fopenmp: at::parallel_for is a header
    # template that runs serially unless _OPENMP is defined; at run time the libgomp.so.1 that torch
    # already loaded serves it, so there is one thread pool.
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"] + _libstdcxx_link_args()
    define = {
        "UDG_FAST_WITH_CUDA": "1" if with_cuda else "0",
        "UDG_FAST_CUDA_ARCHS": archs if with_cuda else "",
        "UDG_FAST_CUDA_VERSION": (torch.version.cuda or "") if with_cuda else "",
        "UDG_FAST_TORCH_VERSION": torch.__version__,
        "UDG_FAST_CXX_FLAGS": " ".join(cxx_flags),
    }
    gen = ROOT / "build" / "generated"
    gen.mkdir(parents=True, exist_ok=True)
    header = "// Generated by setup.py; do not edit.\n#pragma once\n"
    header += f"#define UDG_FAST_WITH_CUDA {define['UDG_FAST_WITH_CUDA']}\n"
    for k in ("UDG_FAST_CUDA_ARCHS", "UDG_FAST_CUDA_VERSION", "UDG_FAST_TORCH_VERSION",
              "UDG_FAST_CXX_FLAGS"):
        header += f'#define {k} "{define[k]}"\n'
    target = gen / "build_config.h"
    if not target.exists() or target.read_text() != header:  # keep ninja's incremental build
        target.write_text(header)

    include_dirs = [str(ROOT / "csrc"), str(gen)]
    if with_cuda:
        # torch reads TORCH_CUDA_ARCH_LIST to emit -gencode flags.
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        include_dirs += _pip_cuda_include_dirs()
        _log(f"building CPU + CUDA kernels (CUDA_HOME={CUDA_HOME}, archs {archs}, "
             f"torch {torch.__version__} cu{torch.version.cuda})")
        return CUDAExtension(
            "udg_fast._C",
            sources + sources_cu,
            include_dirs=include_dirs,
            extra_link_args=link_flags,
            extra_compile_args={
                "cxx": cxx_flags,
                # No --use_fast_math: its __expf / approximate division put the fp32 AUGRU off
                # the reference by more than the tests' bound (2× eager's error + 1e-6) in 30 of
                # the 36 non-empty shapes of its first GPU run (H200, 2026-11-27); without it the
                # whole grid passed (H200, 2026-11-28). Sigmoid/tanh are a few instructions of a
                # step that is bound by its dot products, so precise math costs little.
                "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr"],
            },
        )
    _log(f"building CPU kernels only: {why}")
    return CppExtension("udg_fast._C", sources, include_dirs=include_dirs,
                        extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)


# UDG_FAST_NO_EXTENSION=1 installs the package (metadata, the `udg-fast` script) without compiling;
# the Makefile uses it for the editable install and then builds the extension in place with
# `setup.py build_ext --inplace`, whose ninja build under build/ is incremental.
_NO_EXT = os.environ.get("UDG_FAST_NO_EXTENSION", "0") in ("1", "true", "TRUE", "yes")

setup(
    ext_modules=[] if _NO_EXT else [_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
