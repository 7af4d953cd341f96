"""Round progress on a terminal and off it, and the known-noise filter (rounds/progress.py).

Terminal tests run a child process in a real pseudo-terminal (``pty.fork``), with no window size
set (0 x 0, what ``script`` without a controlling terminal and many CI ptys report: tqdm used to
hide every bar there) and with a 120-column window. Mutants each test catches are in its
docstring.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import struct
import sys
import termios
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from securefvpa.config import config_from_dict
from securefvpa.rounds import progress as pg

REPO = Path(__file__).resolve().parents[2]
EMBED_CACHE = str(REPO / ".cache" / "securefvpa" / "embeddings")
HOOK_WARNING = (
    "Full backward hook is firing when gradients are computed with respect to module outputs "
    "since no inputs require gradients. See https://docs.pytorch.org/... for more details."
)


def run_in_pty(argv: list[str], *, cols: int | None, timeout: float = 240.0,
               env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``argv`` with stdin/stdout/stderr on a new pty; (exit code, everything written)."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.execve(argv[0], argv, os.environ | (env or {}))
        finally:
            os._exit(127)
    if cols is not None:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out.extend(chunk)
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode("utf-8", "replace")


def cfg(private: bool, rounds: int = 3):
    return config_from_dict({
        "data": {"source": "synth"},
        "federation": {"mode": "inprocess", "rounds": rounds},
        "privacy": {"enabled": private},
    })


ENTRY = {"round": 2, "clients": 9, "sampled": 10, "declined": [3], "train_loss": 0.6931,
         "epsilon_max": 3.58, "wall_seconds": 1.5,
         "eval": {"accuracy": {"seen_users": 0.75, "unseen_users": 0.5}}}


# -- columns -----------------------------------------------------------------------------------


def test_columns_under_dp_have_no_loss_and_name_epsilon():
    """Mutant caught: the raw training loss shown under DP (the issue's unexplained `loss -`)."""
    private = pg.round_fields(ENTRY, private=True)
    assert "loss" not in private
    assert private == {"clients": "9/10", "eps": "3.58", "declined": "1",
                       "seen": "0.7500", "unseen": "0.5000"}
    plain = pg.round_fields(ENTRY | {"declined": []}, private=False)
    assert plain == {"clients": "9/10", "loss": "0.6931", "seen": "0.7500", "unseen": "0.5000"}


def test_columns_not_measured_are_left_out_not_dashed():
    """A round without evaluation, a non-private round without a loss (nan): no `-` columns."""
    entry = {"round": 1, "clients": 4, "sampled": 4, "train_loss": float("nan")}
    assert pg.round_fields(entry, private=False) == {"clients": "4"}
    assert pg.round_fields(entry | {"epsilon_max": None}, private=True) == {"clients": "4"}


def test_lines_off_a_terminal_name_every_column(caplog):
    """Mutant caught: a bar (or nothing) written to a non-terminal stream."""
    import io

    caplog.set_level(logging.INFO, logger="securefvpa.rounds")
    p = pg.make_progress(cfg(True), stream=io.StringIO())
    assert isinstance(p, pg.RoundLines)
    p(ENTRY)
    text = caplog.text
    assert "round 2/3: clients 9/10, eps 3.58, declined 1, seen 0.7500, unseen 0.5000, 1.50 s" in text
    assert "training loss stays on the clients" in text


# -- the bar in a real pseudo-terminal ---------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import logging, sys, time, warnings
    from securefvpa.config import config_from_dict
    from securefvpa.rounds.progress import make_progress, filter_known_noise
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_from_dict({"data": {"source": "synth"},
                            "federation": {"mode": "inprocess", "rounds": 3},
                            "privacy": {"enabled": True}})

    def rounds():
        bar = make_progress(cfg, refresh_s=0.2)
        for r in (1, 2, 3):
            time.sleep(0.7)
            if r == 2:
                logging.getLogger("securefvpa.fl").warning("a log line during round 2")
                warnings.warn("a warning during round 2", UserWarning)
                with filter_known_noise():
                    warnings.warn(HOOK, UserWarning)
            bar({"round": r, "clients": 10, "sampled": 10, "epsilon_max": 2.5 * r,
                 "wall_seconds": 0.7, "eval": {"accuracy": {"seen_users": 0.5 + r / 10}}})
        return type(bar).__name__

    print("kind", rounds(), flush=True)
    """
).replace("HOOK", repr(HOOK_WARNING))


@pytest.mark.parametrize("cols", [None, 120], ids=["pty-without-size", "pty-120-columns"])
def test_bar_on_a_real_terminal(tmp_path, cols):
    """The bar appears, with the epsilon column, the ETA, a ticking elapsed time during a
    round, log lines and warnings printed on their own lines above it, and the known hook
    warning filtered. Mutants caught: tqdm's own size detection on a 0 x 0 pty (nothing is
    drawn: the issue's "nothing appears"); no refresher (elapsed stuck at 00:00 until a round
    ends); log handlers not redirected (the log line glued to the bar)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    code, out = run_in_pty([sys.executable, str(script)], cols=cols, timeout=60)
    assert code == 0, out
    assert "kind RoundBar" in out
    assert "rounds: 100%" in out and "3/3" in out
    assert "eps=7.5" in out and "seen=0.8000" in out
    assert "s/round" in out or "round/s" in out  # the rate, hence the ETA
    # During round 1 (0.7 s, refresher every 0.2 s) the bar is redrawn before the first tick.
    assert out.count("0/3 [") >= 2
    # The log line and the warning each start a line of their own (after the bar is cleared).
    starts = [line.split("\r")[-1] for line in out.replace("\r\n", "\n").split("\n")]
    assert "WARNING securefvpa.fl: a log line during round 2" in starts
    assert any(s.startswith(str(script)) and "UserWarning: a warning during round 2" in s
               for s in starts)
    assert "Full backward hook" not in out


