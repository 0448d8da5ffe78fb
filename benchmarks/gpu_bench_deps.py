"""Install, offline, what the GPU check's DeepCTR-Torch comparison needs and the machine lacks.

    python benchmarks/gpu_bench_deps.py WHEELS_DIR

The lent GPU machine has no network and (2026-11-28) no deepctr-torch; benchmarks/fetch_gpu_wheels.sh
downloads the wheels here and the device tool carries them along. Only the distributions whose
module cannot be imported are installed (`pip install --no-index --no-deps --find-links`), so the
image's own numpy / scipy / tqdm stay as they are. Prints whether udg_fast.bench can then import
DeepCTR-Torch. A missing folder or a failed install is reported, not an error (exit 0): the deepctr
benchmark cases are then skipped, saying why, and the rest of the GPU check is unaffected.
"""
from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

#: module → distribution: deepctr-torch 0.3.0, what its __init__ imports undeclared (requests and its
#: dependencies), and what it imports that the image may lack (tqdm, scikit-learn and its dependencies)
DISTRIBUTIONS = {"deepctr_torch": "deepctr-torch", "requests": "requests", "certifi": "certifi",
                 "idna": "idna", "charset_normalizer": "charset-normalizer", "urllib3": "urllib3",
                 "tqdm": "tqdm", "sklearn": "scikit-learn", "scipy": "scipy", "joblib": "joblib",
                 "threadpoolctl": "threadpoolctl"}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    wheels = pathlib.Path(argv[0])
    missing = [d for m, d in DISTRIBUTIONS.items() if importlib.util.find_spec(m) is None]
    print("missing:", " ".join(missing) or "nothing")
    if missing and not wheels.is_dir():
        print(f"gpu_bench_deps: no wheels folder {wheels} (run benchmarks/fetch_gpu_wheels.sh here and carry it)")
    elif missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links",
                        str(wheels), *missing], check=False)
    importlib.invalidate_caches()
    from udg_fast import bench

    ok, why = bench.deepctr_available()
    print("deepctr-torch:", "importable" if ok else why)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
