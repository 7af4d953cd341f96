"""FlowerTransport.send: every reply collected, the deadline kept, few pulls while waiting."""

from __future__ import annotations

import time
from types import SimpleNamespace

from securefvpa.fl.server_app import FlowerTransport


class _Grid:
    """A grid whose node answers message ``i`` at ``delays[i]`` seconds after the push."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.pulls = 0

    def push_messages(self, messages):
        self.t0 = time.monotonic()
        return [f"m{i}" for i in range(len(messages))]

    def pull_messages(self, ids):
        self.pulls += 1
        now = time.monotonic() - self.t0
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}"))
            for i, d in enumerate(self.delays)
            if d <= now and f"m{i}" in ids
        ]


def _send(grid: _Grid, timeout: float):
    me = SimpleNamespace(
        grid=grid, cfg=SimpleNamespace(federation=SimpleNamespace(round_timeout_s=timeout))
    )
    t = time.monotonic()
    out = FlowerTransport.send(me, [object()] * len(grid.delays))  # type: ignore[arg-type]
    return out, time.monotonic() - t


def test_all_replies_are_collected_soon_after_the_last_one_arrives() -> None:
    grid = _Grid([0.0, 0.05, 1.3])
    out, took = _send(grid, timeout=10.0)
    assert sorted(r.metadata.reply_to_message_id for r in out) == ["m0", "m1", "m2"]
    assert took < 1.3 + 0.5  # at most one 0.2 s wait late (Flower's deployment loop: 3 s)


def test_the_deadline_is_kept_and_waiting_polls_back_off() -> None:
    grid = _Grid([0.0, 60.0])
    out, took = _send(grid, timeout=1.0)
    assert [r.metadata.reply_to_message_id for r in out] == ["m0"]  # the other is a dropout
    assert 1.0 <= took < 1.5
    assert grid.pulls < 20  # 2 ms doubling up to 0.2 s, not a pull every 2 ms (500)
