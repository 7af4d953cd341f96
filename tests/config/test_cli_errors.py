"""Former crashes of the command line are now one-line errors that name the bad value (issue 12).

Each test here failed before the fix it guards (a traceback, a hang, an out-of-memory kill, or a
misleading message); the mutation each one catches is in its docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import securefvpa
from securefvpa.cli import build_parser, main
from securefvpa.config import EmbeddingConfig, RunConfig, dump_config

REPO = Path(__file__).resolve().parents[2]


# -- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\x00\x01\xff\xfe\x80garbage", "not UTF-8"),
        (b'[data]\nusers = "caf\xe9"\n', "not UTF-8"),
        (b"\x00\x00\x00\x00", "not valid TOML"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8"),
    ],
    ids=["binary", "latin-1", "nul-bytes", "png"],
)
@pytest.mark.parametrize("command", ["run", "audit"])
def test_binary_or_non_utf8_config_is_a_config_error(tmp_path, capsys, content, needle, command):
    """Mutant caught: load_config without the UnicodeDecodeError branch (a traceback, not 2)."""
    cfg = tmp_path / "bad.toml"
    cfg.write_bytes(content)
    assert main([command, str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "bad.toml" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_directory_as_config(tmp_path, capsys):
    """Mutant caught: load_config that lets IsADirectoryError escape."""
    (tmp_path / "conf.toml").mkdir()
    assert main(["run", str(tmp_path / "conf.toml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "conf.toml" in err


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n"])
def test_empty_config_is_refused(tmp_path, capsys, text):
    """Mutant caught: load_config accepting a file that sets no key (a default job would run)."""
    cfg = tmp_path / "empty.toml"
    cfg.write_text(text)
    assert main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "empty.toml" in err and "sets no key" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["run", "audit"])
def test_out_naming_a_file(tmp_path, capsys, command):
    """Mutant caught: no --out check (FileExistsError traceback from mkdir)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nsource = "synth"\nusers = 8\n')
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert main([command, str(cfg), "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "afile" in err and "not a directory" in err
    assert afile.read_text() == "keep me"


# -- data synth --------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["parent-is-a-file", "out-is-a-directory"])
def test_unwritable_synth_out(tmp_path, capsys, where):
    """Mutant caught: write_records without the OSError -> DataError translation."""
    if where == "parent-is-a-file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "users.jsonl"
    else:
        out = tmp_path / "d"
        out.mkdir()
    args = ["data", "synth", "--out", str(out), "--users", "2", "--pairs-per-user", "4"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and str(out) in err and "Traceback" not in err


# -- account -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--delta", "-1e-5", "--delta must be in (0, 1). Found -1e-05"),
        ("--q", "-0.5", "--q must be in (0, 1]. Found -0.5"),
        ("--sigma", "-1", "--sigma must be > 0. Found -1.0"),
        ("--sigma", "-1E3", "--sigma must be > 0. Found -1000.0"),
    ],
)
def test_account_negative_numbers_are_values_then_refused(capsys, flag, value, needle):
    """Mutant caught: the stock argparse matcher, which reads -1e-5 as an option
    ("expected one argument"); and no range check naming the flag."""
    args = {"--q": "0.1", "--sigma": "1", "--steps": "3", "--delta": "1e-5", flag: value}
    assert main(["account", *[x for kv in args.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert needle in err and "expected one argument" not in err


ACCOUNT_CHILD = r"""
import resource, sys
limit = 3 * 1024**3
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from securefvpa.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _account(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", ACCOUNT_CHILD, "account", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,  # a safety net, not a speed assertion: the old code ran > 7 min or OOM'd
        env=env,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--q", "0.01", "--sigma", "1e-3", "--steps", "1", "--delta", "1e-5"),
        ("--q", "0.01", "--sigma", "1.1", "--steps", "100000000", "--delta", "1e-5"),
        ("--q", "0.5", "--sigma", "0.01", "--steps", "10", "--delta", "1e-5"),
    ],
    ids=["sigma-1e-3", "steps-1e8", "sigma-0.01-steps-10"],
)
def test_account_with_absurd_discretization_answers_under_a_memory_cap(args):
    """Mutant caught: account that builds the PLD at 1e-4 whatever it costs (38 GiB / 250 GiB /
    2.5 GB and minutes): under a 3 GiB address-space cap it dies with MemoryError."""
    proc = _account(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["notes"], out
    assert out["epsilon_rdp"] > 0
    if out["epsilon_pld"] is not None:
        assert out["pld_value_discretization_interval"] > 1e-4
        assert out["epsilon_pld"] <= out["epsilon_rdp"] * 1.0001
    assert "estimated" in " ".join(out["notes"])


def test_account_ordinary_input_keeps_the_fine_discretization(capsys):
    """Mutant caught: a cost guard that coarsens every request (the answer would drift)."""
    args = ["--q", "0.01", "--sigma", "1.1", "--steps", "10000", "--delta", "1e-5"]
    assert main(["account", *args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pld_value_discretization_interval"] == 1e-4 and out["notes"] == []
    assert out["epsilon_pld"] == pytest.approx(5.1926, abs=1e-3)


# -- --version, --help -----------------------------------------------------------------------


def test_version(capsys):
    """Mutant caught: no --version option (argparse: "the following arguments are required")."""
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"securefvpa {securefvpa.__version__}"


def _parsers(parser: argparse.ArgumentParser, path: str = "securefvpa"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_of_every_command_has_help():
    """Mutant caught: any add_argument or add_parser without help text."""
    missing = []
    for path, parser in _parsers(build_parser()):
        if not (parser.description or path == "securefvpa"):
            missing.append(f"{path}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    if not choice.help:
                        missing.append(f"{path} {choice.dest}: no help")
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


# -- report on a non-private run ---------------------------------------------------------------


def test_report_on_a_non_private_run_says_so(tmp_path, capsys):
    """Mutant caught: the old path via the manifest ("was not prepared by securefvpa run")."""
    (tmp_path / "config.resolved.toml").write_text(dump_config(RunConfig()))
    (tmp_path / "metrics.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a private run" in err and "privacy.enabled" in err
    assert "not prepared" not in err


# -- embedding cache -----------------------------------------------------------------------------


def test_default_embedding_cache_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    """Mutant caught: a relative default cache_dir ('.cache/...' under the working directory)."""
    from securefvpa.data.embed import resolve_cache_dir

    monkeypatch.delenv("SECUREFVPA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    seen = set()
    for cwd in ("a", "b"):
        (tmp_path / cwd).mkdir()
        monkeypatch.chdir(tmp_path / cwd)
        seen.add(resolve_cache_dir(EmbeddingConfig().cache_dir))
    assert seen == {tmp_path / "xdg" / "securefvpa" / "embeddings"}
    monkeypatch.setenv("SECUREFVPA_CACHE_DIR", str(tmp_path / "mine"))
    assert resolve_cache_dir("") == tmp_path / "mine" / "embeddings"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("SECUREFVPA_CACHE_DIR")
    assert resolve_cache_dir("") == Path.home() / ".cache" / "securefvpa" / "embeddings"
    assert resolve_cache_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"

