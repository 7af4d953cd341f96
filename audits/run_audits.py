"""Rerun every audit in this folder and write ``audits/results/latest.json``.

    OMP_NUM_THREADS=1 .venv/bin/python audits/run_audits.py [--only NAME ...]

Each ``audits/*.toml`` is a run config plus an ``[audit]`` table (see
``securefvpa.audit.settings``); each runs through ``securefvpa.audit.runner.run_audit`` exactly
as ``securefvpa audit CONFIG --out DIR`` would. The secure-aggregation audit
(``securefvpa.audit.secagg_audit.run_secagg_audit``) runs last. Full reports go to
``audits/results/<name>/`` (not checked in); the small summary ``latest.json`` is.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from securefvpa.audit.runner import run_audit  # noqa: E402
from securefvpa.audit.secagg_audit import run_secagg_audit  # noqa: E402

CACHE = ROOT / ".cache" / "securefvpa" / "embeddings"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="config stems to run")
    args = ap.parse_args(argv)
    results: dict[str, object] = {}
    for cfg in sorted(HERE.glob("*.toml")):
        if args.only and cfg.stem not in args.only:
            continue
        t0 = time.perf_counter()
        report = run_audit(cfg, HERE / "results" / cfg.stem,
                           overrides={"embedding.cache_dir": str(CACHE)})
        s = report["summary"]
        results[cfg.stem] = {
            "passed": s["passed"], "inject": s["inject"],
            "claimed_epsilon": round(s["claimed_epsilon"], 4), "delta": s["delta"],
            "epsilon_lower_bound": round(s["epsilon_lower_bound"], 4),
            "confidence": s["confidence"], "canaries": s["canaries"], "guesses": s["guesses"],
            "correct": s["correct"],
            "clopper_pearson_indicative": round(s["clopper_pearson_indicative"] or 0.0, 4),
            "sign_accuracy": round(report["scores"]["sign_accuracy"], 4),
            "noise_multiplier_claimed": round(report["claim"]["noise_multiplier"], 4),
            "noise_multiplier_used": round(report["training"]["noise_multiplier_used"], 6),
            "k_grid": report["settings"]["k_grid"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(cfg.stem, json.dumps(results[cfg.stem]), flush=True)
    if not args.only or "secagg" in args.only:
        t0 = time.perf_counter()
        sec = run_secagg_audit()
        results["secagg"] = {
            k: sec[k] for k in ("n", "d", "rounds", "bits", "threshold", "values_per_test",
                                "sums_correct", "uniformity_p_values", "bonferroni_alpha",
                                "min_p", "coalition_t_minus_1", "passed")
        } | {"power_check_coalition_t": sec["power_check_coalition_t"],
             "seconds": round(time.perf_counter() - t0, 1)}
        print("secagg", json.dumps(results["secagg"]), flush=True)
    out = {"python": platform.python_version(), "results": results}
    (HERE / "results").mkdir(exist_ok=True)
    target = HERE / "results" / ("latest.json" if not args.only else "partial.json")
    target.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
