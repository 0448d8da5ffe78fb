#!/usr/bin/env bash
# The GPU check: one command, at most ~9 minutes on one H100/H200, run whenever a session is lent
# a GPU machine (torch 2.11 cu130, Python 3.12, nvcc, pytest-xdist/-timeout, no network there).
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# 1. builds udg_fast for this card, in place, from source;
# 2. runs the CUDA-marked tests and every op test on the GPU (cuda + triton against reference,
#    bf16/fp16 included), in parallel workers, one PASSED/FAILED line per test;
# 3. runs compute-sanitizer memcheck on one small case of every CUDA op;
# 4. runs the GPU benchmarks (pytest-benchmark, synchronised timings, a reduced grid), a profile of
#    one DIN + UDG and one DIEN + UDG training step, and CUDA-graph timings;
# 5. writes OUT_DIR/summary.md and OUT_DIR/summary.json (+ the logs).
# A short re-check (a lease with little time left): GPU_CHECK_STEPS="build tests" runs only the
# steps named (the others are listed as skipped), GPU_CHECK_TESTS replaces the test paths and
# GPU_CHECK_K adds a pytest -k expression, e.g.
#   GPU_CHECK_STEPS="build tests" GPU_CHECK_K="from_gru or compile" bash benchmarks/gpu_check.sh /tmp/gc
# Every step runs even if an earlier one fails; the exit code is non-zero if any failed. The whole
# script keeps within GPU_CHECK_BUDGET_S seconds (default 540). A step that runs out of time gets
# SIGINT first, so pytest still prints its failures and writes its JUnit/benchmark JSON (the first
# run, 2026-11-27 on an H200, was killed with SIGTERM and left only progress dots).
#
# Before the call, here: `bash benchmarks/fetch_gpu_wheels.sh` (DeepCTR-Torch and what it needs, for
# the models' comparison; the GPU machine has no network), and give the call `carry: [".bench-wheels"]`.
# On the lent machine (the device tool), snapshot the results into $OUT while it runs, so that a
# cut-off call still brings back what was done:
#   mkdir -p /tmp/gc; (while sleep 15; do tar czf $OUT/p.tgz -C /tmp gc && mv $OUT/p.tgz $OUT/gc.tgz; done) &
#   bash benchmarks/gpu_check.sh /tmp/gc; tar czf $OUT/p.tgz -C /tmp gc && mv $OUT/p.tgz $OUT/gc.tgz
# with the call's timeout_s at 590 (one call may run 600 s; a session has 900 s of device time and
# the machine's start took ~50 s on 2026-11-27), and give the machine back right after.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
unset TRITON_INTERPRET
status=0
# All steps together stay inside GPU_CHECK_BUDGET_S (default 540 s): each step gets at most its
# own limit and never more than what is left, so a slow step cannot eat the later ones' results.
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-540}))
step() {  # step NAME TIMEOUT_S CMD...: run, log to OUT/NAME.log, record the result
  local name=$1 limit=$2; shift 2
  if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" ${name%_inplace} "* ]]; then
    echo "$name rc=skipped (not in GPU_CHECK_STEPS)" | tee -a "$OUT/steps.txt"; return 0
  fi
  local t0=$SECONDS left=$((DEADLINE - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then echo "$name rc=skipped (out of time)" | tee -a "$OUT/steps.txt"; status=1; return 1; fi
  timeout -s INT -k 20 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/steps.txt"
  [ $rc -eq 0 ] || status=1
  return $rc
}

{ date -u +%Y-%m-%dT%H:%M:%SZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name())"
  $PY -c "import triton; print('triton', triton.__version__)"; nvcc --version | tail -1; } >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. Build for this card only (faster than the default sm_80 + sm_90 list).
export UDG_FAST_CUDA_ARCHS=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
if ! step build 180 $PY -m pip install --no-build-isolation --no-deps -e .; then
  # A session saw the editable install fail on a GPU box (cause unknown): build in place instead
  # and put the source tree on the path (udg_fast.kernels is the top-level kernels/ folder).
  tail -20 "$OUT/build.log"
  step build_inplace 240 $PY setup.py build_ext --inplace
  [ -e udg_fast/kernels ] || ln -s ../kernels udg_fast/kernels
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -c "import udg_fast, json; print(json.dumps(udg_fast.build_info())); print(udg_fast.format_backends())" \
  >"$OUT/backends.txt" 2>&1
cat "$OUT/backends.txt"

