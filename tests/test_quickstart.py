"""examples/quickstart.py runs as a user would run it and prints what it promises."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~20 s: a real DP run (60 users, 3 rounds; sigma calibrated) + scoring
def test_quickstart_runs_and_prints_epsilon_accuracy_and_scores(tmp_path):
    """The printed epsilon and accuracy are the run's (privacy_report.json, metrics.json), the two
    scores are centred and the probability is sigmoid(s1 - s2). Mutant caught: scores not
    centred in train.inference (s = r - r_1)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py"), str(tmp_path), "60", "3"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    eps = float(re.search(r"epsilon spent: ([0-9.]+) \(delta 1e-05, budget 8\)", out).group(1))
    report = json.loads((tmp_path / "run" / "privacy_report.json").read_text())
    assert 0.0 < eps <= 8.0 and eps == pytest.approx(report["summary"]["epsilon_max"], abs=5e-3)
    acc = re.search(r"accuracy on held-out pairs \(chance 0\.50\): (\{.*\})", out).group(1)
    # DP run: the server saw no evaluation counts; the nodes' own logs, aggregated by the
    # simulation's operator, give the accuracy (node_evaluation.json)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all(v is None for v in metrics["accuracy"].values())
    node = json.loads((tmp_path / "run" / "node_evaluation.json").read_text())
    for key, value in json.loads(acc.replace("'", '"')).items():
        assert value == pytest.approx(node["final"]["accuracy"][key], abs=1e-3)
    lines = re.findall(
        r"^(\S+): scores ([+-][0-9.]+) / ([+-][0-9.]+), P\(prefers the detailed answer\) = "
        r"([0-9.]+)$", out, re.M
    )
    assert len(lines) == 2 and len({uid for uid, *_ in lines}) == 2  # one user of each type
    for _, s1, s2, p in lines:
        s1, s2 = float(s1), float(s2)
        assert s1 + s2 == pytest.approx(0.0, abs=2e-4)
        assert float(p) == pytest.approx(1 / (1 + math.exp(-(s1 - s2))), abs=1e-3)
