"""Synthetic conflicting users: deterministic, exact controversial share, real distinct texts."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefvpa.data import synth
from securefvpa.data.jsonl import read_records
from securefvpa.errors import ConfigError

ATTRS = synth.attribute_table()


def _prefers_first(t: int, a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Brute-force utility comparison, written independently of synth.generate."""
    w = synth.TYPE_WEIGHTS[t]
    return sum(w[k] * a[k] for k in range(4)) > sum(w[k] * b[k] for k in range(4))


def test_weights_never_tie() -> None:
    for w in synth.TYPE_WEIGHTS:
        for a, b in itertools.permutations(itertools.product((0, 1), repeat=4), 2):
            assert abs(sum(w[k] * (a[k] - b[k]) for k in range(4))) > 1e-6


def test_types_are_distinct_preferences() -> None:
    combos = list(itertools.product((0, 1), repeat=4))
    orders = {tuple(_prefers_first(t, a, b) for a, b in itertools.combinations(combos, 2))
              for t in range(synth.MAX_TYPES)}
    assert len(orders) == synth.MAX_TYPES


def test_deterministic_by_seed() -> None:
    kw = dict(users=6, pairs_per_user=8, types=3, controversial_share=0.5)
    assert synth.generate(**kw, seed=7) == synth.generate(**kw, seed=7)
    assert synth.generate(**kw, seed=7) != synth.generate(**kw, seed=8)


@settings(max_examples=25, deadline=None)
@given(
    users=st.integers(1, 12),
    ppu=st.integers(1, 10),
    types=st.integers(2, synth.MAX_TYPES),
    share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
)
def test_controversial_exact_and_labels_follow_types(
    users: int, ppu: int, types: int, share: float, seed: int
) -> None:
    recs = synth.generate(users=users, pairs_per_user=ppu, types=types,
                          controversial_share=share, seed=seed)
    assert len(recs) == users * ppu
    assert sum(r.controversial for r in recs) == round(share * users * ppu)
    for r in recs:
        a, b = ATTRS[r.chosen], ATTRS[r.rejected]
        prefs = {_prefers_first(t, a, b) for t in range(types)}
        assert r.controversial == (len(prefs) == 2)  # types disagree exactly on these
        t = synth.TYPE_NAMES.index(r.user_type)
        assert t < types and _prefers_first(t, a, b)  # the user's own type chose
        assert r.user_id.startswith(r.user_type)


def test_users_balanced_over_types_and_ids() -> None:
    recs = synth.generate(users=9, pairs_per_user=4, types=3, controversial_share=0.25, seed=1)
    per_user: dict[str, set[str | None]] = {}
    for r in recs:
        per_user.setdefault(r.user_id, set()).add(r.user_type)
    assert len(per_user) == 9 and all(len(v) == 1 for v in per_user.values())
    counts = {t: sum(1 for v in per_user.values() if t in v) for t in synth.TYPE_NAMES[:3]}
    assert set(counts.values()) == {3}
    assert len({r.pair_id for r in recs}) == len(recs)


def test_label_noise_flips_about_that_share() -> None:
    recs = synth.generate(users=40, pairs_per_user=25, types=2, controversial_share=0.5, seed=3,
                          label_noise=0.2)
    flipped = np.mean([not _prefers_first(synth.TYPE_NAMES.index(r.user_type),
                                          ATTRS[r.chosen], ATTRS[r.rejected]) for r in recs])
    assert 0.16 < flipped < 0.24


def test_texts_are_real_sentences_along_attributes() -> None:
    pool = synth.response_pool()
    assert len(pool) >= 30
    words = {k: [] for k in ("verbose", "concise")}
    for prompt in pool:
        assert prompt.text.startswith("Human: ") and prompt.text.endswith("?")
        for r in prompt.responses:
            n_sent = r.text.count(". ") + r.text.count("! ") + r.text.count("? ") + 1
            assert n_sent >= 3 and r.text[-1] in ".!"
            words["verbose" if r.attributes[2] else "concise"].append(len(r.text.split()))
    assert np.mean(words["verbose"]) > 1.8 * np.mean(words["concise"])
    # attributes are recoverable from the text: no text carries two attribute vectors
    by_text: dict[str, set[tuple[int, ...]]] = {}
    for prompt in pool:
        for r in prompt.responses:
            by_text.setdefault(r.text, set()).add(r.attributes)
    assert all(len(v) == 1 for v in by_text.values())
    assert len(by_text) > 0.9 * len(pool) * 16 * synth.DEFAULT_VARIANTS


def test_distinct_texts_bounded() -> None:
    recs = synth.generate(users=120, pairs_per_user=16, types=4, controversial_share=0.5, seed=0)
    texts = {r.prompt for r in recs} | {r.chosen for r in recs} | {r.rejected for r in recs}
    assert len(texts) <= len(synth.response_pool()) * (1 + 16 * synth.DEFAULT_VARIANTS)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(types=1, controversial_share=0.5), "single user type"),
        (dict(types=7), r"types must be in \[1, 6\]. Found 7"),
        (dict(users=0), "users must be >= 1. Found 0"),
        (dict(controversial_share=1.5), "Found 1.5"),
        (dict(label_noise=0.5), "label_noise"),
    ],
)
def test_bad_arguments(kw: dict, match: str) -> None:
    args = dict(users=4, pairs_per_user=4, types=2, controversial_share=0.5, seed=0) | kw
    with pytest.raises(ConfigError, match=match):
        synth.generate(**args)


def test_single_type_without_controversy() -> None:
    recs = synth.generate(users=2, pairs_per_user=4, types=1, controversial_share=0.0, seed=0)
    assert not any(r.controversial for r in recs)


def test_synth_to_file_writes_valid_jsonl(tmp_path: Path) -> None:
    kw = dict(users=5, pairs_per_user=6, types=4, controversial_share=0.3, seed=11)
    out = tmp_path / "synth.jsonl"
    assert synth.synth_to_file(out, **kw) == 30
    assert read_records(out) == synth.generate(**kw)
