"""The ``securefvpa`` command: data, run, score, sweep, account, ledger, report, audit, config.

Every command validates its arguments at the boundary and exits with status 2 and a one-line
message naming the bad value on a ``SecureFVPAError`` (bad input). Status 1 is reserved for an
audit finding: an empirical audit whose lower bound exceeds the claimed epsilon; a privacy
ledger that fails verification or its anchor, or a file that is not an intact ledger
(``ledger verify``, ``report``); a report that does not match its ledger (``report verify``);
and a ``report`` that had to be written beside an existing one because the ledger's history is
shorter or different. Negative numbers are read as values (``--delta -1e-5``) and then refused
with the option named.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from securefvpa import __version__
from securefvpa.errors import ConfigError, DataError, SecureFVPAError

# Everything Python's float() reads as a negative number, so that "-1e-5" is a value, not an
# option (argparse's own pattern knows only "-1" and "-1.5").
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.I)


class _Parser(argparse.ArgumentParser):
    """argparse with negative numbers in scientific notation read as values."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse has no public hook for this; the attribute exists in Python 3.11-3.13 and
        # tests/config/test_cli_errors.py fails if it stops working.
        self._negative_number_matcher = _NEGATIVE_NUMBER


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer. Found {text!r}.") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1. Found {value}.")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer. Found {text!r}.") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0. Found {value}.")
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


def _add(parent: Any, name: str, text: str, **kwargs: Any) -> argparse.ArgumentParser:
    return parent.add_parser(name, help=text, description=text, **kwargs)


