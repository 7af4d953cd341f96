"""Error replies reach the server's log whatever their reason field holds."""

from __future__ import annotations

from flwr.app import Error, Message, Metadata

from securefvpa.fl.wire import error_reason


def _error_reply(reason: str | None) -> Message:
    meta = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=3,
        dst_node_id=0,
        reply_to_message_id="m0",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type="train",
    )
    return Message(error=Error(code=1, reason=reason), metadata=meta)


def test_an_error_without_a_reason_is_logged_not_raised() -> None:
    assert error_reason(_error_reply(None)) == "no reason given"


def test_a_long_reason_is_cut_to_the_limit() -> None:
    assert error_reason(_error_reply("x" * 500)) == "x" * 200
    assert error_reason(_error_reply("node gone"), limit=4) == "node"
