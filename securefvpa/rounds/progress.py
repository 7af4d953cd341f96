"""Round-by-round progress: a tqdm bar with ETA on a terminal, one log line per round otherwise.

Columns: clients that trained, the mean local loss (non-private runs only: under DP the raw loss
is not covered by the noise and never leaves a client), the largest epsilon a client reached
(DP runs), seen/unseen-user accuracy when the round was evaluated, and seconds.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from securefvpa.config import RunConfig

log = logging.getLogger("securefvpa.rounds")


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def round_fields(entry: dict[str, Any], *, private: bool) -> dict[str, str]:
    """The columns shown for one history entry (strings, "-" when not measured)."""
    acc = (entry.get("eval") or {}).get("accuracy", {})
    out = {"clients": str(entry.get("clients", 0))}
    if private:
        out["eps"] = _fmt(entry.get("epsilon_max"), ".3g")
    else:
        out["loss"] = _fmt(entry.get("train_loss"))
    out["seen"] = _fmt(acc.get("seen_users"))
    out["unseen"] = _fmt(acc.get("unseen_users"))
    return out


def make_progress(
    cfg: RunConfig, *, start: int = 0, stream: Any = None
) -> Callable[[dict[str, Any]], None]:
    """A callback for :func:`securefvpa.rounds.engine.run_rounds`."""
    total = cfg.federation.rounds
    private = cfg.privacy.enabled
    stream = stream if stream is not None else sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        bar = tqdm(
            total=total, initial=start, desc="rounds", unit="round", file=stream, dynamic_ncols=True
        )

        def tick(entry: dict[str, Any]) -> None:
            bar.n = entry["round"]
            bar.set_postfix(round_fields(entry, private=private), refresh=False)
            bar.refresh()
            if entry["round"] >= total:
                bar.close()

        return tick

    def line(entry: dict[str, Any]) -> None:
        cols = " ".join(f"{k} {v}" for k, v in round_fields(entry, private=private).items())
        log.info(
            "round %d/%d: %s, %.2f s", entry["round"], total, cols, entry.get("wall_seconds", 0.0)
        )

    return line
