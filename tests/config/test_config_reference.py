"""docs/config.md is generated from the typed config and must be current (issue 12).

When this fails after you add or change a config key, regenerate the reference:

    .venv/bin/securefvpa config reference --out docs/config.md
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from securefvpa.cli import main
from securefvpa.config import RunConfig
from securefvpa.config_reference import config_reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
REGENERATE = ".venv/bin/securefvpa config reference --out docs/config.md"


def test_docs_config_md_is_current():
    """Mutant caught: any key, type, default or comment changed in securefvpa/config.py without
    regenerating docs/config.md."""
    assert DOC.is_file(), f"docs/config.md is missing; run `{REGENERATE}`"
    assert DOC.read_text(encoding="utf-8") == config_reference(), (
        f"docs/config.md is out of date with securefvpa/config.py; run `{REGENERATE}`"
    )


def test_reference_lists_every_key_with_type_default_and_comment():
    text = config_reference()
    cfg = RunConfig()
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if dataclasses.is_dataclass(value):
            assert f"## [{section.name}]" in text
            for f in dataclasses.fields(value):
                assert f"| `{section.name}.{f.name}` |" in text, f.name
        else:
            assert f"| `{section.name}` |" in text
    # a comment and a docstring make it through
    assert "share of users never trained on" in text
    assert "Where preference pairs come from" in text
    # a multi-line comment above a field
    assert "damps the small early" in text


def test_cli_writes_the_reference(tmp_path, capsys):
    out = tmp_path / "config.md"
    assert main(["config", "reference", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == config_reference()
    capsys.readouterr()
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out.startswith("# Configuration reference")