def test_resumed_run_counts_eta_from_this_attempt():
    """A bar whose first entry is round 5 of 6 starts there: the rate is 1 round in this
    attempt, not 5 rounds in its first seconds. Mutant caught: initial left at 0."""
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

        def fileno(self):
            raise OSError("no fd")

    bar = pg.RoundBar(total=6, private=True, stream=Tty(), size=(100, 24), refresh_s=0)
    bar({"round": 5, "clients": 3, "epsilon_max": 7.0, "wall_seconds": 4.0})
    assert bar.bar.initial == 4 and bar.bar.n == 5
    rate = bar.bar.format_dict["rate"] or (bar.bar.n - bar.bar.initial) / bar.bar.format_dict["elapsed"]
    assert rate < 1.0  # about 1 round per 4 s, not 5 rounds at once
    bar({"round": 6, "clients": 3, "epsilon_max": 8.0, "wall_seconds": 4.0})
    assert bar._closed


def test_refresher_stops_when_its_run_returns_or_raises():
    """The refresher thread redraws only while the function that made the bar is running; a
    run that raised leaves the bar closed (the error then starts on its own line), and the
    redirected log handlers and warnings.showwarning are restored. Mutant caught: a refresher
    that runs forever (a REPL or notebook keeps redrawing a dead bar)."""
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

        def fileno(self):
            raise OSError("no fd")

    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    shown = warnings.showwarning
    made = {}

    def failing_run():
        made["bar"] = pg.RoundBar(total=3, private=False, stream=sys.stderr, size=(100, 24),
                                  refresh_s=0.05, owner=pg._caller_running(0))
        raise RuntimeError("boom")

    try:
        old_stderr = sys.stderr
        sys.stderr = Tty()
        handler.setStream(sys.stderr)
        with pytest.raises(RuntimeError):
            failing_run()
        bar = made["bar"]
        deadline = time.monotonic() + 5
        while not bar._closed and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bar._closed
        assert handler.stream is sys.stderr  # restored
        assert warnings.showwarning is shown
    finally:
        sys.stderr = old_stderr
        root.removeHandler(handler)


def test_close_progress_closes_open_bars():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    bar = pg.RoundBar(total=3, private=True, stream=Tty(), size=(0, 0), refresh_s=0)
    assert bar.bar.ncols == pg.FALLBACK_COLUMNS and bar.bar.nrows == pg.FALLBACK_ROWS
    pg.close_progress()
    assert bar._closed


def _dp_config(tmp_path: Path, mode: str) -> Path:
    import tomli_w

    path = tmp_path / f"{mode}.toml"
    path.write_text(tomli_w.dumps({
        "seed": 0,
        "data": {"source": "synth", "users": 16, "pairs_per_user": 6, "heldout_pairs": 2},
        "embedding": {"cache_dir": EMBED_CACHE},
        "federation": {"mode": mode, "users_per_client": 2, "rounds": 2, "local_steps": 1,
                       "min_fit_clients": 2, "round_timeout_s": 120.0},
        # sigma given: calibrating it from a target takes longer than the run itself
        "privacy": {"enabled": True, "noise_multiplier": 1.5, "budget_epsilon": 8.0},
    }))
    return path


def _check_cli_output(code: int, out: str) -> None:
    assert code == 0, out[-3000:]
    assert "rounds: 100%" in out and "2/2" in out and "eps=" in out, out[-3000:]
    assert "loss" not in out.split("rounds:", 1)[1].split("\n{", 1)[0]  # DP: no loss column
    assert "Full backward hook" not in out  # Opacus/torch hook warning filtered
    assert "DEPRECATED FEATURE" not in out  # Flower's run_simulation deprecation filtered
    assert "Traceback" not in out
    assert '"accuracy"' in out and "privacy report:" in out


