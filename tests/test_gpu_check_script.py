"""benchmarks/gpu_check.sh runs end to end here with every step skipped: the script's own code (step
bookkeeping, the summary files) has to work before it reaches a lent GPU, where a session has
15 minutes in all."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_runs_with_every_step_skipped(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_STEPS": "none"}
    res = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    steps = (tmp_path / "steps.txt").read_text().splitlines()
    names = [line.split()[0] for line in steps]
    # every step the script defines is listed (build_inplace runs only when build fails), each
    # skipped by the filter
    defined = set(re.findall(r"^\s*(?:if ! )?(?:\w+=\S+ )?(?:step|bench) (\w+) \d+", SCRIPT.read_text(), flags=re.M))
    assert len(defined) >= 8 and defined - {"build_inplace"} <= set(names), (defined, steps)
    assert all("rc=skipped (not in GPU_CHECK_STEPS)" in line for line in steps), steps
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["steps"]) == set(names)
    assert all(s["rc"] == "skipped" for s in summary["steps"].values())
    assert (tmp_path / "summary.md").read_text().count("rc=skipped") == len(steps)


def test_profile_step_writes_its_tables_on_cpu(tmp_path):
    """benchmarks/profile_step.py (a GPU-check step) on the CPU, tiny: both files, one entry per
    case and provider, the top operators named with their times."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import profile_step
    finally:
        sys.path.pop(0)
    assert profile_step.main([str(tmp_path), "--cases", "pnn+udg", "--providers", "fused,reference",
                              "--batch", "16", "--steps", "1", "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "profile_step.json").read_text())
    assert [(r["case"], r["provider"]) for r in res] == [("pnn+udg", "fused"), ("pnn+udg", "reference")]
    for r in res:
        assert r["wall_ms_per_step"] > 0 and r["top"] and all(t["name"] for t in r["top"])
    # the fused model runs udg_fast's ops, the reference model none of its C++ kernels
    assert any(t["name"].startswith("udg_fast::") for t in res[0]["top"])
    assert not any(t["name"].startswith("udg_fast::") for t in res[1]["top"])
    assert "## pnn+udg (fused), B = 16, cpu" in (tmp_path / "profile_step.md").read_text()