_SET_HELP = (
    "override a config key with a TOML value, e.g. federation.rounds=3 or "
    'data.source="jsonl"; repeatable'
)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="securefvpa",
        description="Federated, personalized preference learning with DP-SGD, secure "
        "aggregation, a hash-chained privacy ledger and epsilon reports.",
        epilog="Exit status: 0 success; 1 an audit finding (tampered ledger, report mismatch, "
        "audit lower bound above the claim); 2 bad input (the message names the value).",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--version", action="version", version=f"securefvpa {__version__}",
        help="print the version and exit",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = _add(sub, "data", "preference data tools: generate users, check a JSONL file")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = _add(dsub, "synth", "generate users with conflicting preferences (JSONL)")
    synth.add_argument("--out", required=True, type=Path, metavar="FILE",
                       help="JSONL file to write (replaced atomically)")
    synth.add_argument("--users", required=True, type=_positive_int, metavar="N",
                       help="number of users to generate")
    synth.add_argument("--pairs-per-user", required=True, type=_positive_int, metavar="K",
                       help="preference pairs per user")
    synth.add_argument("--types", type=_positive_int, default=2, metavar="T",
                       help="number of user types with conflicting preferences (default 2)")
    synth.add_argument("--seed", type=int, default=0, metavar="S",
                       help="seed of the generator (default 0)")
    synth.add_argument("--controversial-share", type=_float, default=0.5, metavar="F",
                       help="share of pairs on which the types disagree, in [0, 1] "
                       "(default 0.5)")
    check = _add(
        dsub, "check",
        "validate a JSONL file of preference records: schema, duplicates, an empty file, and "
        "pairs whose chosen and rejected are the same after whitespace normalisation or after "
        "tokenisation and left truncation (exit 2, listed by pair id)",
    )
    check.add_argument("path", type=Path, metavar="FILE", help="JSONL file of records")
    check.add_argument("--config", type=Path, default=None, metavar="CONFIG",
                       help="run config whose [embedding] model_path and max_tokens (and "
                       "data.heldout_pairs) the check uses (default: the built-in defaults)")

    run = _add(sub, "run", "train: central, Flower simulation or deployment")
    run.add_argument("config", type=Path, metavar="CONFIG", help="run configuration (TOML)")
    run.add_argument("--out", required=True, type=Path, metavar="RUN_DIR",
                     help="run directory (created; must not hold another run unless --resume)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in RUN_DIR from its last complete round")
    run.add_argument("--set", dest="overrides", action="append", type=_override, default=[],
                     metavar="KEY=VALUE", help=_SET_HELP)
    run.add_argument("--baseline", choices=["fedbtl"], default=None,
                     help="also train non-private FedBTL on the same data and rounds (in "
                     "process, into RUN_DIR/baseline-fedbtl) and print the paired accuracy "
                     "difference with its 95%% CI (RUN_DIR/comparison.json)")

    score = _add(
        sub, "score",
        "score candidate responses to a prompt for ONE user with a trained federated run: the "
        "user's latent z is inferred on this machine from their own pairs and never printed; "
        "scores are centred rewards (they sum to 0) and sigmoid(s_i - s_j) is the model's "
        "probability that the user prefers response i over response j",
    )
    score.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                       help="a finished federated run directory (the --out of `securefvpa run`;"
                       " central runs keep no parameters)")
    score.add_argument("--pairs", required=True, type=Path, metavar="USER.jsonl",
                       help="the user's own preference pairs: JSONL records of one user_id "
                       "(README \"Your own data\"); the oracle model also needs user_type")
    score.add_argument("--prompt", required=True, metavar="TEXT",
                       help='the prompt the responses answer, e.g. "Human: How do I ...?"')
    score.add_argument("--responses", required=True, nargs="+", metavar="FILE_OR_TEXT",
                       help="two or more candidate responses; each value is the text itself or "
                       "the path of an existing file holding one response (UTF-8, a final "
                       "newline dropped)")
    score.add_argument("--json", action="store_true",
                       help="print JSON (prompt, responses with scores, preferred index; never z)")

    sweep = _add(
        sub, "sweep",
        "privacy-utility study: every cell of the [sweep] grid (epsilon x unit x noise x model "
        "x users x pairs per user x seeds) is a `securefvpa run` in DIR/cells/<cell id>; "
        "resumable (finished cells are not rerun); writes DIR/results.csv, results.json, "
        "results_by_group.csv, summary.csv (means with t intervals over seeds) and DIR/plots/",
    )
    sweep.add_argument("config", type=Path, metavar="CONFIG",
                       help="sweep file: a run configuration plus a [sweep] table (TOML)")
    sweep.add_argument("--out", type=Path, default=None, metavar="DIR",
                       help="sweep directory (created; rerun with the same DIR to continue); "
                       "required unless --dry-run")
    sweep.add_argument("--set", dest="overrides", action="append", type=_override, default=[],
                       metavar="KEY=VALUE",
                       help=_SET_HELP + " (sweep.* keys too, e.g. sweep.seeds=[0])")
    sweep.add_argument("--keep-partitions", action="store_true",
                       help="keep each finished cell's partitions/ (the clients' embedded "
                       "pairs; deleted by default: only an unfinished run needs them)")
    sweep.add_argument("--dry-run", action="store_true",
                       help="list the cells and the skipped combinations, run nothing")

    acc = _add(
        sub, "account",
        "privacy calculator: epsilon of T Poisson-subsampled Gaussian steps (PLD primary, "
        "RDP cross-check); when the PLD discretization would need too much memory or time it "
        "is coarsened (still an upper bound) or skipped, with a note giving the estimate; with "
        "--distributed, T rounds of the distributed discrete Gaussian (DDG bound)",
    )
    acc.add_argument("--q", required=True, type=_float, metavar="Q",
                     help="sampling rate per step, in (0, 1]")
    acc.add_argument("--sigma", required=True, type=_float, metavar="SIGMA",
                     help="noise multiplier (noise std / clip norm), > 0")
    acc.add_argument("--steps", required=True, type=_positive_int, metavar="T",
                     help="number of steps, >= 1")
    acc.add_argument("--delta", required=True, type=_float, metavar="DELTA",
                     help="target delta, in (0, 1)")
    acc.add_argument("--relation", choices=["add_remove_one", "replace_one"],
                     default="add_remove_one",
                     help="neighbouring relation (default add_remove_one; securefvpa runs "
                     "account replace_one)")
    acc.add_argument("--distributed", action="store_true",
                     help="the distributed discrete Gaussian (privacy.noise = distributed): "
                     "steps are rounds, --sigma the central noise multiplier that the honest "
                     "shares carry together (DDG bound, Kairouz, Liu & Steinke 2021); needs "
                     "--honest-shares, --dim and --gamma")
    acc.add_argument("--honest-shares", type=_positive_int, default=None, metavar="H",
                     help="with --distributed: honest noise shares any unmasked sum contains "
                     "(threshold t minus colluding clients T)")
    acc.add_argument("--dim", type=_positive_int, default=None, metavar="D",
                     help="with --distributed: noised coordinates (padded dimension)")
    acc.add_argument("--gamma", type=_float, default=None, metavar="GAMMA",
                     help="with --distributed: value of one ring level in clip-norm units, > 0")
    acc.add_argument("--beta", type=_float, default=math.exp(-0.5), metavar="BETA",
                     help="with --distributed: conditional-rounding parameter in [0, 1) "
                     "(default exp(-1/2), as the runs use)")
    acc.add_argument("--json", action="store_true", help="print JSON instead of text")

    ledger = _add(sub, "ledger", "privacy ledger tools")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    verify = _add(
        lsub, "verify",
        "check a privacy ledger's hash chain and its anchors; exit 1 when tampered, truncated, "
        "rolled back, rebuilt, or not an intact ledger file",
    )
    verify.add_argument(
        "target", type=Path, metavar="RUN_DIR_OR_LEDGER",
        help="a run directory (its ledger is checked against the anchor of every "
        "privacy_report*.json in it) or a ledger file",
    )
    verify.add_argument(
        "--head", default=None, metavar="HASH",
        help="a head hash kept outside the run directory (64 hex digits): the ledger must "
        "contain it (with --count: as the hash of entry COUNT)",
    )
    verify.add_argument("--count", type=_nonneg_int, default=None, metavar="COUNT",
                        help="the entry count recorded with --head")

    report = _add(
        sub, "report",
        "`report RUN_DIR` derives privacy_report.json and report.html from the run's ledger "
        "(an existing report of a shorter or different history is kept: the new one is "
        "written as privacy_report.<n>.json and the command exits 1); `report verify RUN_DIR` "
        "recomputes every report in RUN_DIR from the ledger (exit 1 on a mismatch)",
        usage="securefvpa report [-h] RUN_DIR\n       securefvpa report verify [--report FILE] "
        "RUN_DIR",
    )
    report.add_argument("words", nargs="+", metavar="[verify] RUN_DIR",
                        help="the run directory, after `verify` to check instead of write")
    report.add_argument("--report", type=Path, default=None, metavar="FILE",
                        help="with verify: check only this report file")

    audit = _add(sub, "audit", "empirical privacy audit with canaries (exit 1 when the lower "
                 "bound exceeds the claimed epsilon)")
    audit.add_argument("config", type=Path, metavar="CONFIG", help="audit configuration (TOML)")
    audit.add_argument("--out", required=True, type=Path, metavar="DIR",
                       help="directory for the audit report (created)")
    audit.add_argument("--set", dest="overrides", action="append", type=_override, default=[],
                       metavar="KEY=VALUE", help=_SET_HELP)

    config = _add(sub, "config", "configuration tools")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    ref = _add(csub, "reference",
               "print (or write) the configuration reference generated from the typed config")
    ref.add_argument("--out", type=Path, default=None, metavar="FILE",
                     help="write the reference here (docs/config.md in the repository)")
    return p


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out must name a directory; {str(out)!r} is not a directory.")


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
    return _data_check(args)