# 2. Tests on the GPU: all op tests (the backend parametrisation picks cuda + triton here), in
# parallel workers where pytest-xdist is installed (Triton's JIT compiles dominate: 155 tests took
# 150 s in one process on the H200), one line per test so that a cut-off log still says which.
PYTEST_PAR=()
# 12 workers on the 16-core machine (8 took 186 s on 2026-11-28, most of it CPU-bound compiling).
$PY -c "import xdist" 2>/dev/null && PYTEST_PAR+=(-n 12)
$PY -c "import pytest_timeout" 2>/dev/null && PYTEST_PAR+=(--timeout 120)
[ -n "${GPU_CHECK_K:-}" ] && PYTEST_PAR+=(-k "$GPU_CHECK_K")
# shellcheck disable=SC2086  # GPU_CHECK_TESTS: paths / node ids, split on spaces
step tests 200 $PY -m pytest ${GPU_CHECK_TESTS:-tests/ops tests/test_backends.py tests/models/test_cuda.py} -v \
  -p no:cacheprovider -rfEs --tb=short "${PYTEST_PAR[@]}" --junitxml="$OUT/tests.xml"
[ -f "$OUT/tests.log" ] && grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -40

# 3. compute-sanitizer memcheck, one small case of every CUDA op (correctness first: before the
# benchmarks, so a short lease still answers it).
step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 1 $PY benchmarks/gpu_sanitize_case.py
[ -f "$OUT/memcheck.log" ] && tail -3 "$OUT/memcheck.log"

# 4. Benchmarks, one JSON per file, on a grid cut to fit: 0.1 s per case, torch.compile in its
# default mode (max-autotune spent the first run's whole budget tuning), the AUGRU shapes the
# issue names. pytest-benchmark writes its JSON at the end of a run (also after SIGINT).
BENCH_ARGS=(-q -p no:cacheprovider --benchmark-only --benchmark-max-time=0.1 --benchmark-min-rounds=5
            --benchmark-columns=median,iqr,rounds)
export UDG_BENCH_COMPILE_MODE=${UDG_BENCH_COMPILE_MODE:-default}
bench() {  # bench NAME LIMIT PYTEST_ARGS...: a benchmark step whose finished cases survive a cut-off
  local name=$1 limit=$2; shift 2
  rm -f "$OUT/$name.partial.jsonl"
  export UDG_BENCH_PARTIAL="$OUT/$name.partial.jsonl"   # benchmarks/conftest.py: a line per case
  step "$name" "$limit" $PY -m pytest "$@" "${BENCH_ARGS[@]}" --benchmark-json="$OUT/$name.json"
  local rc=$?
  unset UDG_BENCH_PARTIAL
  if [ ! -s "$OUT/$name.json" ] && [ -s "$OUT/$name.partial.jsonl" ]; then
    $PY - "$OUT/$name.partial.jsonl" "$OUT/$name.json" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
benchmarks = [{"name": r["name"], "fullname": r["fullname"], "extra_info": r["extra_info"],
               "stats": {k: r[k] for k in ("median", "min", "iqr", "rounds")}} for r in rows]
json.dump({"benchmarks": benchmarks, "partial": f"the step was cut off: {len(rows)} finished cases, "
           "rebuilt from UDG_BENCH_PARTIAL"}, open(sys.argv[2], "w"), indent=1)
PYEOF
    echo "$name: cut off; $(wc -l <"$OUT/$name.partial.jsonl") finished cases kept in $name.json" | tee -a "$OUT/steps.txt"
  fi
  return $rc
}
# DeepCTR-Torch for the models' comparison: the GPU image has no network and (2026-11-28) no
# deepctr-torch. Install, offline, from the wheels carried along (benchmarks/fetch_gpu_wheels.sh;
# GPU_CHECK_WHEELS, default .bench-wheels) only what the machine cannot import; without them the
# deepctr cases are skipped and say why (the step itself does not fail).
step bench_deps 60 $PY benchmarks/gpu_bench_deps.py "${GPU_CHECK_WHEELS:-.bench-wheels}"
[ -f "$OUT/bench_deps.log" ] && tail -2 "$OUT/bench_deps.log"
# Model level (issue 8) first (the op benchmarks below have numbers from the 2026-11-28 H200 runs),
# training steps and the peak-memory case. B=2048: all ten variants fused (UDG / base for each),
# DIN and DIEN on the reference backend, DeepCTR-Torch's five; B=8192: the ten fused, DIN and DIEN
# on the reference backend.
bench bench_models 150 benchmarks/bench_models.py \
  -k "${MODELS_BENCH_FILTER:-peak_memory or (train and (B2048-T50-d18 or B8192-T50-d18) and (fused or ((din or dien) and reference) or (B2048 and deepctr)))}"
