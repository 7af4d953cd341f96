"""Render an example privacy report and its screenshot (docs/report_screenshot.png).

    .venv/bin/python docs/report_example.py            # writes docs/report_example/
    chromium --headless --no-sandbox --disable-gpu --disable-background-networking \\
        --hide-scrollbars --window-size=1200,2400 \\
        --screenshot=docs/report_screenshot.png docs/report_example/report.html

(Debian: ``apt-get install -y chromium``.) The ledger is written by the real ``Ledger`` and
``BudgetGuard`` (24 clients, 12 rounds, the guard declines rounds past the budget), but no model
is trained: the utility, baseline and secure-aggregation numbers passed to ``build_report`` are
ILLUSTRATIVE inputs in the shape ``securefvpa run`` passes, chosen to show every section
(utility at chance on unseen users, a dropout round, an early stop). The page is what
``securefvpa report`` writes for a real run.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from securefvpa.privacy.events import DpSgdEvent  # noqa: E402
from securefvpa.privacy.guard import BudgetGuard  # noqa: E402
from securefvpa.privacy.ledger import Ledger  # noqa: E402
from securefvpa.privacy.report import build_report, write_report  # noqa: E402

OUT = ROOT / "docs" / "report_example"
RUN_ID, CONFIG_HASH, DELTA, BUDGET = "example-dp-secagg", "c0ffee" * 10 + "c0de", 1e-5, 8.0


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    ledger_path = OUT / "privacy_ledger.sqlite"
    guard = BudgetGuard(budget_epsilon=BUDGET, delta=DELTA)
    history: dict[str, list[DpSgdEvent]] = {}
    with Ledger(ledger_path) as led:
        led.append_run_start(RUN_ID, CONFIG_HASH, {"delta": DELTA, "budget_epsilon": BUDGET})
        for rnd in range(1, 13):
            for i in range(24):
                if (i + rnd) % 3 == 0:  # sampled with fraction_fit 2/3
                    continue
                sigma = 0.9 if i < 9 else 2.4  # nine clients on a small-noise schedule
                c = f"client_{i:05d}"
                ev = DpSgdEvent(client_id=c, round=rnd, noise_multiplier=sigma, sample_rate=0.5,
                                steps=2, clip=1.0)
                dec = guard.check(client_id=c, history=history.get(c, []), planned_event=ev)
                if dec.allowed:
                    led.append(ev)
                    history.setdefault(c, []).append(ev)
                else:
                    led.append_declined(ev, reason=dec.reason, epsilon_now=dec.epsilon_now,
                                        epsilon_if_trained=dec.epsilon_if_trained,
                                        budget_epsilon=dec.budget)
        led.append_run_end(RUN_ID, CONFIG_HASH)
    rounds = [
        {"round": r, "participants": 16, "threshold": 10, "survivors": 16 - (r == 7) * 2,
         "dropouts": (r == 7) * 2, "clipped_coordinates": 3 * (r % 4)}
        for r in range(1, 13)
    ]
    report = build_report(
        ledger_path, run_id=RUN_ID, config_hash=CONFIG_HASH, delta=DELTA, budget_epsilon=BUDGET,
        utility={"seen_users": 0.561, "unseen_users": 0.507, "controversial": 0.544},
        scored_pairs={"seen_users": 384, "unseen_users": 160, "controversial": 212},
        chance=0.5,
        baseline={"model": "fedbtl",
                  "accuracy": {"seen_users": 0.693, "unseen_users": 0.688,
                               "controversial": 0.471},
                  "source": "illustrative: a non-private FedBTL run on the same data and seed"},
        secagg={"threshold_fraction": 0.6, "ring_bits": 32, "clip_range": 8.0,
                "graph_degree": 0, "rounds": rounds},
        stopped_early="round 12: fewer than min_fit_clients=10 clients remain within their "
        "privacy budget; training stopped",
        exhausted_clients=[f"client_{i:05d}" for i in range(9)],
    )
    files = write_report(report, OUT, ledger_path=ledger_path)
    print(json.dumps(report["headline"], indent=2, ensure_ascii=False))
    print(f"wrote {files.json} and {files.html}")


if __name__ == "__main__":
    main()
