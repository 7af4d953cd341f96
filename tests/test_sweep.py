"""``securefvpa sweep``: the grid, the cells' runs, resume after a kill, the tables and plots."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from securefvpa.data.jsonl import write_records
from securefvpa.data.synth import generate
from securefvpa.errors import ConfigError
from securefvpa.run import evaluated_metrics
from securefvpa.sweep import load_sweep, parse_sweep, plan_cells, run_sweep, t_interval

EMBED_CACHE = str(Path(__file__).resolve().parents[2] / ".cache" / "securefvpa" / "embeddings")
REPO = Path(__file__).resolve().parents[1]


def _base(**sweep) -> dict:
    return {
        "seed": 0,
        "data": {"source": "synth", "users": 16, "pairs_per_user": 16, "heldout_pairs": 4},
        "embedding": {"cache_dir": EMBED_CACHE},
        "train": {"lr": 0.01},
        "federation": {"mode": "inprocess", "rounds": 2, "local_steps": 1, "min_fit_clients": 5},
        "secagg": {"enabled": False},
        "sweep": sweep,
    }


def _write(tmp_path: Path, raw: dict, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(raw))
    return path


def _grouped_jsonl(path: Path) -> Path:
    """The generated users of seed 0 (the embedding cache holds their texts), with types
    renamed into two "conversations": ``conv<u % 2>/<type>`` (four types, two groups)."""
    recs = generate(users=16, pairs_per_user=16, types=2, controversial_share=0.5, seed=0)
    users = sorted({r.user_id for r in recs})
    conv = {u: f"conv{i % 2}" for i, u in enumerate(users)}
    write_records(
        path, [dataclasses.replace(r, user_type=f"{conv[r.user_id]}/{r.user_type}") for r in recs]
    )
    return path


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow  # ~15 s on 2 cores: 10 real runs (4 of them DP under distributed noise)
def test_tiny_sweep_writes_tables_plots_and_groups(tmp_path):
    raw = _base(
        epsilon=[4, "inf"],
        unit=["pair"],
        noise=["distributed"],
        model=["btl", "fedvpa-gp", "oracle"],
        seeds=[0, 1],
    )
    raw["data"] = {"source": "jsonl", "path": str(_grouped_jsonl(tmp_path / "g.jsonl")),
                   "users": 0, "pairs_per_user": 16, "heldout_pairs": 4}
    raw["sweep"]["datasets"] = {"groups": {}}
    res = run_sweep(_write(tmp_path, raw), tmp_path / "out")
    out = tmp_path / "out"
    rows = _csv(out / "results.csv")
    assert len(rows) == 12 == len(res.rows)
    doc = json.loads((out / "results.json").read_text())
    assert [r["cell_id"] for r in doc["rows"]] == [r["cell_id"] for r in rows]
    for r in rows:  # each row is its cell's metrics (DP: the nodes' own evaluation logs)
        cell = out / "cells" / r["cell_id"]
        assert not (cell / "partitions").exists()  # the clients' data copies are deleted
        assert (cell / "manifest.json").is_file()
        m = evaluated_metrics(cell, json.loads((cell / "metrics.json").read_text()))
        assert float(r["accuracy_unseen"]) == m["accuracy"]["unseen_users"]
        assert float(r["mi_bits"]) == m["latent"]["mutual_information_bits"]
        assert r["dataset"] == "groups"
        if r["epsilon"] == "inf":
            assert r["unit"] == r["noise"] == r["epsilon_spent"] == ""
        else:
            assert r["unit"] == "pair" and r["noise"] == "distributed"
            assert 0 < float(r["epsilon_spent"]) <= 4.0 + 1e-9
    by = {(r["model"], r["epsilon"], r["seed"]): r for r in rows}
    for (model, eps, seed), r in by.items():
        btl = float(by["btl", eps, seed]["accuracy_unseen"])
        oracle = float(by["oracle", eps, seed]["accuracy_unseen"])
        if oracle > btl:
            want = (float(r["accuracy_unseen"]) - btl) / (oracle - btl)
            assert float(r["gap_closed"]) == pytest.approx(want)
        else:
            assert r["gap_closed"] == ""
        # gain kept: against BTL at the same epsilon, and against non-private BTL
        acc = float(r["accuracy_unseen"])
        off = float(by[model, "inf", seed]["accuracy_unseen"])
        off_btl = float(by["btl", "inf", seed]["accuracy_unseen"])
        if eps != "inf" and model != "btl" and off > off_btl:
            assert float(r["gain_kept"]) == pytest.approx((acc - btl) / (off - off_btl))
            assert float(r["gain_kept_vs_nonprivate_btl"]) == pytest.approx(
                (acc - off_btl) / (off - off_btl)
            )
        else:
            assert r["gain_kept"] == r["gain_kept_vs_nonprivate_btl"] == ""
    # per conversation: two groups per cell whose pairs add up to the cell's pairs
    groups = _csv(out / "results_by_group.csv")
    assert {g["group"] for g in groups} == {"conv0", "conv1"}
    for r in rows:
        mine = [g for g in groups if g["cell_id"] == r["cell_id"]]
        assert len(mine) == 2
        assert sum(int(g["pairs_unseen"]) for g in mine) == int(r["pairs_unseen"])
        assert sum(int(g["pairs_seen"]) for g in mine) == int(r["pairs_seen"])
        assert all(int(g["types"]) == 2 for g in mine)
        # ... and each is its cell's per-type counts summed over the types named "<group>/..."
        cell = out / "cells" / r["cell_id"]
        m = evaluated_metrics(cell, json.loads((cell / "metrics.json").read_text()))
        ev = [x["eval"] for x in m["rounds"] if x.get("eval")][-1]
        names = m["data"]["type_names"]
        assert sum(ev["by_type"]["pairs"]["unseen_users"]) == int(r["pairs_unseen"])
        for g in mine:
            idx = [i for i, name in enumerate(names) if name.startswith(g["group"] + "/")]
            for role, col in (("unseen_users", "unseen"), ("seen_users", "seen")):
                n = sum(ev["by_type"]["pairs"][role][i] for i in idx)
                k = sum(ev["by_type"]["correct"][role][i] for i in idx)
                assert int(g[f"pairs_{col}"]) == n > 0
                assert float(g[f"accuracy_{col}"]) == pytest.approx(k / n)
    # summary: 95 % t interval over the two seeds
    summary = _csv(out / "summary.csv")
    s = next(x for x in summary if x["model"] == "oracle" and x["epsilon"] == "inf")
    vals = [float(by["oracle", "inf", seed]["accuracy_unseen"]) for seed in ("0", "1")]
    mean, lo, hi = t_interval(vals)
    assert float(s["accuracy_unseen"]) == pytest.approx(mean)
    if lo is not None and hi > lo:
        assert float(s["accuracy_unseen_ci_low"]) == pytest.approx(lo)
        assert hi - mean == pytest.approx(12.706 * abs(vals[0] - vals[1]) / 2, rel=1e-3)
    for stem in ("groups_accuracy_vs_epsilon", "groups_gap_closed_vs_users"):
        assert (out / "plots" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (out / "plots" / f"{stem}.svg").read_text()


def test_killed_sweep_continues_and_skips_finished_cells(tmp_path):
    """SIGKILL in the middle of the second cell (after its round-1 checkpoint); the rerun
    leaves the first cell alone, resumes the second from its checkpoint and completes."""
    cfg = _write(tmp_path, _base(epsilon=["inf"], model=["btl", "oracle"], seeds=[0]))
    out = tmp_path / "out"
    script = (
        "import os, signal, sys\n"
        "import securefvpa.rounds.engine as eng\n"
        "from securefvpa.sweep import run_sweep\n"
        "orig = eng.RunDirStore.save\n"
        "def save(self, state):\n"
        "    orig(self, state)\n"
        "    if state.round == 1 and '-oracle-' in str(self.checkpoint):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "eng.RunDirStore.save = save\n"
        "run_sweep(sys.argv[1], sys.argv[2])\n"
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(cfg), str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    first = out / "cells" / "synth-btl-epsinf-u16-p16-s0"
    second = out / "cells" / "synth-oracle-epsinf-u16-p16-s0"
    assert (first / "metrics.json").is_file()
    assert (second / "server_state.npz").is_file() and not (second / "metrics.json").exists()
    assert not (first / "partitions").exists()  # finished: its clients' data copies deleted
    assert (second / "partitions").is_dir()  # unfinished: kept for the resume
    assert not (out / "results.csv").exists()
    mtime = (first / "metrics.json").stat().st_mtime_ns

    res = run_sweep(cfg, out)
    assert (first / "metrics.json").stat().st_mtime_ns == mtime
    log = (out / "sweep.log").read_text()
    assert "synth-btl-epsinf-u16-p16-s0 already finished" in log
    assert "synth-oracle-epsinf-u16-p16-s0 was interrupted; resuming it" in log
    # the resumed cell ran round 2 only: round 1 stays attempt 1 in its journal
    assert (second / "rounds.journal").read_text().split("\n")[:2] == ["1 1", "2 1"]
    assert [r["cell_id"] for r in res.rows] == [first.name, second.name]
    assert [r["resumed"] for r in _csv(out / "results.csv")] == ["False", "True"]

    # an interrupted cell with nothing but its config restarts cleanly; another config's
    # directory is set aside, not overwritten
    (second / "metrics.json").unlink()
    (second / "manifest.json").unlink()
    stale = out / "cells" / first.name / "config.resolved.toml"
    stale.write_text(stale.read_text().replace("rounds = 2", "rounds = 3"))
    run_sweep(cfg, out, keep_partitions=True)
    log = (out / "sweep.log").read_text()
    assert "holds another config's run; moved to" in log
    assert (out / "stale" / f"{first.name}.1" / "metrics.json").is_file()
    assert (first / "metrics.json").is_file() and (second / "metrics.json").is_file()
    assert (first / "partitions").is_dir() and (second / "partitions").is_dir()  # kept


@pytest.mark.parametrize(
    "sweep, match",
    [
        ({"epsilon": [4, -1]}, r"sweep.epsilon\[1\] must be a number > 0 or \"inf\". Found -1"),
        ({"epsilon": ["infinity"]}, r"sweep.epsilon\[0\] .* Found 'infinity'"),
        ({"model": ["btl", "gpt"]}, r"sweep.model\[1\] must be one of .* Found 'gpt'"),
        ({"noise": ["gaussian"]}, r"sweep.noise\[0\] .* Found 'gaussian'"),
        ({"unit": ["record"]}, r"sweep.unit\[0\] .* Found 'record'"),
        ({"users": [16, 1.5]}, r"sweep.users\[1\] must be an integer"),
        ({"pairs_per_user": [2]}, r"sweep.pairs_per_user\[0\] .* Found 2"),
        ({"seeds": [0, 0]}, r"sweep.seeds names 0 twice"),
        ({"epsilons": [1]}, r"unknown key sweep.epsilons"),
        ({"axes": {"model.hidden": [64, 2]}}, r'sweep.axes."model.hidden"\[1\] = 2 is refused'),
        ({"axes": {"seed": [1]}}, r"set by the grid itself"),
        ({"datasets": {"bad name": {}}}, r"Found 'bad name'"),
        ({"datasets": {"x": {"data": {"types": 0}}}}, r"sweep.datasets.x is refused: data.types"),
    ],
)
def test_a_bad_grid_value_is_a_config_error_naming_it(sweep, match):
    with pytest.raises(ConfigError, match=match):
        parse_sweep(_base(**sweep))


def test_invalid_combinations_are_skipped_with_the_reason_and_inf_is_one_cell():
    raw = _base(epsilon=[8, "inf"], unit=["pair", "user"], noise=["distributed", "local"],
                model=["btl"])
    raw["federation"]["local_steps"] = 2  # distributed noise needs 1 local step
    cells, skipped = plan_cells(parse_sweep(raw))
    ids = [c.cell_id for c in cells]
    assert ids == [
        "synth-btl-eps8-pair-local-u16-p16-s0",
        "synth-btl-eps8-user-local-u16-p16-s0",
        "synth-btl-epsinf-u16-p16-s0",  # privacy off: once, whatever unit and noise say
    ]
    assert [s["cell_id"] for s in skipped] == [
        "synth-btl-eps8-pair-distributed-u16-p16-s0",
        "synth-btl-eps8-user-distributed-u16-p16-s0",
    ]
    assert all("federation.local_steps = 1" in s["reason"] for s in skipped)
    local = cells[0].config
    assert (local.privacy.enabled, local.privacy.target_epsilon, local.privacy.budget_epsilon) == (
        True, 8.0, 8.0)
    assert not cells[2].config.privacy.enabled
    raw["federation"]["local_steps"] = 1  # now distributed noise is valid: secure aggregation
    cells, skipped = plan_cells(parse_sweep(raw))  # is switched on for it (the base has it off)
    assert not skipped and len(cells) == 5
    dist = [c for c in cells if c.noise == "distributed"]
    assert len(dist) == 2 and all(c.config.secagg.enabled for c in dist)
    assert not any(c.config.secagg.enabled for c in cells if c.noise != "distributed")
    central = _base(epsilon=[8], model=["btl"])
    central["federation"] = {"mode": "central"}
    with pytest.raises(ConfigError, match="no cell of the sweep grid is a valid run.*central"):
        plan_cells(parse_sweep(central))


def test_the_example_sweep_loads_and_plans():
    spec = load_sweep(REPO / "examples" / "sweep.toml")
    cells, skipped = plan_cells(spec)
    assert not skipped and len(cells) >= 8
    assert all(c.config.federation.mode == "inprocess" for c in cells)
    assert {c.noise for c in cells if c.private} == {"distributed"}
    assert len({c.seed for c in cells}) >= 2 and any(not math.isfinite(c.epsilon) for c in cells)


def test_cli_dry_run_lists_cells_and_a_bad_value_exits_2(tmp_path, capsys):
    from securefvpa.cli import main

    cfg = _write(tmp_path, _base(epsilon=[8, "inf"], model=["btl"], noise=["local"]))
    assert main(["sweep", str(cfg), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "synth-btl-eps8-pair-local-u16-p16-s0",
        "synth-btl-epsinf-u16-p16-s0",
        "2 cells, 0 skipped",
    ]
    assert main(["sweep", str(cfg), "--dry-run", "--set", "sweep.epsilon=[0]"]) == 2
    assert "sweep.epsilon[0] must be a number > 0" in capsys.readouterr().err
