"""Every shipped example configuration loads and validates (a typo in one is a user's first error)."""

from __future__ import annotations

from pathlib import Path

import pytest

from securefvpa.config import load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.toml"))


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"demo.toml", "central.toml", "federated.toml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.run_id


def test_federated_example_uses_the_drift_recipe() -> None:
    fed = load_config(Path(EXAMPLES[0]).parent / "federated.toml").federation
    assert (fed.server_optimizer, fed.local_steps, fed.mode) == ("fedadam", 2, "simulation")
