"""`make demo` at small size: examples/demo.toml end to end on Flower's simulation engine (DP,
distributed noise, secure aggregation), with the non-private FedBTL reference, and the final
lines a newcomer reads: epsilon spent, the comparison with its interval, the verdict, the
report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from securefvpa import cli
from securefvpa.config import load_config

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.toml"


def test_demo_config_is_the_private_distributed_recipe():
    cfg = load_config(DEMO)
    assert cfg.federation.mode == "simulation"
    assert cfg.privacy.enabled and cfg.privacy.noise == "distributed" and cfg.secagg.enabled
    assert cfg.privacy.target_epsilon == 8.0 and cfg.privacy.unit == "pair"
    assert cfg.data.users >= 1000 and cfg.federation.users_per_client > 1


@pytest.mark.slow
def test_demo_runs_end_to_end_at_small_size_and_names_the_comparison(tmp_path, capsys):
    out = tmp_path / "demo"
    small = [
        "data.users=60",
        "federation.users_per_client=10",
        "federation.rounds=2",
        "federation.eval_every=2",
    ]
    argv = ["run", str(DEMO), "--out", str(out), "--baseline", "fedbtl"]
    for s in small:
        argv += ["--set", s]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    eps = next(x for x in lines if x.startswith("epsilon spent: "))
    assert "per pair" in eps and "distributed noise" in eps and "budget 8" in eps
    assert float(eps.split()[2]) <= 8.0
    assert any(x.startswith("unseen users: fedvpa-gp ") and "vs non-private FedBTL" in x
               and "95% CI" in x for x in lines)  # fmt: skip
    assert lines[-2].startswith("beats non-private FedBTL on unseen users: ")
    assert lines[-1] == f"privacy report: {out / 'report.html'}"
    assert (out / "report.html").is_file() and (out / "comparison.json").is_file()
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["summary"]["epsilon_max"] <= 8.0