def test_cli_run_in_a_pty_inprocess(tmp_path):
    """`securefvpa run` (DP, in-process) in a pty without a window size: the bar appears
    between data loading and the final JSON, and the known noise is gone. Mutants caught:
    make_progress's size fallback removed (no bar); the CLI without filter_known_noise (the
    torch hook warning of every Opacus step is printed)."""
    cli = str(Path(sys.executable).parent / "securefvpa")
    code, out = run_in_pty(
        [cli, "run", str(_dp_config(tmp_path, "inprocess")), "--out", str(tmp_path / "run")],
        cols=None,
    )
    _check_cli_output(code, out)


@pytest.mark.slow  # ~30 s: Ray starts workers (Flower's simulation engine)
def test_cli_run_in_a_pty_under_flower_simulation(tmp_path):
    """The same under Flower's simulation engine (the ServerApp thread draws the bar)."""
    cli = str(Path(sys.executable).parent / "securefvpa")
    code, out = run_in_pty(
        [cli, "run", str(_dp_config(tmp_path, "simulation")), "--out", str(tmp_path / "run")],
        cols=120, timeout=400,
    )
    _check_cli_output(code, out)


# -- known noise -------------------------------------------------------------------------------


def test_known_warnings_are_hidden_narrowly():
    """Inside the block only the known message of the known category is hidden; another
    UserWarning, or the same text as another category, still shows; after the block it shows
    again. Mutants caught: a global warnings filter (`ignore::UserWarning`); the filter left
    installed after the block."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pg.filter_known_noise():
            warnings.warn(HOOK_WARNING, UserWarning)
            warnings.warn("another user warning", UserWarning)
            warnings.warn(HOOK_WARNING, RuntimeWarning)
        warnings.warn(HOOK_WARNING, UserWarning)
    texts = [(w.category.__name__, str(w.message)[:20]) for w in seen]
    assert texts == [
        ("UserWarning", "another user warning"),
        ("RuntimeWarning", HOOK_WARNING[:20]),
        ("UserWarning", HOOK_WARNING[:20]),
    ]


def test_known_log_records_are_hidden_narrowly():
    """Flower's run_simulation deprecation and dp-accounting's convergence warning are dropped
    from their own loggers only; other records of those loggers, and the same text on
    another logger, pass. Mutants caught: a filter on every logger; on the level instead of
    the message; the filter left on the logger after the block."""
    seen: list[tuple[str, str]] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append((record.name, record.getMessage()[:30]))

    names = ("flwr", "securefvpa.fl", "absl")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate,
                 logging.getLogger(n).level) for n in names}
    try:
        for n in names:  # isolate from whatever handlers flwr, absl or the CLI installed
            log = logging.getLogger(n)
            log.handlers, log.propagate = [Collect()], False
            log.setLevel(logging.INFO)
        dep = ("DEPRECATED FEATURE: The `run_simulation` function is deprecated and will be "
               "removed in a future version of Flower.")
        with pg.filter_known_noise():
            logging.getLogger("flwr").warning(dep)
            logging.getLogger("flwr").warning("flower: a real problem")
            logging.getLogger("securefvpa.fl").warning(dep)
            logging.getLogger("absl").warning(
                "_compute_log_a_frac failed to converge after %d iterations", 1000)
            logging.getLogger("absl").warning("absl: something else")
        logging.getLogger("absl").warning("_compute_log_a_frac failed to converge after 5")
    finally:
        for n, (handlers, propagate, level) in saved.items():
            log = logging.getLogger(n)
            log.handlers, log.propagate = handlers, propagate
            log.setLevel(level)
    assert seen == [
        ("flwr", "flower: a real problem"),
        ("securefvpa.fl", dep[:30]),
        ("absl", "absl: something else"),
        ("absl", "_compute_log_a_frac failed to "),
    ]
    assert not logging.getLogger("absl").filters and not logging.getLogger("flwr").filters


def test_the_real_accounting_warning_is_the_one_filtered(caplog):
    """dp-accounting itself (RDP of q = 0.5, sigma = 0.3) logs the convergence warning that the
    filter names: caught once without the filter, never with it (the epsilon is the same)."""
    from securefvpa.privacy.accountant import clear_caches, epsilon
    from securefvpa.privacy.events import DpSgdEvent

    ev = [DpSgdEvent(client_id="c", round=0, noise_multiplier=0.3, sample_rate=0.5, steps=10,
                     clip=1.0, relation="add_remove_one")]
    caplog.set_level(logging.WARNING)
    clear_caches()
    with pg.filter_known_noise():
        quiet = epsilon(ev, 1e-5, accountant="rdp")
    assert not [r for r in caplog.records if r.name == "absl"]
    clear_caches()
    loud = epsilon(ev, 1e-5, accountant="rdp")
    assert any("failed to converge" in r.getMessage() for r in caplog.records
               if r.name == "absl")
    assert quiet == loud
