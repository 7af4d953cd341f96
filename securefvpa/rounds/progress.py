"""Round-by-round progress on the terminal, and the third-party noise a run filters from it.

:func:`make_progress` gives the round engine (``rounds.engine.run_rounds``) its callback:

- on a terminal, a tqdm bar ``rounds: 3/6 [00:31<00:31, 10.2s/round, clients=10, eps=6.74,
  seen=0.84, unseen=0.80]``: the ETA comes from the rounds done in this attempt, the elapsed
  time keeps ticking during a round (a refresher thread, running only while the caller of
  :func:`make_progress` is still on its thread's stack), log records and warnings are printed
  above the bar instead of through it, and a terminal that reports no size (0 x 0: ``script``
  without a controlling terminal, many CI and container ptys) gets a fixed 100 x 24 layout —
  tqdm would compute ``nrows = -1`` there and hide every bar, which is why nothing appeared
  between data loading and the final JSON;
- otherwise (a file, a pipe, a notebook), one log line per round, each column named.

Columns: clients that trained (``/sampled`` when some did not), the mean local training loss
(non-private runs only: under DP the raw loss is a function of the private pairs that no noise
covers, so it stays on the clients and the column is absent, not ``-``), the largest epsilon a
client has reached (DP runs), seen/unseen-user accuracy on held-out pairs (only in rounds that
were evaluated), and seconds.

:func:`filter_known_noise` hides, narrowly by logger or warning category *and* message, the
third-party messages known to be harmless (:data:`KNOWN_WARNINGS`, :data:`KNOWN_LOG_RECORDS`,
each with the reason); everything else is shown. ``securefvpa -v`` shows them all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from securefvpa.config import RunConfig

log = logging.getLogger("securefvpa.rounds")

FALLBACK_COLUMNS = 100  # layout on a terminal that reports no size
FALLBACK_ROWS = 24

Progress = Callable[[dict[str, Any]], None]


# -- columns -----------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str | None:
    return None if x is None or x != x else format(x, spec)  # x != x: nan


def round_fields(entry: dict[str, Any], *, private: bool) -> dict[str, str]:
    """The named columns of one round-history entry (``RoundEntry.to_dict()``), as strings.

    A column that was not measured is left out instead of shown as ``-``: ``loss`` under DP
    (module docstring), ``seen``/``unseen`` in rounds without evaluation, ``eps`` without DP.
    """
    clients = str(entry.get("clients", 0))
    sampled = entry.get("sampled") or 0
    if sampled and sampled != entry.get("clients", 0):
        clients += f"/{sampled}"
    out = {"clients": clients}
    if private:
        eps = _fmt(entry.get("epsilon_max"), ".3g")
        if eps is not None:
            out["eps"] = eps
    else:
        loss = _fmt(entry.get("train_loss"), ".4f")
        if loss is not None:
            out["loss"] = loss
    declined = entry.get("declined") or []
    if declined:
        out["declined"] = str(len(declined))
    acc = (entry.get("eval") or {}).get("accuracy", {})
    for key, name in (("seen_users", "seen"), ("unseen_users", "unseen")):
        value = _fmt(acc.get(key), ".4f")
        if value is not None:
            out[name] = value
    return out


# -- the terminal bar --------------------------------------------------------------------------


def terminal_size(stream: Any) -> tuple[int, int] | None:
    """(columns, rows) the terminal ``stream`` writes to reports (0 x 0 when no window size was
    set on its pty); None when ``stream`` is not a terminal."""
    try:
        if not stream.isatty():
            return None
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return size.columns, size.lines


_open_bars: weakref.WeakSet[RoundBar] = weakref.WeakSet()
_open_lock = threading.Lock()


class RoundBar:
    """The terminal display of a run's rounds (a tqdm bar); call it with each round entry.

    ``close()`` (also on leaving a ``with`` block, or after the last round) ends the bar on its
    own line and restores the log handlers it redirected.
    """

    def __init__(
        self,
        *,
        total: int,
        private: bool,
        stream: Any,
        size: tuple[int, int],  # as the terminal reports it (terminal_size)
        start: int = 0,
        refresh_s: float = 1.0,
        owner: Any = None,
    ) -> None:
        from tqdm import tqdm

        self.total = total
        self.private = private
        self.stream = stream
        self._first = True
        self._closed = False
        self._lock = threading.RLock()
        # tqdm reads a 0 x 0 terminal as nrows = -1 and then draws nothing: use a fixed layout.
        fixed = size[0] <= 0 or size[1] <= 0
        self.bar = tqdm(
            total=total,
            initial=start,
            desc="rounds",
            unit="round",
            file=stream,
            dynamic_ncols=not fixed,
            ncols=FALLBACK_COLUMNS if fixed else None,
            nrows=FALLBACK_ROWS if fixed else None,
            leave=True,
        )
        self._redirected = _redirect_logging(stream)
        self._showwarning = warnings.showwarning
        warnings.showwarning = self._show_warning
        with _open_lock:
            _open_bars.add(self)
        self._owner = owner
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if refresh_s > 0:
            self._thread = threading.Thread(
                target=_refresh_loop,
                args=(weakref.ref(self), self._stop, refresh_s),
                name="securefvpa-progress",
                daemon=True,
            )
            self._thread.start()

    def __call__(self, entry: dict[str, Any]) -> None:
        with self._lock:
            if self._closed:
                return
            rnd = int(entry["round"])
            if self._first and rnd - 1 > self.bar.n:
                # A resumed run: count the ETA from the rounds of this attempt only, from the
                # moment this round began.
                self.bar.n = self.bar.initial = rnd - 1
                self.bar.start_t = time.time() - float(entry.get("wall_seconds", 0.0))
            self._first = False
            self.bar.n = rnd
            self.bar.set_postfix(round_fields(entry, private=self.private), refresh=False)
            self.bar.refresh()
            if rnd >= self.total:
                self.close()

    def owner_running(self) -> bool:
        """Whether the function that made this bar is still running (refresher's stop rule)."""
        return self._owner() if self._owner is not None else True

    def refresh(self) -> None:
        with self._lock:
            if not self._closed:
                self.bar.refresh()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self.bar.close()
            for handler, stream in self._redirected:
                handler.setStream(stream)  # type: ignore[attr-defined]
            if warnings.showwarning == self._show_warning:
                warnings.showwarning = self._showwarning
            with _open_lock:
                _open_bars.discard(self)

    def __enter__(self) -> RoundBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _show_warning(
        self, message: Any, category: Any, filename: str, lineno: int, file: Any = None,
        line: str | None = None,
    ) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        self.bar.write(text.rstrip("\n"), file=self.stream)


def _refresh_loop(ref: weakref.ReferenceType[RoundBar], stop: threading.Event, every: float) -> None:
    """Redraw the bar every ``every`` seconds (the elapsed time ticks during long rounds) while
    the bar is open, referenced, and the function that made it is still running. A run that
    raised leaves the bar closed on its own line, so the error message starts on a new one."""
    while not stop.wait(every):
        bar = ref()
        if bar is None:
            return
        if not bar.owner_running():
            bar.close()
            return
        bar.refresh()
        del bar


class _TqdmStream:
    """A text stream that prints through ``tqdm.write`` (clears the bar, prints, redraws)."""

    def __init__(self, bar: Any, stream: Any) -> None:
        self._bar, self._stream = bar, stream

    def write(self, text: str) -> int:
        if text.strip():
            self._bar.write(text.rstrip("\n"), file=self._stream)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def _redirect_logging(stream: Any) -> list[tuple[logging.Handler, Any]]:
    """Point every console handler (root and ``flwr``) that writes to ``stream`` through
    ``tqdm.write``; returns (handler, old stream) pairs to restore."""
    from tqdm import tqdm

    changed: list[tuple[logging.Handler, Any]] = []
    for name in ("", "flwr"):
        for handler in logging.getLogger(name).handlers:
            if (
                isinstance(handler, logging.StreamHandler)
                and not isinstance(handler, logging.FileHandler)
                and handler.stream is stream
            ):
                old = handler.setStream(_TqdmStream(tqdm, stream))  # type: ignore[arg-type]
                changed.append((handler, old))
    return changed


def _caller_running(depth: int) -> Callable[[], bool]:
    """Whether the function ``depth`` frames above the caller is still on its thread's stack."""
    frame = sys._getframe(depth + 1)
    code, ident = frame.f_code, threading.get_ident()
    del frame  # keep no frame (and its locals) alive

    def running() -> bool:
        f = sys._current_frames().get(ident)
        while f is not None:
            if f.f_code is code:
                return True
            f = f.f_back
        return False

    return running


def close_progress() -> None:
    """Close every open round bar (before an error message is printed)."""
    with _open_lock:
        bars = list(_open_bars)
    for bar in bars:
        bar.close()


class RoundLines:
    """One log line per round (no terminal): ``round 3/6: clients 10, eps 6.74, ... 10.21 s``."""

    def __init__(self, *, total: int, private: bool) -> None:
        self.total = total
        self.private = private
        self._said = False

    def __call__(self, entry: dict[str, Any]) -> None:
        if not self._said and self.private:
            log.info("progress: one line per round; under DP the training loss stays on the "
                     "clients, eps is the largest epsilon any client has reached")
        self._said = True
        cols = ", ".join(f"{k} {v}" for k, v in round_fields(entry, private=self.private).items())
        log.info("round %d/%d: %s, %.2f s", entry["round"], self.total, cols,
                 float(entry.get("wall_seconds", 0.0)))

    def close(self) -> None:
        """Nothing to close (the same interface as :class:`RoundBar`)."""

    def __enter__(self) -> RoundLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_progress(
    cfg: RunConfig, *, start: int = 0, stream: Any = None, refresh_s: float = 1.0
) -> RoundBar | RoundLines:
    """The progress callback for :func:`securefvpa.rounds.engine.run_rounds`.

    ``stream`` (default ``sys.stderr``) decides the form: a terminal gets a :class:`RoundBar`,
    anything else :class:`RoundLines` (log records of ``securefvpa.rounds``). ``start`` is the
    last round already done (a resume; the bar also infers it from its first entry).
    ``refresh_s`` is how often the bar is redrawn during a round (0: only at round ends). The
    bar's refresher stops when the function that called ``make_progress`` returns or raises.
    """
    total = cfg.federation.rounds
    private = cfg.privacy.enabled
    stream = stream if stream is not None else sys.stderr
    size = terminal_size(stream)
    if size is None:
        return RoundLines(total=total, private=private)
    return RoundBar(
        total=total, private=private, stream=stream, size=size, start=start,
        refresh_s=refresh_s, owner=_caller_running(1),
    )


# -- known third-party noise -------------------------------------------------------------------


@dataclass(frozen=True)
class KnownWarning:
    """A ``warnings`` message hidden by category and message (a regex matched at its start)."""

    category: type[Warning]
    message: str
    why: str


@dataclass(frozen=True)
class KnownLogRecord:
    """A log record hidden by logger name and message (a regex searched in the formatted text)."""

    logger: str
    message: str
    why: str


KNOWN_WARNINGS: tuple[KnownWarning, ...] = (
    KnownWarning(
        UserWarning,
        r"Full backward hook is firing when gradients are computed with respect to module "
        r"outputs since no inputs require gradients",
        "torch, once per Opacus step: the first layer's inputs are frozen embeddings that need "
        "no gradient; Opacus' hooks use the gradient w.r.t. the layer outputs, and "
        "tests/train/test_private.py checks its clipped per-sample gradients against brute force",
    ),
)

KNOWN_LOG_RECORDS: tuple[KnownLogRecord, ...] = (
    KnownLogRecord(
        "flwr",
        r"DEPRECATED FEATURE: The `run_simulation` function is deprecated",
        "Flower's simulation engine is how `federation.mode = \"simulation\"` runs in-process; "
        "`flwr run` is the deployment path (federation.mode = \"deployment\")",
    ),
    KnownLogRecord(
        "absl",
        r"^_compute_log_a_frac failed to converge",
        "dp-accounting's RDP accountant leaves out an order alpha whose series did not "
        "converge; epsilon is the minimum over the remaining orders, still an upper bound (and "
        "RDP is only the cross-check of the PLD accountant)",
    ),
)


class _DropKnown(logging.Filter):
    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        super().__init__()
        self.patterns = patterns
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(p.search(text) for p in self.patterns):
            self.dropped += 1
            return False
        return True


@contextlib.contextmanager
def filter_known_noise() -> Iterator[None]:
    """Hide the known harmless third-party messages while the block runs, then restore.

    Narrow by design: a warning must match its category and message, a log record its logger
    (records logged to that exact logger) and message; nothing else changes. The ``warnings``
    filters are process-wide (threads included) for the duration of the block.
    """
    filters: list[tuple[logging.Logger, _DropKnown]] = []
    by_logger: dict[str, list[re.Pattern[str]]] = {}
    for rec in KNOWN_LOG_RECORDS:
        by_logger.setdefault(rec.logger, []).append(re.compile(rec.message))
    with warnings.catch_warnings():
        for w in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=w.message, category=w.category)
        try:
            for name, patterns in by_logger.items():
                logger, flt = logging.getLogger(name), _DropKnown(patterns)
                logger.addFilter(flt)
                filters.append((logger, flt))
            yield
        finally:
            for logger, flt in filters:
                logger.removeFilter(flt)
