"""The securefvpa command: exit codes and messages that name the bad value."""

from __future__ import annotations

import json

import pytest

from securefvpa.cli import main


def test_account_prints_pld_and_rdp(capsys):
    assert (
        main(
            [
                "account",
                "--q",
                "0.01",
                "--sigma",
                "1.1",
                "--steps",
                "10000",
                "--delta",
                "1e-5",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["epsilon_pld"] == pytest.approx(5.1926, abs=1e-3)
    assert out["epsilon_rdp"] == pytest.approx(5.6320, abs=1e-3)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--q", "1.5", "--sigma", "1", "--steps", "3", "--delta", "1e-5"], "1.5"),
        (["--q", "0.1", "--sigma", "0", "--steps", "3", "--delta", "1e-5"], "--sigma"),
        (["--q", "0.1", "--sigma", "1", "--steps", "3", "--delta", "1.0"], "delta"),
    ],
)
def test_account_bad_values(args, needle, capsys):
    assert main(["account", *args]) == 2
    assert needle in capsys.readouterr().err


def test_account_distributed_matches_the_ddg_accountant_and_names_missing_flags(capsys):
    """`account --distributed` is the DDG accountant a distributed run calibrates with: the
    demo's plan (sigma 1.9132 over 5 honest shares, 4,096 coordinates, gamma 2^-21, q 0.1,
    100 rounds, replace-one) spends epsilon 8; the continuous Gaussian with the same z less."""
    from securefvpa.privacy import ddg

    argv = ["account", "--distributed", "--q", "0.1", "--sigma", "1.9132010145810303",
            "--steps", "100", "--delta", "1e-5", "--relation", "replace_one",
            "--honest-shares", "5", "--dim", "4096", "--gamma", str(2.0**-21), "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    rnd = ddg.DdgRound(sample_rate=0.1, clip=1.0, gamma=2.0**-21, beta=out["beta"], dim=4096,
                       local_sigma=out["local_sigma_levels"], honest_shares=5)  # fmt: skip
    assert rnd.central_noise_multiplier == pytest.approx(1.9132010145810303)
    assert out["epsilon_ddg"] == pytest.approx(ddg.epsilon([rnd] * 100, delta=1e-5))
    assert out["epsilon_ddg"] == pytest.approx(8.0, abs=0.01)
    assert out["epsilon_continuous_gaussian_rdp"] < out["epsilon_ddg"]
    assert main(argv[:-7] + ["--dim", "4096"]) == 2
    assert "--distributed needs --honest-shares, --gamma" in capsys.readouterr().err
    assert main(["account", "--q", "0.1", "--sigma", "1", "--steps", "3", "--delta", "1e-5",
                 "--gamma", "0.1"]) == 2  # fmt: skip
    assert "--gamma is for --distributed only" in capsys.readouterr().err
    too_coarse = argv[:-3] + ["--gamma", "1.0", "--json"]
    assert main(too_coarse) == 2
    assert "below the bound's minimum" in capsys.readouterr().err


def test_account_rejects_non_numbers(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["account", "--q", "abc", "--sigma", "1", "--steps", "3", "--delta", "1e-5"])
    assert exc.value.code == 2
    assert "'abc'" in capsys.readouterr().err


def test_run_with_bad_config_names_key(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[privacy]\ndelta = 2.0\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "privacy.delta" in capsys.readouterr().err


def test_data_synth_and_check(tmp_path, capsys):
    out = tmp_path / "u.jsonl"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(out),
                "--users",
                "4",
                "--pairs-per-user",
                "4",
                "--types",
                "2",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert main(["data", "check", str(out)]) == 0
    assert "16 valid records, 4 users" in capsys.readouterr().out
    out.write_text(out.read_text() + '{"user_id": "x"}\n')
    assert main(["data", "check", str(out)]) == 2
    assert "u.jsonl:17: missing field 'pair_id'" in capsys.readouterr().err


def test_ledger_verify_exit_codes(tmp_path, capsys):
    import sqlite3

    from securefvpa.privacy.events import DpSgdEvent
    from securefvpa.privacy.ledger import Ledger

    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        for r in range(3):
            ledger.append(
                DpSgdEvent(
                    client_id="c1",
                    round=r,
                    noise_multiplier=1.0,
                    sample_rate=0.5,
                    steps=2,
                    clip=1.0,
                )
            )
    assert main(["ledger", "verify", str(path)]) == 0
    con = sqlite3.connect(path)
    con.execute("UPDATE entries SET payload = replace(payload, '0.5', '0.1') WHERE seq = 2")
    con.commit()
    con.close()
    assert main(["ledger", "verify", str(path)]) == 1
    assert "TAMPERED" in capsys.readouterr().out
