"""Reading an audit configuration (securefvpa.audit.settings.load_audit_config).

The file goes through ``config.read_toml`` (the hardened reader), so a binary, non-UTF-8,
folder or empty audit config is a ConfigError naming the file, never a UnicodeDecodeError.
Mutant caught by the first test: ``tomllib.loads(p.read_text(encoding="utf-8"))`` (the old
reader) — a UnicodeDecodeError escapes for the binary and non-UTF-8 cases and
IsADirectoryError for the folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

from securefvpa.audit.settings import load_audit_config
from securefvpa.errors import ConfigError

VALID = {
    "data": {"source": "synth", "users": 24},
    "federation": {"mode": "simulation"},
    "privacy": {"enabled": True, "target_epsilon": 1.0},
    "audit": {"canaries": 40, "seed": 3, "inject": "no_noise"},
}


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\x00\x01\xff\xfe\x80garbage", "not UTF-8"),
        (b'[audit]\ncanaries = 10\n[data]\nsource = "caf\xe9"\n', "not UTF-8"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8"),
        (b"[audit\ncanaries = 1", "not valid TOML"),
        (b"# only a comment\n", "sets no key"),
    ],
    ids=["binary", "latin-1", "png", "bad-toml", "empty"],
)
def test_unreadable_audit_config_is_a_config_error(tmp_path: Path, content: bytes, needle: str):
    path = tmp_path / "audit.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        load_audit_config(path)
    assert needle in str(exc.value) and "audit.toml" in str(exc.value)


def test_folder_and_missing_file_are_config_errors(tmp_path: Path):
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_audit_config(tmp_path / "dir.toml")
    with pytest.raises(ConfigError, match="not found"):
        load_audit_config(tmp_path / "missing.toml")


def test_valid_audit_config_and_overrides(tmp_path: Path):
    """The [audit] table goes to AuditSettings, the rest to the run config; audit.* overrides
    reach the table and the others the run config (the reader change keeps both)."""
    path = tmp_path / "audit.toml"
    path.write_text(tomli_w.dumps(VALID))
    cfg, settings = load_audit_config(path, {"audit.canaries": 60, "federation.rounds": 2})
    assert settings.canaries == 60 and settings.seed == 3 and settings.inject == "no_noise"
    assert cfg.privacy.enabled and cfg.federation.rounds == 2 and cfg.data.users == 24