def _data_check(args: argparse.Namespace) -> int:
    from securefvpa.config import RunConfig, load_config
    from securefvpa.data.check import check_records
    from securefvpa.data.jsonl import read_records

    cfg = load_config(args.config) if args.config is not None else RunConfig()
    records = read_records(args.path)
    if not records:
        raise DataError(f"{args.path}: no records (the file is empty or holds only blank lines)")
    per_user: dict[str, int] = {}
    for r in records:
        per_user[r.user_id] = per_user.get(r.user_id, 0) + 1
    counts = sorted(per_user.values())
    print(f"{args.path}: {len(records)} valid records, {len(per_user)} users")
    print(
        f"pairs per user: min {counts[0]}, median {statistics.median(counts):g}, "
        f"max {counts[-1]}"
    )
    need = cfg.data.heldout_pairs + 1
    short = sum(c < need for c in counts)
    if short:
        print(
            f"{short} users have fewer than {need} pairs (data.heldout_pairs + 1): a run drops "
            "them (data.min_pairs_per_user)"
        )
    e = cfg.embedding
    result = check_records(records, model_path=e.model_path, max_tokens=e.max_tokens)
    if result.ok:
        return 0
    lines = [
        f"{args.path}: {result.count} pairs would train nothing and score as ties:",
    ]
    if result.whitespace_identical:
        lines.append(
            "  chosen == rejected after whitespace normalisation: "
            + _ids(result.whitespace_identical)
        )
    if result.truncation_identical:
        lines.append(
            "  chosen == rejected after tokenisation and left truncation to "
            f"embedding.max_tokens={e.max_tokens}: " + _ids(result.truncation_identical)
        )
    print(f"securefvpa data: error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(line, file=sys.stderr)
    return 2


def _ids(ids: list[str], limit: int = 50) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" … and {len(ids) - limit} more" if len(ids) > limit else "")


