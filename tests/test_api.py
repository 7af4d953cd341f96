"""The Python front door (``securefvpa``/``securefvpa.api``) and the ``score`` command.

Mutants each test catches are in its docstring.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import securefvpa
from securefvpa.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
EMBED_CACHE = str(REPO / ".cache" / "securefvpa" / "embeddings")
HEAVY = ("torch", "flwr", "opacus", "transformers", "ray")


def _imported_after(code: str) -> list[str]:
    probe = (
        f"import sys\n{code}\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.strip()
    return out.split() if out else []


def test_import_is_cheap():
    """`import securefvpa`, reading a config and the privacy calculator import neither torch,
    flwr, opacus, transformers nor ray. Mutant caught: `from securefvpa.train.inference import
    TrainedModel` at module level of __init__ or api (torch at import)."""
    assert _imported_after("import securefvpa") == []
    assert _imported_after(
        "import securefvpa\n"
        "securefvpa.load_config({'data': {'source': 'synth'}})\n"
        "securefvpa.epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=10, delta=1e-5,"
        " relation='replace_one')"
    ) == []


def test_public_names_resolve_and_run_is_the_function():
    """Every name in __all__ resolves; `securefvpa.run` is the function even after the
    `securefvpa.run` module was imported (a submodule import would rebind the attribute).
    Mutant caught: binding `run` before importing the securefvpa.run module."""
    for name in securefvpa.__all__:
        assert getattr(securefvpa, name) is not None, name
    import securefvpa.run as run_module  # noqa: F401  (as a user might)
    from securefvpa.run import run as run_config

    assert callable(securefvpa.run) and securefvpa.run is not run_config
    assert securefvpa.run.__module__ == "securefvpa.api"
    assert isinstance(securefvpa.ConfigError("x"), securefvpa.SecureFVPAError)
    from securefvpa._version import __version__

    assert securefvpa.__version__ == __version__
    with pytest.raises(AttributeError):
        securefvpa.no_such_name  # noqa: B018


def test_load_config_from_path_dict_or_runconfig(tmp_path):
    """Mutants caught: the caller's dict changed by overrides; overrides ignored for a
    RunConfig; a wrong type reaching a raw TypeError."""
    raw = {"data": {"source": "synth", "users": 12}, "federation": {"mode": "inprocess"}}
    before = json.dumps(raw, sort_keys=True)
    from_dict = securefvpa.load_config(raw, overrides={"federation.rounds": 4})
    assert json.dumps(raw, sort_keys=True) == before
    assert from_dict.federation.rounds == 4 and from_dict.data.users == 12
    path = tmp_path / "c.toml"
    path.write_text('[data]\nsource = "synth"\nusers = 12\n')
    assert securefvpa.load_config(path).data.users == 12
    again = securefvpa.load_config(from_dict, overrides={"federation.rounds": 7})
    assert again.federation.rounds == 7 and from_dict.federation.rounds == 4
    with pytest.raises(securefvpa.ConfigError, match="Found int"):
        securefvpa.load_config(3)  # type: ignore[arg-type]
    with pytest.raises(securefvpa.ConfigError, match="privacy.delta"):
        securefvpa.load_config({"privacy": {"delta": 2.0}})


def test_epsilon_matches_the_accountant_and_the_relation_matters():
    """PLD epsilon of q = 0.01, sigma = 1.1, T = 10^4, delta = 1e-5 (add/remove) is 5.19 (the
    CLI's `account` value); replace-one is larger; RDP is the looser cross-check. Mutants
    caught: relation ignored; RDP returned for "pld"."""
    kw = dict(noise_multiplier=1.1, sample_rate=0.01, steps=10_000, delta=1e-5)
    add = securefvpa.epsilon(**kw, relation="add_remove_one")
    assert add == pytest.approx(5.1926, abs=1e-3)
    assert securefvpa.epsilon(**kw, relation="replace_one") > add + 1.0
    assert securefvpa.epsilon(**kw, relation="add_remove_one", accountant="rdp") == pytest.approx(
        5.6320, abs=1e-3)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (dict(noise_multiplier=0.0), "noise_multiplier"),
        (dict(sample_rate=1.5), "sample_rate"),
        (dict(delta=1.0), "delta"),
        (dict(relation="neighbours"), "neighbours"),
        (dict(accountant="gdp"), "gdp"),
    ],
)
def test_epsilon_bad_values_are_named(kw, needle):
    args = dict(noise_multiplier=1.0, sample_rate=0.1, steps=10, delta=1e-5,
                relation="replace_one") | kw
    with pytest.raises(securefvpa.AccountingError) as exc:
        securefvpa.epsilon(**args)
    assert needle in str(exc.value)


def test_epsilon_refuses_absurd_pld_with_the_estimate_and_is_keyword_only():
    """sigma = 1e-3 would need a PLD of absurd size: refused within seconds with the estimate
    (the `account --sigma 1e-3` out-of-memory of the issue). Mutant caught: no cost guard."""
    with pytest.raises(securefvpa.AccountingError, match="accountant='rdp'"):
        securefvpa.epsilon(noise_multiplier=1e-3, sample_rate=1.0, steps=1000, delta=1e-5,
                           relation="replace_one")
    with pytest.raises(TypeError):
        securefvpa.epsilon(1.0, 0.1, 10, 1e-5, "replace_one")  # type: ignore[misc]


def test_calibrate_hits_the_target():
    """epsilon(calibrate(target)) <= target, and a 1 % smaller sigma exceeds it. Mutant caught:
    relation or rounds not passed through."""
    kw = dict(delta=1e-5, sample_rate=0.1, steps=20, relation="replace_one")
    sigma = securefvpa.calibrate(target_epsilon=2.0, rounds=5, **kw)
    eps = lambda s: securefvpa.epsilon(noise_multiplier=s, steps=100, delta=1e-5,  # noqa: E731
                                       sample_rate=0.1, relation="replace_one")
    assert eps(sigma) <= 2.0 + 1e-6 < eps(sigma * 0.99)


# -- a run, and scoring with it ----------------------------------------------------------------


@pytest.fixture(scope="module")
def run_result(tmp_path_factory):
    base = tmp_path_factory.mktemp("api")
    users = securefvpa.generate_users(users=12, pairs_per_user=6, types=2, seed=2)
    assert securefvpa.write_records(base / "users.jsonl", users) == 72
    config = {
        "seed": 0,
        "data": {"source": "jsonl", "path": str(base / "users.jsonl"), "heldout_pairs": 2},
        "embedding": {"cache_dir": EMBED_CACHE},
        "federation": {"mode": "inprocess", "rounds": 2, "local_steps": 1,
                       "users_per_client": 2, "min_fit_clients": 2},
        # sigma given (not calibrated from a target: the calibration alone takes ~15 s here)
        "privacy": {"enabled": True, "noise_multiplier": 1.5, "budget_epsilon": 8.0},
    }
    return securefvpa.run(config, base / "run"), base


def test_run_returns_a_typed_result(run_result):
    """A DP run from a dict: metrics, report and ledger paths, parameters. Mutant caught: run
    returning the raw metrics dict."""
    result, base = run_result
    assert isinstance(result, securefvpa.RunResult)
    assert set(result.accuracy) >= {"seen_users", "unseen_users"}
    assert result.report_path is not None and result.report_path.is_file()
    assert result.ledger_path is not None and result.ledger_path.is_file()
    report = json.loads(result.report_path.read_text())
    assert 0 < report["summary"]["epsilon_max"] <= 8.0
    params = result.parameters()
    assert params and all(v.size for v in params.values())


def test_score_through_the_front_door(run_result):
    result, base = run_result
    records = securefvpa.read_records(base / "users.jsonl")
    mine = [r for r in records if r.user_id == records[0].user_id]
    scores = securefvpa.score(result.run_dir, mine, prompt="Human: Any tips for moving?",
                              responses=["Book the van early.", "Lift the piano alone."])
    assert isinstance(scores, securefvpa.ResponseScores)
    assert len(scores.scores) == 2 and scores.latent is None
    model = securefvpa.load_model(result.run_dir)
    assert model.score(mine, prompt="Human: Any tips for moving?",
                       responses=["Book the van early.", "Lift the piano alone."]).scores \
        == scores.scores


def test_run_audit_returns_a_typed_result(tmp_path):
    """A tiny no-noise audit from a mapping: the config is written beside the report, the
    result is typed, and the summary matches audit_report.json. Mutant caught: the dict
    config not written (the audit cannot be rerun) / a summary field mislabelled."""
    config = {
        "seed": 0,
        "data": {"source": "synth", "users": 16, "pairs_per_user": 8, "heldout_pairs": 2},
        "embedding": {"cache_dir": EMBED_CACHE},
        "federation": {"mode": "inprocess", "rounds": 2, "local_steps": 2,
                       "users_per_client": 4, "min_fit_clients": 2},
        "privacy": {"enabled": True, "noise_multiplier": 2.0, "budget_epsilon": 8.0},
        "audit": {"canaries": 20, "seed": 0},
    }
    res = securefvpa.run_audit(config, tmp_path / "audit")
    assert isinstance(res, securefvpa.AuditResult)
    assert (tmp_path / "audit" / "audit_config.toml").is_file()
    saved = json.loads(res.report_path.read_text())["summary"]
    assert res.passed == saved["passed"] and res.canaries == 20 == saved["canaries"]
    assert res.claimed_epsilon == pytest.approx(saved["claimed_epsilon"])
    assert res.epsilon_lower_bound == pytest.approx(saved["epsilon_lower_bound"])
    assert res.html_path.is_file()
    with pytest.raises(securefvpa.ConfigError, match="Found int"):
        securefvpa.run_audit(5, tmp_path / "x")  # type: ignore[arg-type]


# -- the score command -------------------------------------------------------------------------


def _user_file(base: Path, name: str = "me.jsonl") -> Path:
    records = securefvpa.read_records(base / "users.jsonl")
    mine = [r for r in records if r.user_id == records[0].user_id]
    securefvpa.write_records(base / name, mine)
    return base / name


def test_score_command_prints_scores_and_json(run_result, capsys, tmp_path):
    """Text and --json output; a response read from a file (final newline dropped). Mutants
    caught: a file path scored as its own name; --json printing the latent."""
    result, base = run_result
    pairs = _user_file(base)
    resp = tmp_path / "long.txt"
    resp.write_text("Book the van early,\nespecially for weekends.\n")
    args = ["score", str(result.run_dir), "--pairs", str(pairs), "--prompt",
            "Human: Any tips for moving?", "--responses", str(resp), "Lift the piano alone."]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "z inferred on this machine" in text and "[1] Book the van early, especially" in text
    assert "preferred: [" in text
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["responses"][0]["text"] == "Book the van early,\nespecially for weekends."
    assert out["run_dir"] == str(result.run_dir) and out["context_pairs"] == 6
    assert sum(r["score"] for r in out["responses"]) == pytest.approx(0.0, abs=1e-6)
    assert set(out) == {"run_dir", "model", "context_pairs", "prompt", "responses", "preferred"}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"run_dir": "nope"}, "'nope' not found"),
        ({"pairs": "missing.jsonl"}, "--pairs 'missing.jsonl' is not a file"),
        ({"pairs": "all"}, "pairs of 12 users"),
        ({"responses": ["only one"]}, "at least two responses"),
        ({"responses": ["typo.txt", "b"]}, "--responses 'typo.txt': no such file"),
        ({"responses": ["", "b"]}, "responses[0] must be a non-empty string"),
    ],
    ids=["run-dir", "pairs-missing", "pairs-of-all-users", "one-response", "missing-file",
         "empty-response"],
)
def test_score_command_bad_input_exits_2_naming_the_value(run_result, capsys, change, needle):
    result, base = run_result
    run_dir = change.get("run_dir", str(result.run_dir))
    pairs = change.get("pairs", str(_user_file(base)))
    if pairs == "all":
        pairs = str(base / "users.jsonl")
    responses = change.get("responses", ["a", "b"])
    code = main(["score", run_dir, "--pairs", pairs, "--prompt", "Human: hi", "--responses",
                 *responses])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err


def test_score_help_documents_every_option():
    sub = next(a for a in build_parser()._subparsers._group_actions)  # noqa: SLF001
    score = sub.choices["score"]
    text = score.format_help()
    for option in ("RUN_DIR", "--pairs", "--prompt", "--responses", "--json"):
        assert option in text
    assert all(a.help for a in score._actions)  # noqa: SLF001
    assert "never printed" in text and "sigmoid" in text