[ -s "$OUT/bench_models.json" ] && $PY benchmarks/report_models.py "$OUT/bench_models.json" --out "$OUT/bench_models.md"
# Where a DIN + UDG and a DIEN + UDG step's device time goes (torch.profiler, fused and reference):
# the 2026-11-28 H200 steps grew linearly with the batch and the cause was inferred, not seen.
step profile 45 $PY benchmarks/profile_step.py "$OUT/profile"
# DIN's attention: the Triton kernels (the op's GPU choice since 2026-11-28, not yet timed) against
# the literal 4D concat ("eager", the choice before) and the factored form — one shape (~15 s).
bench bench_din_attention 25 benchmarks/bench_din_attention.py -k "B2048-T50-D36"
# gated_linear's GPU default at the model level: its CUDA kernel (the automatic choice) against
# cuBLAS (the eager form, UDG_FAST_BACKEND=gated_linear=reference), PNN + UDG and DIN + UDG, train
# and infer, B = 2048. At the op level the kernel was 0.3-0.95x eager forward and 0.65-1.43x forward
# + backward on the H200 (2026-11-28b); if eager wins here, gated_linear's GPU order becomes () in
# _backend.OP_GPU_PREFERENCE.
MLP_AB_K="B2048-T50-d18 and fused and (pnn+udg or din+udg)"
bench bench_mlp_kernel 20 benchmarks/bench_models.py -k "$MLP_AB_K"
UDG_FAST_BACKEND=gated_linear=reference bench bench_mlp_eager 20 benchmarks/bench_models.py -k "$MLP_AB_K"
for j in bench_mlp_kernel bench_mlp_eager; do
  [ -s "$OUT/$j.json" ] && $PY benchmarks/report_models.py "$OUT/$j.json" --out "$OUT/$j.md"
done
# CUDA-graph timings (launch overhead removed).
step cudagraph 40 $PY benchmarks/gpu_graph_timings.py "$OUT/cudagraph.json"

bench bench_gated_linear 100 benchmarks/bench_gated_linear.py
bench bench_augru 90 benchmarks/bench_augru.py -k "${AUGRU_BENCH_FILTER:-B1024-T50 or B4096-T100-H64}"

# 5. Summary.
: >"$OUT/summary.md"
for j in "$OUT"/bench_gated_linear.json "$OUT"/bench_augru.json "$OUT"/bench_din_attention.json; do
  [ -s "$j" ] && $PY benchmarks/report.py "$j" --title "$(basename "$j" .json) on $(sed -n 3p "$OUT/env.txt" | cut -d'|' -f4 | xargs)" >>"$OUT/summary.md" 2>>"$OUT/steps.txt"
done
{ echo; echo "## Steps"; echo; sed 's/^/    /' "$OUT/steps.txt"; echo; echo "## Environment"; echo
  sed 's/^/    /' "$OUT/env.txt"; echo; sed 's/^/    /' "$OUT/backends.txt"
  if [ -f "$OUT/cudagraph.json" ]; then echo; echo "## CUDA-graph timings (µs per call)"; echo
    $PY -c "import json,sys; [print(f\"    {r['name']}: {r['us']:.1f} us (floor {r.get('floor_us', float('nan')):.1f} us)\") for r in json.load(open(sys.argv[1]))]" "$OUT/cudagraph.json"; fi
} >>"$OUT/summary.md"
$PY - "$OUT" <<'PYEOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
steps = {}
for line in (out / "steps.txt").read_text().splitlines():
    parts = line.split()
    if len(parts) >= 2 and parts[1].startswith("rc="):
        rc = parts[1][3:]
        steps[parts[0]] = {"rc": int(rc) if rc.lstrip("-").isdigit() else rc,
                           "seconds": parts[2] if len(parts) > 2 else ""}
summary = {"env": (out / "env.txt").read_text().splitlines(), "steps": steps}
for p in sorted(out.glob("bench_*.json")) + [out / "cudagraph.json"]:
    name = p.name
    if p.exists() and p.stat().st_size:
        data = json.loads(p.read_text())
        if name.startswith("bench_"):
            data = [{"name": b["name"], "median_ms": b["stats"]["median"] * 1e3, **b.get("extra_info", {})}
                    for b in data["benchmarks"]]
        summary[name.split(".")[0]] = data
(out / "summary.json").write_text(json.dumps(summary, indent=1))
PYEOF
echo "gpu_check finished, status $status; results in $OUT"
exit $status