def _cmd_run(args: argparse.Namespace) -> int:
    from securefvpa.run import evaluated_metrics, resolve_config, run

    _check_out_dir(args.out)
    cfg = resolve_config(args.config, dict(args.overrides))
    result = run(cfg, args.out, resume=args.resume)
    metrics = evaluated_metrics(result.run_dir, result.metrics)
    print(
        json.dumps(
            {
                "model": metrics.get("model"),
                "accuracy": metrics.get("accuracy", {}),
                "latent": metrics.get("latent"),
                "evaluation_source": metrics.get("evaluation_source"),
            },
            indent=2,
        )
    )
    if cfg.privacy.enabled and result.report_path is not None and result.report_path.is_file():
        report = json.loads(result.report_path.read_text(encoding="utf-8"))
        eps, acc = report["summary"].get("epsilon_max"), report["accounting"]
        print(
            f"epsilon spent: {eps:.3f} per {cfg.privacy.unit} (largest over clients; "
            f"{acc['neighbouring_relation']}, {cfg.privacy.noise} noise, delta {acc['delta']:.3g},"
            f" budget {cfg.privacy.budget_epsilon:g})"
            if eps is not None else "epsilon spent: none recorded"
        )
    if args.baseline == "fedbtl":
        from securefvpa.compare import compare_with_fedbtl, summary_lines

        comparison = compare_with_fedbtl(cfg, result.run_dir, result.metrics, resume=args.resume)
        for line in summary_lines(comparison):
            print(line)
    if metrics.get("privacy_report"):
        print(f"privacy report: {metrics['privacy_report']['html']}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from securefvpa import sweep

    if args.dry_run:
        cells, skipped = sweep.plan_cells(sweep.load_sweep(args.config, dict(args.overrides)))
        for cell in cells:
            print(cell.cell_id)
        for s in skipped:
            print(f"skipped {s['cell_id']}: {s['reason']}")
        print(f"{len(cells)} cells, {len(skipped)} skipped")
        return 0
    if args.out is None:
        raise ConfigError("sweep: --out DIR is required (only --dry-run runs without it)")
    _check_out_dir(args.out)
    result = sweep.run_sweep(args.config, args.out, overrides=dict(args.overrides),
                             keep_partitions=args.keep_partitions)
    cols = ("model", "epsilon", "unit", "noise", "users", "pairs_per_user", "seeds",
            "accuracy_unseen", "accuracy_seen", "mi_bits", "gap_closed")
    print("\t".join(cols))
    for s in result.summary:
        print("\t".join(_cell(s, c) for c in cols))
    for name, path in result.files.items():
        print(f"{name}: {path}")
    if result.failed:
        raise ConfigError(
            f"{len(result.failed)} sweep cells failed: "
            + "; ".join(f"{f['cell_id']}: {f['error']}" for f in result.failed[:3])
        )
    return 0


def _cell(s: dict[str, Any], col: str) -> str:
    """A summary value, with its 95 % interval when there is one."""
    v = s.get(col)
    if v is None:
        return "-"
    if not isinstance(v, float):
        return str(v)
    lo, hi = s.get(f"{col}_ci_low"), s.get(f"{col}_ci_high")
    return f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")


_FILE_SUFFIXES = (".txt", ".md", ".json", ".jsonl", ".text")


def _response_arg(value: str) -> str:
    """One ``--responses`` value: the text of an existing file, else the text itself. A value
    that looks like a file name (no whitespace, a text-file suffix) but names no file is an
    error rather than a response, so a mistyped path is not scored as text."""
    if not value.strip():
        return value  # refused by name with the other responses (train.inference)
    path = Path(value)
    if path.is_dir():
        raise ConfigError(f"--responses {value!r} is a directory, not a response or a file")
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"--responses file {value!r} is not UTF-8 text (byte {exc.start})"
            ) from None
        except OSError as exc:
            raise ConfigError(f"--responses file {value!r} cannot be read: {exc.strerror}") from None
        return text[:-1] if text.endswith("\n") else text
    if not any(c.isspace() for c in value) and path.suffix.lower() in _FILE_SUFFIXES:
        raise ConfigError(
            f"--responses {value!r}: no such file (give the response text itself, or the path "
            "of an existing file)"
        )
    return value


