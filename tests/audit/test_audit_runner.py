"""End-to-end canary audit: power with sigma = 0 (fails, CLI exit 1), no false alarm at the
configured DP settings (passes), and the canary design it relies on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from securefvpa.audit.canaries import canary_records, draw_design, insert_canaries
from securefvpa.audit.settings import load_audit_config
from securefvpa.data.dataset import EmbeddedPairs, UserData, UserSplit
from securefvpa.errors import ConfigError

EMBED_CACHE = str(Path(__file__).resolve().parents[2] / ".cache" / "securefvpa" / "embeddings")

# Small on purpose: 24 synth users (19 seen, 5 training clients), 100 canaries, 5 rounds.
TINY = {
    "seed": 0,
    "data": {"source": "synth", "users": 24, "pairs_per_user": 16, "heldout_pairs": 4,
             "unseen_share": 0.2},
    "embedding": {"cache_dir": EMBED_CACHE},
    "model": {"kind": "fedvpa-gp"},
    "train": {"lr": 0.03, "context_pairs": 2, "target_pairs": 6},
    "federation": {"mode": "simulation", "rounds": 5, "local_steps": 10, "users_per_client": 4,
                   "min_fit_clients": 2},
    "privacy": {"enabled": True, "target_epsilon": 1.0, "budget_epsilon": 1.0, "clip": 1.0,
                "sample_rate": 0.5},
    "audit": {"canaries": 100, "seed": 0, "confidence": 0.95},
}


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "audit.toml"
    path.write_text(tomli_w.dumps(TINY))
    return path


def test_no_noise_audit_fails_and_cli_exits_1(tiny_config: Path, tmp_path: Path) -> None:
    from securefvpa.cli import main

    out = tmp_path / "no_noise"
    code = main(["audit", str(tiny_config), "--out", str(out), "--set", "audit.inject=no_noise"])
    report = json.loads((out / "audit_report.json").read_text())
    s = report["summary"]
    assert code == 1
    assert s["passed"] is False and s["inject"] == "no_noise"
    assert report["training"]["noise_multiplier_used"] == 0.0
    # The claim is still the configured sigma's epsilon (~1), and the bound clears it clearly.
    assert s["claimed_epsilon"] == pytest.approx(1.0, abs=0.02)
    assert s["epsilon_lower_bound"] > 1.5 * s["claimed_epsilon"]
    assert (out / "audit.html").read_text().count("FAIL") >= 1


def test_configured_dp_audit_passes(tiny_config: Path, tmp_path: Path) -> None:
    from securefvpa.audit.runner import run_audit

    out = tmp_path / "configured"
    (out).mkdir()
    (out / "report.html").write_text("<html><body><h1>privacy</h1></body></html>")
    report = run_audit(tiny_config, out, overrides={})
    s = report["summary"]
    assert s["passed"] is True and s["inject"] == "none"
    assert s["epsilon_lower_bound"] <= s["claimed_epsilon"]
    assert report["training"]["noise_multiplier_used"] == report["claim"]["noise_multiplier"] > 1
    # membership and users are recorded, and recomputable from the seed alone
    c = report["canaries"]
    design = draw_design(c["m"], c["seed"], c["seen_users"])
    assert c["membership"] == [int(x) for x in design.membership]
    assert c["user_of"] == [int(x) for x in design.user_of]
    assert "empirical-audit" in (out / "report.html").read_text()


def test_canaries_deterministic_unique_and_equal_length() -> None:
    a, la = canary_records(50, 7)
    b, lb = canary_records(50, 7)
    assert a == b and np.array_equal(la, lb)
    texts = [t for r in a for t in (r.prompt, r.chosen, r.rejected)]
    assert len(set(texts)) == len(texts)
    assert all(len(r.chosen.split()) == len(r.rejected.split()) for r in a)
    assert 10 < int(la.sum()) < 40  # labels are random per canary
    c, _ = canary_records(50, 8)
    assert {r.chosen for r in c}.isdisjoint({r.chosen for r in a})


def _pairs(n: int, dim: int = 4) -> EmbeddedPairs:
    rng = np.random.default_rng(0)
    f = lambda: rng.normal(size=(n, dim)).astype(np.float32)  # noqa: E731
    return EmbeddedPairs(prompt=f(), chosen=f(), rejected=f(),
                         chosen_len=rng.random(n).astype(np.float32),
                         rejected_len=rng.random(n).astype(np.float32),
                         user_index=np.zeros(n, np.int64), type_index=np.zeros(n, np.int64),
                         controversial=np.zeros(n, np.int8), user_ids=("u0", "u1"),
                         type_names=("t",), pair_ids=tuple(f"p{i}" for i in range(n)))


def test_non_members_are_the_flipped_replace_one_neighbour() -> None:
    real = _pairs(6)
    users = (UserData(0, 0, np.arange(3), np.arange(3, 4)), UserData(1, 0, np.arange(4, 6),
                                                                     np.zeros(0, np.int64)))
    split = UserSplit(seen=users, unseen=())
    design = draw_design(40, 3, n_users=2)
    canaries = _pairs(40)
    data = insert_canaries(real, split, design, canaries)
    rows = data.canary_rows
    t, a = data.train_pairs, data.audit_pairs
    mem = design.membership
    assert 0 < mem.sum() < 40
    np.testing.assert_array_equal(a.chosen[rows], canaries.chosen)
    np.testing.assert_array_equal(t.chosen[rows][mem], canaries.chosen[mem])
    np.testing.assert_array_equal(t.chosen[rows][~mem], canaries.rejected[~mem])
    np.testing.assert_array_equal(t.rejected[rows][~mem], canaries.chosen[~mem])
    np.testing.assert_array_equal(t.chosen_len[rows][~mem], canaries.rejected_len[~mem])
    np.testing.assert_array_equal(t.prompt, a.prompt)
    np.testing.assert_array_equal(t.chosen[:6], real.chosen)  # real rows untouched
    for j, u in enumerate(data.split.seen):
        assert set(u.train_rows) == set(users[j].train_rows) | set(rows[design.user_of == j])
        np.testing.assert_array_equal(u.heldout_rows, users[j].heldout_rows)


@pytest.mark.parametrize(("table", "needle"), [
    ({"canaries": 1}, "audit.canaries"),
    ({"inject": "sometimes"}, "audit.inject"),
    ({"confidence": 1.5}, "audit.confidence"),
    ({"k_grid": [[150, 150]]}, "audit.k_grid"),
    ({"colour": "red"}, "audit.colour"),
])
def test_bad_audit_settings_named(tmp_path: Path, table: dict, needle: str) -> None:
    cfg = {k: v for k, v in TINY.items() if k != "audit"} | {"audit": table}
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(cfg))
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_audit_config(path)


def test_audit_refuses_a_config_without_dp(tiny_config: Path) -> None:
    with pytest.raises(ConfigError, match="privacy.enabled"):
        load_audit_config(tiny_config, {"privacy.enabled": False})
