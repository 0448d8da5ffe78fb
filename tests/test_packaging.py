"""The wheel must hold every subpackage: pyproject.toml lists packages explicitly (udg_fast.kernels
maps to the top-level kernels/), so a new subpackage missing from the list installs fine in
editable mode and breaks `pip install .` (udg_fast.coldstart was once missing)."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "udg_fast").rglob("__init__.py")
               if "__pycache__" not in p.parts and "kernels" not in p.relative_to(ROOT).parts}
    on_disk |= {"udg_fast.kernels"} if (ROOT / "kernels" / "__init__.py").exists() else set()
    missing = sorted(on_disk - listed)
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {missing}"
    stale = sorted(p for p in listed - on_disk)
    assert not stale, f"pyproject.toml lists packages that do not exist: {stale}"
    assert cfg["package-dir"]["udg_fast.kernels"] == "kernels"