def _cmd_score(args: argparse.Namespace) -> int:
    from securefvpa.api import load_model

    responses = [_response_arg(v) for v in args.responses]
    if not args.pairs.is_file():
        raise ConfigError(f"--pairs {str(args.pairs)!r} is not a file")
    model = load_model(args.run_dir)
    result = model.score(args.pairs, prompt=args.prompt, responses=responses)
    if args.json:
        out = {"run_dir": str(args.run_dir), **result.to_json()}
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    print(
        f"{result.model} model of {args.run_dir}; z inferred on this machine from the user's "
        f"{result.context_pairs} pairs (not shown)"
    )
    print("   score  response")
    for i, (text, value) in enumerate(zip(result.responses, result.scores)):
        mark = "*" if i == result.preferred else " "
        short = " ".join(text.split())
        short = short if len(short) <= 90 else short[:89] + "…"
        print(f"{mark} {value:+.4f}  [{i + 1}] {short}")
    others = [j for j in range(len(result.scores)) if j != result.preferred]
    runner_up = max(others, key=lambda j: result.scores[j])
    print(
        f"preferred: [{result.preferred + 1}] (P(preferred over [{runner_up + 1}]) = "
        f"{result.probability(result.preferred, runner_up):.3f})"
    )
    return 0


def _cmd_account(args: argparse.Namespace) -> int:
    from securefvpa.privacy.accountant import epsilon
    from securefvpa.privacy.events import DpSgdEvent
    from securefvpa.privacy.pld_cost import choose_discretization

    if not 0.0 < args.q <= 1.0:
        raise ConfigError(f"--q must be in (0, 1]. Found {args.q!r}.")
    if not args.sigma > 0.0:
        raise ConfigError(f"--sigma must be > 0. Found {args.sigma!r}.")
    if not 0.0 < args.delta < 1.0:
        raise ConfigError(f"--delta must be in (0, 1). Found {args.delta!r}.")
    event = DpSgdEvent(
        client_id="cli", round=0, noise_multiplier=args.sigma, sample_rate=args.q,
        steps=args.steps, clip=1.0, relation=args.relation,
    )
    if args.distributed:
        return _account_distributed(args, gaussian=event)
    given = [f for f in ("honest_shares", "dim", "gamma") if getattr(args, f) is not None]
    if given:
        raise ConfigError(
            f"--{given[0].replace('_', '-')} is for --distributed only; add --distributed or "
            "drop it."
        )
    choice = choose_discretization(
        noise_multiplier=args.sigma, sample_rate=args.q, steps=args.steps,
        relation=args.relation,
    )
    d = choice.value_discretization_interval
    eps_pld = (
        None if d is None
        else epsilon([event], args.delta, accountant="pld", value_discretization_interval=d)
    )
    eps_rdp = epsilon([event], args.delta, accountant="rdp")
    notes = [choice.note] if choice.note else []
    out = {
        "q": args.q,
        "sigma": args.sigma,
        "steps": args.steps,
        "delta": args.delta,
        "relation": args.relation,
        "epsilon_pld": eps_pld,
        "epsilon_rdp": eps_rdp,
        "pld_value_discretization_interval": d,
        "notes": notes,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"q={args.q} sigma={args.sigma} steps={args.steps} delta={args.delta} "
            f"relation={args.relation}"
        )
        pld = "not computed" if eps_pld is None else f"{eps_pld:.4f}"
        print(f"epsilon (PLD, primary):     {pld}")
        print(f"epsilon (RDP, cross-check): {eps_rdp:.4f}")
        for note in notes:
            print(f"note: {note}")
    return 0


