#!/usr/bin/env bash
# Download the wheels the GPU check needs for its DeepCTR-Torch comparison (issue 8), for the lent
# GPU machine's Python 3.12 on x86_64: that machine has no network and, on 2026-11-28, no
# deepctr-torch (so the H200 runs had no DeepCTR column).
#
#   bash benchmarks/fetch_gpu_wheels.sh [DIR]      # default .bench-wheels/ (git-ignored, ~45 MB)
#
# Then carry DIR to the machine (the device tool's `carry: [".bench-wheels"]`, 64 MiB in all);
# benchmarks/gpu_check.sh installs from it, offline, only the packages the machine lacks.
# The versions are those of requirements-bench.txt and requirements-dev.txt (scipy: the one pip
# chose for scikit-learn 1.9.1 here), so the GPU numbers compare against the same DeepCTR-Torch.
set -euo pipefail
DIR=${1:-.bench-wheels}
cd "$(dirname "$0")/.."
PIP=(${PYTHON:-.venv/bin/python} -m pip download -q --no-deps -d "$DIR")
mkdir -p "$DIR"
# pure-Python wheels: the pins of requirements-bench.txt (deepctr-torch and what it imports), plus
# what deepctr-torch and scikit-learn import that the GPU image may lack
"${PIP[@]}" $(grep -E '^[a-z].*==' requirements-bench.txt | grep -v '^charset-normalizer' | cut -d' ' -f1) \
  "$(grep -E '^tqdm==' requirements-dev.txt | cut -d' ' -f1)" joblib==1.6.0 threadpoolctl==3.8.0
# compiled wheels for CPython 3.12, manylinux x86_64
"${PIP[@]}" --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  "$(grep -E '^charset-normalizer==' requirements-bench.txt | cut -d' ' -f1)" \
  "$(grep -E '^scikit-learn==' requirements-dev.txt | cut -d' ' -f1)" scipy==1.17.1
ls -1 "$DIR"
du -sh "$DIR"
