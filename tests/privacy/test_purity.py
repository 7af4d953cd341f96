"""securefvpa.privacy is a pure core: importing all of it loads neither torch, flwr nor opacus."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_privacy_package_imports_no_torch_or_flwr():
    modules = sorted(p.stem for p in (REPO / "securefvpa" / "privacy").glob("*.py"))
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module('securefvpa.privacy.' + m)\n"
        "bad = [m for m in ('torch', 'flwr', 'opacus') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "", out.stdout