def _account_distributed(args: argparse.Namespace, *, gaussian: Any) -> int:
    """``account --distributed``: T rounds of the distributed discrete Gaussian, by the DDG
    bound (``privacy.ddg``), beside ``gaussian`` — the continuous Gaussian event with the same
    central noise multiplier (what central DP would spend; the difference is the cost of
    rounding and of a sum of discrete shares)."""
    from securefvpa.privacy import ddg
    from securefvpa.privacy.accountant import epsilon

    missing = [f for f in ("honest_shares", "dim", "gamma") if getattr(args, f) is None]
    if missing:
        raise ConfigError(
            "--distributed needs " + ", ".join("--" + m.replace("_", "-") for m in missing) + "."
        )
    if not args.gamma > 0.0:
        raise ConfigError(f"--gamma must be > 0. Found {args.gamma!r}.")
    # sqrt(h) * local_sigma * gamma / C = sigma (DdgRound.central_noise_multiplier), C = 1
    local_sigma = args.sigma / (args.gamma * math.sqrt(args.honest_shares))
    if local_sigma < ddg.MIN_LOCAL_SIGMA:
        raise ConfigError(
            f"--sigma {args.sigma} over {args.honest_shares} shares at --gamma {args.gamma} "
            f"gives each share {local_sigma:.3g} ring levels, below the bound's minimum "
            f"{ddg.MIN_LOCAL_SIGMA:g}; use a smaller --gamma (finer grid)."
        )
    rnd = ddg.DdgRound(
        sample_rate=args.q, clip=1.0, gamma=args.gamma, beta=args.beta, dim=args.dim,
        local_sigma=local_sigma, honest_shares=args.honest_shares, relation=args.relation,
    )
    eps_ddg = ddg.epsilon([rnd] * args.steps, delta=args.delta)
    eps_gauss = epsilon([gaussian], args.delta, accountant="rdp")
    out = {
        "mechanism": "distributed discrete Gaussian",
        "q": args.q,
        "sigma": args.sigma,
        "rounds": args.steps,
        "delta": args.delta,
        "relation": args.relation,
        "honest_shares": args.honest_shares,
        "dim": args.dim,
        "gamma": args.gamma,
        "beta": args.beta,
        "local_sigma_levels": local_sigma,
        "epsilon_ddg": eps_ddg,
        "epsilon_continuous_gaussian_rdp": eps_gauss,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"distributed: q={args.q} sigma={args.sigma} rounds={args.steps} delta={args.delta} "
            f"relation={args.relation} honest shares={args.honest_shares} dim={args.dim} "
            f"gamma={args.gamma:g} beta={args.beta:.4g} (each share {local_sigma:.4g} levels)"
        )
        print(f"epsilon (DDG bound):                        {eps_ddg:.4f}")
        print(f"epsilon (continuous Gaussian, RDP, same z):  {eps_gauss:.4f}")
    return 0


# -- run directories, ledgers and their anchors ------------------------------------------------


def _run_ledger(run_dir: Path) -> tuple[Path, Any]:
    """(ledger path, config or None) of a run directory; bad input raises."""
    from securefvpa.config import load_config

    cfg_path = run_dir / "config.resolved.toml"
    default = run_dir / "privacy_ledger.sqlite"
    if not cfg_path.is_file():
        if default.is_file():
            return default, None
        raise ConfigError(
            f"{str(run_dir)!r} is neither a ledger file nor a run directory (no "
            "config.resolved.toml)"
        )
    cfg = load_config(cfg_path)
    return (Path(cfg.privacy.ledger) if cfg.privacy.ledger else default), cfg


