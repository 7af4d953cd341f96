"""The audit trail cannot be silently rewritten (issue 12, item 2).

``securefvpa ledger verify RUN_DIR`` checks the chain against the anchor (entry count + head
hash) the run's report records; corrupt or foreign files are tampering (exit 1), not a crash;
``securefvpa report`` never replaces a report with a shorter or different history;
``securefvpa report verify`` is a command; and an anchor kept outside the run directory catches
what an in-directory anchor cannot (a rebuilt chain with a rewritten report).
"""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from securefvpa.cli import main
from securefvpa.privacy.events import DpSgdEvent
from securefvpa.privacy.ledger import Ledger, verify


def _grow(path, rnd: int = 7) -> None:
    """An honest append after the report (a resumed run's next spend)."""
    with Ledger(path) as led:
        led.append(
            DpSgdEvent(
                client_id="client_00009", round=rnd, noise_multiplier=5.0, sample_rate=0.2,
                steps=3, clip=1.0,
            )
        )


def _report(run_dir, capsys) -> dict:
    assert main(["report", str(run_dir)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return json.loads((run_dir / "privacy_report.json").read_text())


def test_ledger_verify_run_dir_checks_the_report_anchor(private_run, ledger_tools, capsys):
    """Mutants caught: ledger verify without the report anchor (truncation passes: the old
    `ledger verify` printed OK for 150 of 194 rows); a RUN_DIR argument not accepted (exit 2)."""
    run_dir, path = private_run
    rep = _report(run_dir, capsys)
    n = rep["ledger"]["entry_count"]
    assert main(["ledger", "verify", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{n} entries" in out and "anchored" in out
    ledger_tools.sql(path, f"DELETE FROM entries WHERE seq > {n - 3}")
    assert verify(path).ok  # the chain alone cannot see it: the honest limit
    assert main(["ledger", "verify", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED" in out and f"{n - 3} entries" in out and str(n) in out


def test_ledger_verify_detects_a_rollback(private_run, capsys, tmp_path):
    """A copy of the ledger from an earlier moment put back after the report (rollback)."""
    run_dir, path = private_run
    early = tmp_path / "early.sqlite"
    shutil.copy(path, early)
    _grow(path)
    _report(run_dir, capsys)
    shutil.copy(early, path)
    assert main(["ledger", "verify", str(run_dir)]) == 1
    assert "TAMPERED" in capsys.readouterr().out


def test_ledger_verify_detects_a_rebuilt_chain(private_run, ledger_tools, capsys):
    """Every hash recomputed after deleting a spend: the chain verifies, the anchor does not."""
    run_dir, path = private_run
    _report(run_dir, capsys)
    ledger_tools.rebuild_chain(path, drop_seqs=(2,))
    _grow(path)  # back to the anchored length: only the hashes tell
    assert verify(path).ok
    assert main(["ledger", "verify", str(run_dir)]) == 1
    assert "head hash" in capsys.readouterr().out


def test_ledger_growth_after_the_report_is_noted_not_failed(private_run, capsys):
    run_dir, path = private_run
    _report(run_dir, capsys)
    _grow(path)
    assert main(["ledger", "verify", str(run_dir)]) == 0
    assert "1 entries appended after" in capsys.readouterr().out


def test_ledger_verify_without_any_anchor_warns(private_run, capsys):
    run_dir, path = private_run
    assert main(["ledger", "verify", str(path)]) == 0
    cap = capsys.readouterr()
    assert "no anchor" in cap.out + cap.err


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _payload_offset(path) -> int:
    raw = path.read_bytes()
    i = raw.find(b'"sample_rate":0.2')
    assert i > 0
    return i + len(b'"sample_rate":0.')


CORRUPTIONS = {
    "truncated-to-half": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "truncated-mid-page": lambda p: p.write_bytes(p.read_bytes()[:5000]),
    "header-byte-flipped": lambda p: _flip(p, 3),
    "page-size-byte-flipped": lambda p: _flip(p, 16),
    "btree-page-header-flipped": lambda p: _flip(p, 4096),
    "payload-byte-flipped": lambda p: _flip(p, _payload_offset(p)),
    "empty-file": lambda p: p.write_bytes(b""),
    "text-file": lambda p: p.write_text("these are not the rows you are looking for\n" * 40),
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_corrupt_ledger_file_is_tampering_not_a_crash(private_run, capsys, how):
    """Mutant caught: read errors surfacing as exit 2 ("database disk image is malformed",
    "entries table has columns ()") instead of the tamper exit 1 with a clear message."""
    run_dir, path = private_run
    CORRUPTIONS[how](path)
    assert main(["ledger", "verify", str(path)]) == 1
    cap = capsys.readouterr()
    assert "TAMPERED" in cap.out and "Traceback" not in cap.err
    assert "columns ()" not in cap.out
    res = verify(path)
    assert not res.ok and res.reason


def test_foreign_sqlite_database_is_not_a_ledger(tmp_path, capsys):
    p = tmp_path / "other.sqlite"
    conn = sqlite3.connect(p)
    conn.execute("CREATE TABLE entries (id INTEGER)")
    conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.commit()
    conn.close()
    assert main(["ledger", "verify", str(p)]) == 1
    assert "not a privacy ledger" in capsys.readouterr().out


def test_missing_ledger_is_bad_input(tmp_path, capsys):
    assert main(["ledger", "verify", str(tmp_path / "absent.sqlite")]) == 2
    assert "no privacy ledger" in capsys.readouterr().err
    assert main(["ledger", "verify", str(tmp_path)]) == 2  # a folder that is no run directory
    assert "config.resolved.toml" in capsys.readouterr().err


# -- report: never overwritten by a shorter or different history -------------------------------


def test_report_is_not_overwritten_by_a_truncated_history(private_run, ledger_tools, capsys):
    """Mutant caught: write_report replacing privacy_report.json unconditionally (the old CLI
    overwrote the only anchor with the shorter history, eps max 8.0 -> 7.17)."""
    run_dir, path = private_run
    rep = _report(run_dir, capsys)
    before = (run_dir / "privacy_report.json").read_bytes()
    html_before = (run_dir / "report.html").read_bytes()
    n = rep["ledger"]["entry_count"]
    ledger_tools.sql(path, f"DELETE FROM entries WHERE seq > {n - 4}")
    assert main(["report", str(run_dir)]) == 1
    cap = capsys.readouterr()
    assert (run_dir / "privacy_report.json").read_bytes() == before
    assert (run_dir / "report.html").read_bytes() == html_before
    new = json.loads((run_dir / "privacy_report.1.json").read_text())
    assert new["ledger"]["entry_count"] == n - 4
    assert (run_dir / "report.1.html").is_file()
    assert "privacy_report.1.json" in cap.out and "shorter" in cap.out
    # the old anchor still convicts the ledger
    assert main(["ledger", "verify", str(run_dir)]) == 1


def test_report_is_not_overwritten_by_a_different_history(private_run, ledger_tools, capsys):
    run_dir, path = private_run
    _report(run_dir, capsys)
    before = (run_dir / "privacy_report.json").read_bytes()
    ledger_tools.rebuild_chain(path, drop_seqs=(3,))
    _grow(path)  # same length again, different history
    assert main(["report", str(run_dir)]) == 1
    assert "different history" in capsys.readouterr().out
    assert (run_dir / "privacy_report.json").read_bytes() == before
    assert (run_dir / "privacy_report.1.json").is_file()
    assert main(["report", str(run_dir)]) == 1  # a second attempt takes the next free number
    assert (run_dir / "privacy_report.2.json").is_file()


def test_report_is_replaced_when_the_history_only_grew(private_run, capsys):
    """A resumed run extends the ledger: the report is brought up to date in place."""
    run_dir, path = private_run
    rep = _report(run_dir, capsys)
    _grow(path)
    new = _report(run_dir, capsys)
    assert new["ledger"]["entry_count"] == rep["ledger"]["entry_count"] + 1
    assert not (run_dir / "privacy_report.1.json").exists()


# -- report verify from the command line -------------------------------------------------------


def test_report_verify_command(private_run, capsys):
    """Mutant caught: no `report verify` subcommand (verify_report was a Python function only)."""
    run_dir, _ = private_run
    _report(run_dir, capsys)
    assert main(["report", "verify", str(run_dir)]) == 0
    assert "OK" in capsys.readouterr().out
    rep = json.loads((run_dir / "privacy_report.json").read_text())
    rep["clients"][0]["epsilon_pld"] *= 0.5
    (run_dir / "privacy_report.json").write_text(json.dumps(rep))
    assert main(["report", "verify", str(run_dir)]) == 1
    assert "epsilon_pld" in capsys.readouterr().out


def test_report_verify_without_a_report_is_bad_input(private_run, capsys):
    run_dir, _ = private_run
    assert main(["report", "verify", str(run_dir)]) == 2
    assert "privacy_report.json" in capsys.readouterr().err


# -- the external anchor ------------------------------------------------------------------------


def test_external_anchor_catches_a_rebuilt_chain_with_a_rewritten_report(
    private_run, ledger_tools, capsys
):
    """threat_models/dp.md, "External anchor": someone with write access to the run directory
    rebuilds the keyless chain without a spend and regenerates the report; every in-directory
    check passes, only the head published elsewhere (--head/--count) fails it."""
    run_dir, path = private_run
    rep = _report(run_dir, capsys)
    published_head = rep["ledger"]["head_hash"]
    published_count = rep["ledger"]["entry_count"]
    # the attacker: drop client_00000's first spend, rebuild, delete and regenerate the report
    ledger_tools.rebuild_chain(path, drop_seqs=(2,))
    for f in run_dir.glob("*report*"):
        f.unlink()
    _report(run_dir, capsys)
    assert main(["ledger", "verify", str(run_dir)]) == 0
    assert main(["report", "verify", str(run_dir)]) == 0
    capsys.readouterr()
    args = ["ledger", "verify", str(run_dir), "--head", published_head]
    assert main([*args, "--count", str(published_count)]) == 1
    assert "TAMPERED" in capsys.readouterr().out
    assert main(args) == 1  # the head alone: it is not in the chain at all


def test_external_anchor_accepts_the_honest_ledger(private_run, capsys):
    run_dir, path = private_run
    rep = _report(run_dir, capsys)
    head, count = rep["ledger"]["head_hash"], rep["ledger"]["entry_count"]
    _grow(path)  # honest growth after publication
    args = ["ledger", "verify", str(path), "--head", head, "--count", str(count)]
    assert main(args) == 0
    assert main(["ledger", "verify", str(path), "--head", head]) == 0
    capsys.readouterr()
    assert main(["ledger", "verify", str(path), "--head", "ab" * 32]) == 1
    assert main(["ledger", "verify", str(path), "--head", "not-hex"]) == 2
    assert main(["ledger", "verify", str(path), "--count", "3"]) == 2  # --count needs --head
