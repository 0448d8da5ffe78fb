#!/usr/bin/env bash
# The GPU check: one command, at most ~8 minutes on one H100/H200, run whenever a session is lent
# a GPU machine (torch 2.11 cu130, Python 3.12, nvcc, no network there).
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# 1. builds udg_fast for this card, in place, from source;
# 2. runs the CUDA-marked tests and every op test on the GPU (cuda + triton against reference,
#    bf16/fp16 included);
# 3. runs compute-sanitizer memcheck on one small case of every CUDA op;
# 4. runs the GPU benchmarks (pytest-benchmark, synchronised timings) and CUDA-graph timings;
#    the whole script keeps within GPU_CHECK_BUDGET_S seconds (default 470);
# 5. writes OUT_DIR/summary.md and OUT_DIR/summary.json (+ the logs).
# Every step runs even if an earlier one fails; the exit code is non-zero if any failed.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
unset TRITON_INTERPRET
status=0
# All steps together stay inside GPU_CHECK_BUDGET_S (default 470 s): each step gets at most its
# own limit and never more than what is left, so a slow step cannot eat the later ones' results.
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-470}))
step() {  # step NAME TIMEOUT_S CMD...: run, log to OUT/NAME.log, record the result
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS left=$((DEADLINE - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then echo "$name rc=skipped (out of time)" | tee -a "$OUT/steps.txt"; status=1; return 1; fi
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
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

# 2. Tests on the GPU: all op tests (the backend parametrisation picks cuda + triton here).
step tests 150 $PY -m pytest tests/ops tests/test_backends.py -q -p no:cacheprovider -rs \
  --junitxml="$OUT/tests.xml"
[ -f "$OUT/tests.log" ] && tail -5 "$OUT/tests.log"

# 3. Benchmarks, one JSON per op (pytest-benchmark writes its JSON only at the end of a run).
step bench_gated_linear 110 $PY -m pytest benchmarks/bench_gated_linear.py -q -p no:cacheprovider \
  --benchmark-only --benchmark-json="$OUT/bench_gated_linear.json" --benchmark-columns=median,iqr,rounds
if [ -f benchmarks/bench_augru.py ]; then
  step bench_augru 80 $PY -m pytest benchmarks/bench_augru.py -q -p no:cacheprovider ${AUGRU_BENCH_FILTER:+-k "$AUGRU_BENCH_FILTER"} \
    --benchmark-only --benchmark-json="$OUT/bench_augru.json" --benchmark-columns=median,iqr,rounds
fi

# 4. compute-sanitizer memcheck, one small case of every CUDA op; CUDA-graph timings.
step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 1 $PY benchmarks/gpu_sanitize_case.py
[ -f "$OUT/memcheck.log" ] && tail -3 "$OUT/memcheck.log"
step cudagraph 40 $PY benchmarks/gpu_graph_timings.py "$OUT/cudagraph.json"

# 5. Summary.
: >"$OUT/summary.md"
for j in "$OUT"/bench_*.json; do
  [ -f "$j" ] && $PY benchmarks/report.py "$j" --title "$(basename "$j" .json) on $(sed -n 3p "$OUT/env.txt" | cut -d'|' -f4 | xargs)" >>"$OUT/summary.md" 2>>"$OUT/steps.txt"
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
    if p.exists():
        data = json.loads(p.read_text())
        if name.startswith("bench_"):
            data = [{"name": b["name"], "median_ms": b["stats"]["median"] * 1e3, **b.get("extra_info", {})}
                    for b in data["benchmarks"]]
        summary[name.split(".")[0]] = data
(out / "summary.json").write_text(json.dumps(summary, indent=1))
PYEOF
echo "gpu_check finished, status $status; results in $OUT"
exit $status