def _report_files(run_dir: Path) -> list[Path]:
    from securefvpa.privacy.report import REPORT_JSON

    stem, suffix = REPORT_JSON.rsplit(".", 1)
    numbered = []
    for f in run_dir.glob(f"{stem}.*.{suffix}"):
        middle = f.name[len(stem) + 1 : -len(suffix) - 1]
        if middle.isdigit():
            numbered.append((int(middle), f))
    main = [run_dir / REPORT_JSON] if (run_dir / REPORT_JSON).is_file() else []
    return main + [f for _, f in sorted(numbered)]


def _cmd_ledger(args: argparse.Namespace) -> int:
    from securefvpa.privacy.ledger import Anchor, verify

    if args.count is not None and args.head is None:
        raise ConfigError(f"--count needs --head (the hash recorded with it). Found --count {args.count}.")
    anchors: list[Anchor] = []
    if args.head is not None:
        anchors.append(Anchor(head_hash=args.head, entry_count=args.count, source="--head"))
    path = args.target
    lost: list[str] = []
    if path.is_dir():
        path, _cfg = _run_ledger(args.target)
        for f in _report_files(args.target):
            try:
                led = json.loads(f.read_text(encoding="utf-8"))["ledger"]
                anchors.append(
                    Anchor(
                        head_hash=led["head_hash"], entry_count=led["entry_count"],
                        ledger_id=led["ledger_id"], source=f.name,
                    )
                )
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError,
                    SecureFVPAError) as err:
                lost.append(f"{f.name} cannot be read, its anchor is lost ({err})")
    result = verify(path, anchors=anchors)
    if not result.ok or lost:
        where = f" (first bad entry seq={result.first_bad_seq})" if result.first_bad_seq else ""
        reasons = ([] if result.ok else [result.reason]) + lost
        print(f"TAMPERED{where}: {str(path)!r}: " + "; ".join(reasons))
        return 1
    print(f"OK: {result.entry_count} entries, head {result.head_hash}")
    for a in anchors:
        n = "somewhere in the chain" if a.entry_count is None else f"{a.entry_count} entries"
        print(f"  anchored by {a.source} ({n})")
    for note in result.notes:
        print(f"  note: {note}")
    if not anchors:
        print(
            "WARNING: no anchor: tail truncation, rollback and a rebuilt chain cannot be "
            "detected from the chain alone; verify a run directory with its report, or pass "
            "--head/--count kept outside it",
            file=sys.stderr,
        )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    words = args.words
    if len(words) == 2 and words[0] == "verify":
        return _report_verify(Path(words[1]), args.report)
    if len(words) != 1:
        raise ConfigError(
            f"expected `report RUN_DIR` or `report verify RUN_DIR`. Found {' '.join(words)!r}."
        )
    if args.report is not None:
        raise ConfigError("--report belongs to `report verify`.")
    return _report_write(Path(words[0]))


