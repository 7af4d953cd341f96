"""The ``securefvpa`` command: data, run, account, ledger, report, audit.

Every command validates its arguments at the boundary and exits with status 2 and a one-line
message naming the bad value on a ``SecureFVPAError``; status 1 is reserved for an audit whose
lower bound exceeds the claimed epsilon, and for ``ledger verify`` finding tampering.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from securefvpa.errors import SecureFVPAError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer. Found {text!r}.") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1. Found {value}.")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number. Found {text!r}.") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite. Found {text!r}.")
    return value


def _override(text: str) -> tuple[str, Any]:
    """``--set section.key=VALUE`` with VALUE parsed as a TOML value (bare words as strings)."""
    import tomllib

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE. Found {text!r}.")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="securefvpa", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="preference data tools")
    dsub = data.add_subparsers(dest="data_command", required=True)
    synth = dsub.add_parser("synth", help="generate users with conflicting preferences (JSONL)")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--users", required=True, type=_positive_int)
    synth.add_argument("--pairs-per-user", required=True, type=_positive_int)
    synth.add_argument("--types", type=_positive_int, default=2)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--controversial-share", type=_float, default=0.5)
    check = dsub.add_parser("check", help="validate a JSONL file of preference records")
    check.add_argument("path", type=Path)

    run = sub.add_parser("run", help="train: central, Flower simulation or deployment")
    run.add_argument("config", type=Path)
    run.add_argument("--out", required=True, type=Path, help="run directory")
    run.add_argument("--resume", action="store_true", help="continue from the last complete round")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. federation.rounds=3",
    )

    acc = sub.add_parser(
        "account", help="privacy calculator: epsilon of Poisson-subsampled Gaussian DP-SGD"
    )
    acc.add_argument("--q", required=True, type=_float, help="sampling rate")
    acc.add_argument("--sigma", required=True, type=_float, help="noise multiplier")
    acc.add_argument("--steps", required=True, type=_positive_int)
    acc.add_argument("--delta", required=True, type=_float)
    acc.add_argument(
        "--relation", choices=["add_remove_one", "replace_one"], default="add_remove_one"
    )
    acc.add_argument("--json", action="store_true", help="print JSON")

    ledger = sub.add_parser("ledger", help="privacy ledger tools")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True)
    verify = lsub.add_parser("verify", help="check the hash chain of a ledger")
    verify.add_argument("path", type=Path)
    verify.add_argument("--head", default=None, help="expected head hash (e.g. from a report)")

    report = sub.add_parser("report", help="write privacy_report.json and report.html for a run")
    report.add_argument("run_dir", type=Path)

    audit = sub.add_parser("audit", help="empirical privacy audit with canaries")
    audit.add_argument("config", type=Path)
    audit.add_argument("--out", required=True, type=Path)
    audit.add_argument(
        "--set", dest="overrides", action="append", type=_override, default=[], metavar="KEY=VALUE"
    )
    return p


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        from securefvpa.data.synth import synth_to_file

        if not 0.0 <= args.controversial_share <= 1.0:
            raise SecureFVPAError(
                f"--controversial-share must be in [0, 1]. Found {args.controversial_share}."
            )
        n = synth_to_file(
            args.out,
            users=args.users,
            pairs_per_user=args.pairs_per_user,
            types=args.types,
            controversial_share=args.controversial_share,
            seed=args.seed,
        )
        print(f"wrote {n} records to {args.out}")
        return 0
    from securefvpa.data.jsonl import read_records

    records = read_records(args.path)
    users = len({r.user_id for r in records})
    print(f"{args.path}: {len(records)} valid records, {users} users")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from securefvpa.run import run

    metrics = run(args.config, args.out, resume=args.resume, overrides=dict(args.overrides))
    acc = metrics.get("accuracy", {})
    print(
        json.dumps(
            {"model": metrics.get("model"), "accuracy": acc, "latent": metrics.get("latent")},
            indent=2,
        )
    )
    if metrics.get("report_html"):
        print(f"privacy report: {metrics['report_html']}")
    return 0


def _cmd_account(args: argparse.Namespace) -> int:
    from securefvpa.privacy.accountant import epsilon_both
    from securefvpa.privacy.events import DpSgdEvent

    event = DpSgdEvent("cli", 0, args.sigma, args.q, args.steps, 1.0, args.relation)
    res = epsilon_both([event], args.delta)
    out = {
        "q": args.q,
        "sigma": args.sigma,
        "steps": args.steps,
        "delta": args.delta,
        "relation": args.relation,
        "epsilon_pld": res.pld,
        "epsilon_rdp": res.rdp,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"q={args.q} sigma={args.sigma} steps={args.steps} delta={args.delta} relation={args.relation}"
        )
        print(f"epsilon (PLD, primary):     {res.pld:.4f}")
        print(f"epsilon (RDP, cross-check): {res.rdp:.4f}")
    return 0


def _cmd_ledger(args: argparse.Namespace) -> int:
    from securefvpa.privacy.ledger import verify

    result = verify(args.path, expected_head=args.head)
    if result.ok:
        print(f"OK: {result.entry_count} entries, head {result.head_hash}")
        return 0
    print(f"TAMPERED: first bad entry seq={result.first_bad_seq}: {result.reason}")
    return 1


def _cmd_report(args: argparse.Namespace) -> int:
    from securefvpa.config import load_config
    from securefvpa.dp_plan import write_privacy_report

    cfg = load_config(args.run_dir / "config.resolved.toml")
    utility = None
    metrics_path = args.run_dir / "metrics.json"
    if metrics_path.exists():
        utility = json.loads(metrics_path.read_text()).get("accuracy")
    out = write_privacy_report(cfg, args.run_dir, utility=utility)
    print(f"wrote {out['json']} and {out['html']}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from securefvpa.audit.runner import run_audit

    report = run_audit(args.config, args.out, overrides=dict(args.overrides))
    print(json.dumps(report["summary"], indent=2))
    return 0 if report["summary"]["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("flwr", "alembic", "ray", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    logging.getLogger("flwr").propagate = args.verbose
    handlers = {
        "data": _cmd_data,
        "run": _cmd_run,
        "account": _cmd_account,
        "ledger": _cmd_ledger,
        "report": _cmd_report,
        "audit": _cmd_audit,
    }
    try:
        return handlers[args.command](args)
    except SecureFVPAError as exc:
        print(f"securefvpa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
