"""The secure-aggregation mod parses a node's roster once per content, never serves a stale one."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefvpa.errors import ConfigError
from securefvpa.fl.secagg_mod import _roster


def _write(path, keys) -> None:
    path.write_text(json.dumps({str(i): k.public_key().public_bytes_raw().hex() for i, k in keys}))


def test_a_rewritten_roster_is_used_at_the_next_message(tmp_path) -> None:
    path = tmp_path / "roster.json"
    node = SimpleNamespace(roster=str(path))
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    _write(path, [(1, a)])
    first = _roster(node)  # type: ignore[arg-type]
    assert first[1].public_bytes_raw() == a.public_key().public_bytes_raw()
    first[2] = first[1]  # a caller's copy: the cache is not changed through it
    assert set(_roster(node)) == {1}  # type: ignore[arg-type]
    _write(path, [(1, b)])  # same size, possibly the same mtime: the content decides
    assert _roster(node)[1].public_bytes_raw() == b.public_key().public_bytes_raw()  # type: ignore[arg-type]
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="roster.json"):
        _roster(node)  # type: ignore[arg-type]
    path.write_text('{"1": "zz"}')  # what is wrong is named, not only its type
    with pytest.raises(ConfigError, match="roster.json.*non-hexadecimal number"):
        _roster(node)  # type: ignore[arg-type]
    path.write_text('{"one": "00"}')
    with pytest.raises(ConfigError, match="roster.json.*'one'"):
        _roster(node)  # type: ignore[arg-type]
    path.unlink()
    with pytest.raises(ConfigError, match="cannot read the secure-aggregation roster"):
        _roster(node)  # type: ignore[arg-type]