def _report_write(run_dir: Path) -> int:
    from securefvpa.config import config_hash, load_config
    from securefvpa.errors import RunDirError
    from securefvpa.privacy.ledger import verify
    from securefvpa.privacy.plan import load_plan, run_id
    from securefvpa.privacy.report import (
        REPORT_JSON,
        build_report,
        report_inputs,
        report_inputs_from_metrics,
        validate_report,
        write_report,
    )
    from securefvpa.rundir import RunDir

    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR must be a run directory. Found {str(run_dir)!r}.")
    rd = RunDir(run_dir)
    cfg = load_config(rd.config)
    if not cfg.privacy.enabled:
        raise ConfigError(
            f"{str(run_dir)!r} is not a private run (privacy.enabled = false in "
            "config.resolved.toml): it has no privacy ledger and no epsilon report."
        )
    plan = load_plan(cfg, rd)
    if plan is None:
        raise RunDirError(
            f"{str(rd.plan)!r} is missing or belongs to another config: the run stopped before "
            "its privacy plan was written, or config.resolved.toml was changed."
        )
    check = verify(plan.ledger)
    if not check.ok:
        print(f"TAMPERED: {str(plan.ledger)!r}: {check.reason}; no report written")
        return 1
    # The inputs beside the ledger: those the existing report recorded, completed from the
    # run's metrics.json where the report has none.
    inputs: dict[str, Any] = {}
    try:
        old = json.loads((run_dir / REPORT_JSON).read_text(encoding="utf-8"))
        validate_report(old)
        inputs = report_inputs(old)
    except (OSError, UnicodeDecodeError, ValueError, SecureFVPAError):
        pass
    if rd.metrics.is_file():
        try:
            metrics = json.loads(rd.metrics.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise RunDirError(f"{str(rd.metrics)!r} is unreadable: {err}") from None
        for key, value in report_inputs_from_metrics(metrics).items():
            if inputs.get(key) is None:
                inputs[key] = value
    report = build_report(
        plan.ledger,
        run_id=run_id(cfg),
        config_hash=config_hash(cfg),
        delta=plan.delta,
        budget_epsilon=cfg.privacy.budget_epsilon,
        accountant=cfg.privacy.accountant,
        **inputs,
    )
    files = write_report(report, rd.root, ledger_path=plan.ledger)
    print(f"wrote {files.json} and {files.html}")
    print(f"headline: {report['headline']['text']}")
    if files.note:
        print(f"{'WARNING' if files.conflict else 'note'}: {files.note}")
    return 1 if files.conflict in ("shorter", "different", "unreadable") else 0


def _report_verify(run_dir: Path, only: Path | None) -> int:
    from securefvpa.privacy.report import REPORT_JSON, verify_report

    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR must be a run directory. Found {str(run_dir)!r}.")
    ledger, _cfg = _run_ledger(run_dir)
    reports = [only] if only is not None else _report_files(run_dir)
    if not reports:
        raise ConfigError(f"no {REPORT_JSON} in {str(run_dir)!r}: nothing to verify")
    if only is not None and not only.is_file():
        raise ConfigError(f"--report {str(only)!r} is not a file")
    bad = 0
    for path in reports:
        res = verify_report(path, ledger)
        print(f"{'OK' if res.ok else 'MISMATCH'}: {path}")
        for m in res.mismatches:
            print(f"  mismatch: {m}")
        for n in res.notes:
            print(f"  note: {n}")
        bad += not res.ok
    return 1 if bad else 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from securefvpa.audit.runner import run_audit
    from securefvpa.config import read_toml

    read_toml(args.config)  # a folder, binary, non-UTF-8 or empty file: one clear error
    _check_out_dir(args.out)
    report = run_audit(args.config, args.out, overrides=dict(args.overrides))
    print(json.dumps(report["summary"], indent=2))
    return 0 if report["summary"]["passed"] else 1


def _cmd_config(args: argparse.Namespace) -> int:
    from securefvpa.config_reference import config_reference
    from securefvpa.fsutil import atomic_write_text

    text = config_reference()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    if args.out.is_dir():
        raise ConfigError(f"--out must name a file. Found the directory {str(args.out)!r}.")
    try:
        atomic_write_text(args.out, text)
    except OSError as err:
        raise ConfigError(f"cannot write {str(args.out)!r}: {err.strerror}") from None
    print(f"wrote {args.out}")
    return 0


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
        "score": _cmd_score,
        "sweep": _cmd_sweep,
        "account": _cmd_account,
        "ledger": _cmd_ledger,
        "report": _cmd_report,
        "audit": _cmd_audit,
        "config": _cmd_config,
    }
    from securefvpa.rounds.progress import close_progress, filter_known_noise

    # Known harmless third-party messages (rounds.progress.KNOWN_*) are hidden unless -v.
    quiet = contextlib.nullcontext() if args.verbose else filter_known_noise()
    try:
        with quiet:
            return handlers[args.command](args)
    except SecureFVPAError as exc:
        close_progress()  # the message starts on its own line, not after a progress bar
        print(f"securefvpa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        close_progress()
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
