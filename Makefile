# The README's two commands:
#   make test   from a fresh clone: .venv, pinned dev requirements, extension, ctest, pytest
#   make demo   the main job on the embedded default data
# Both are idempotent: a second run reuses the venv and rebuilds only what changed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
export MAX_JOBS ?= 2
# The venv's tools first: cmake, ctest and ninja come from requirements-dev.txt.
export PATH := $(abspath $(VENV))/bin:$(PATH)

# Torch's CMake package, for the C++ test binary.
CMAKE_BUILD := build/cmake

.PHONY: all venv build ctest test pytest demo bench bench-cpu clean help

all: test

help:
	@echo "make test   - set everything up and run ctest + pytest"
	@echo "make demo   - run the demo on the embedded default data"
	@echo "make bench  - CPU benchmarks (pytest-benchmark), results in benchmarks/results/"

# 1. The virtual environment with the pinned development requirements.
$(VENV)/.deps-installed: requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.deps-installed

# 2. The package, editable (so `udg-fast` is on the venv's PATH); the extension is built in step 3.
$(VENV)/.package-installed: $(VENV)/.deps-installed pyproject.toml setup.py
	UDG_FAST_NO_EXTENSION=1 $(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $@

# 3. udg_fast/_C: C++ CPU kernels always, CUDA kernels where torch is a CUDA build and nvcc exists.
build: $(VENV)/.package-installed
	$(PY) setup.py -q build_ext --inplace

# 4. The C++ test binary (CPU kernels against a naive C++ loop), through CMake + ctest.
ctest: build
	@mkdir -p build
	cmake -S . -B $(CMAKE_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  > $(CMAKE_BUILD).log 2>&1 || { cat $(CMAKE_BUILD).log; exit 1; }
	cmake --build $(CMAKE_BUILD) -j $(MAX_JOBS)
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure

pytest: build
	$(PY) -m pytest tests -q -p no:cacheprovider

test: ctest pytest

demo: build
	$(PY) -m udg_fast.demo

# Benchmarks: never part of `make test` (speed is measured, not asserted).
# The model grid compiles with torch.compile only at the targets' shape (~20 s of compile a case).
bench: build
	$(PY) -m pytest benchmarks/bench_gated_linear.py benchmarks/bench_augru.py benchmarks/bench_din_attention.py \
	  benchmarks/bench_gating_networks.py benchmarks/bench_embedding_backward.py -q -p no:cacheprovider \
	  --benchmark-only --benchmark-json=benchmarks/results/latest-cpu-ops.json
	$(PY) -m pytest benchmarks/bench_models.py -q -p no:cacheprovider --benchmark-only \
	  -k "not compile or B2048-T50-d18" --benchmark-json=benchmarks/results/latest-cpu-models.json

clean:
	rm -rf build $(VENV) udg_fast/*.so *.egg-info
