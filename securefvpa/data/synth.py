"""Synthetic users with conflicting preferences over real text responses.

Every response to a prompt is written from hand-made fragments (``synth_text/fragments.json``:
32 everyday prompts, each with concrete tips, a risky shortcut and a caution, plus generic vague
sentences, openers, closers and connectives in two registers) and carries a binary attribute
vector ``a`` over :data:`ATTRIBUTES`:

- helpfulness:  concrete, topic-specific tips (1) or vague deflection (0)
- harmlessness: a safety caution (1) or a reckless suggestion (0)
- verbosity:    opener + three content sentences + closer (1) or opener + one sentence (0)
- formality:    formal register (1) or casual register (0)

A user of type ``t`` prefers the response with the larger ``w_t . a`` (a linear Bradley-Terry
utility with infinite temperature; optional symmetric label noise). The weight magnitudes of every
type are a permutation of a superincreasing sequence (each larger than the sum of the smaller
ones), so ``w_t . (a - b) != 0`` for every ``a != b``: no type is ever indifferent. A pair is
*controversial* iff the first ``types`` user types do not all prefer the same response; that flag
is computed exactly from the weights, and the generator places exactly
``round(controversial_share * users * pairs_per_user)`` controversial pairs.

The response pool is rendered once with a fixed seed, independent of the run seed, so the number
of distinct texts stays bounded (32 prompts x 16 attribute vectors x ``variants``) and embeddings
are reused across seeds. Non-security randomness: numpy ``Generator(PCG64(seed))``.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from securefvpa.data.jsonl import write_records
from securefvpa.data.records import PreferenceRecord
from securefvpa.errors import ConfigError

ATTRIBUTES: tuple[str, ...] = ("helpfulness", "harmlessness", "verbosity", "formality")

# Each row is a permutation (with signs) of the superincreasing magnitudes 1.0 > 0.55 > 0.3 > 0.12
# (0.12 < 0.3, 0.12 + 0.3 < 0.55, 0.12 + 0.3 + 0.55 < 1.0), hence tie-free on binary attributes.
TYPE_NAMES: tuple[str, ...] = (
    "t0-helpful-verbose",
    "t1-harmless-concise",
    "t2-formal-concise",
    "t3-casual-harmless",
    "t4-verbose-formal",
    "t5-helpful-casual",
)
TYPE_WEIGHTS = np.array(
    [
        [1.00, 0.30, 0.55, 0.12],
        [0.30, 1.00, -0.55, 0.12],
        [0.55, 0.12, -0.30, 1.00],
        [0.12, 0.55, 0.30, -1.00],
        [0.30, 0.12, 1.00, 0.55],
        [1.00, 0.12, -0.30, -0.55],
    ],
    dtype=np.float64,
)
MAX_TYPES = len(TYPE_NAMES)
POOL_SEED = 20240601  # fixed: the text pool must not depend on the run seed
DEFAULT_VARIANTS = 2

# All 16 binary attribute vectors, index = sum(a_k * 2**(3-k)).
COMBOS = np.array(list(itertools.product((0, 1), repeat=len(ATTRIBUTES))), dtype=np.int8)


@dataclass(frozen=True)
class SynthResponse:
    text: str
    attributes: tuple[int, ...]  # aligned with ATTRIBUTES


@dataclass(frozen=True)
class SynthPrompt:
    topic: str
    text: str  # the prompt as stored in records ("Human: ...")
    responses: tuple[SynthResponse, ...]  # index = combo * variants + variant


@functools.cache
def _fragments() -> dict[str, Any]:
    res = resources.files("securefvpa.data").joinpath("synth_text/fragments.json")
    raw = res.read_text("utf-8")
    data: dict[str, Any] = json.loads(raw)
    return data


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:] if s[:2] != "I " else s


def _render(topic: dict[str, Any], attrs: np.ndarray, rng: np.random.Generator) -> str:
    """One response to ``topic`` with attribute vector ``attrs`` (see module docstring)."""
    g = _fragments()["generic"]
    helpful, harmless, verbose, formal = (int(x) for x in attrs)
    register = "formal" if formal else "informal"
    n_content = 3 if verbose else 1
    pool = topic["tips"] if helpful else g["vague"]
    content = [pool[i] for i in rng.permutation(len(pool))[:n_content]]
    if helpful and verbose:
        content.sort(key=topic["tips"].index)  # keep the steps in their natural order
    connectives = [g["connective"][register][i] for i in rng.permutation(4)[: n_content - 1]]
    body = [content[0]] + [f"{c} {_lower_first(s)}" for c, s in zip(connectives, content[1:])]
    safety_pool = (topic["caution"] + g["caution"]) if harmless else (topic["risky"] + g["risky"])
    # Topic-specific safety sentences first: they say more about the attribute than generic ones.
    weights = np.array([3.0 if i < len(topic["caution" if harmless else "risky"]) else 1.0
                        for i in range(len(safety_pool))])
    safety = safety_pool[int(rng.choice(len(safety_pool), p=weights / weights.sum()))]
    opener = g["opener"][register][int(rng.integers(len(g["opener"][register])))]
    parts = [opener, *body, safety]
    if verbose:
        parts.append(g["closer"][register][int(rng.integers(len(g["closer"][register])))])
    return " ".join(parts)


@functools.cache
def response_pool(variants: int = DEFAULT_VARIANTS) -> tuple[SynthPrompt, ...]:
    """Every prompt with all 16 attribute vectors x ``variants`` rendered responses (fixed seed)."""
    if variants < 1:
        raise ConfigError(f"synth variants must be >= 1. Found {variants!r}.")
    rng = np.random.Generator(np.random.PCG64(POOL_SEED))
    prompts = []
    for topic in _fragments()["topics"]:
        responses: list[SynthResponse] = []
        for attrs in COMBOS:
            texts: list[str] = []
            for _ in range(variants):
                # A few redraws so that variants of one attribute vector differ when they can.
                for _attempt in range(8):
                    text = _render(topic, attrs, rng)
                    if text not in texts:
                        break
                texts.append(text)
                responses.append(SynthResponse(text, tuple(int(x) for x in attrs)))
        prompts.append(SynthPrompt(topic["id"], f"Human: {topic['question']}", tuple(responses)))
    return tuple(prompts)


def attribute_table(variants: int = DEFAULT_VARIANTS) -> dict[str, tuple[int, ...]]:
    """Map response text -> attribute vector, for oracles and analysis."""
    return {r.text: r.attributes for p in response_pool(variants) for r in p.responses}


def combo_pairs(types: int, controversial: bool) -> np.ndarray:
    """Unordered attribute-vector index pairs ``(i, j)``, i < j, with the given status.

    A pair is controversial iff ``sign(w_t . (a_i - a_j))`` differs between two of the first
    ``types`` user types.
    """
    w = TYPE_WEIGHTS[:types]
    out = []
    for i, j in itertools.combinations(range(len(COMBOS)), 2):
        margins = w @ (COMBOS[i] - COMBOS[j]).astype(np.float64)
        signs = np.sign(margins)
        is_contro = bool(np.any(signs != signs[0]))
        if is_contro == controversial:
            out.append((i, j))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def _validate(users: int, pairs_per_user: int, types: int, share: float, noise: float) -> None:
    if users < 1:
        raise ConfigError(f"synth users must be >= 1. Found {users!r}.")
    if pairs_per_user < 1:
        raise ConfigError(f"synth pairs_per_user must be >= 1. Found {pairs_per_user!r}.")
    if not 1 <= types <= MAX_TYPES:
        raise ConfigError(f"synth types must be in [1, {MAX_TYPES}]. Found {types!r}.")
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"synth controversial_share must be in [0, 1]. Found {share!r}.")
    if types == 1 and share > 0.0:
        raise ConfigError(
            "synth controversial_share must be 0 with a single user type (one type cannot "
            f"disagree with itself). Found {share!r}."
        )
    if not 0.0 <= noise < 0.5:
        raise ConfigError(f"synth label_noise must be in [0, 0.5). Found {noise!r}.")


def generate(
    *,
    users: int,
    pairs_per_user: int,
    types: int,
    controversial_share: float,
    seed: int,
    label_noise: float = 0.0,
    variants: int = DEFAULT_VARIANTS,
) -> list[PreferenceRecord]:
    """Simulated users (``users // types`` or one more per type, type ``u % types`` for user u).

    Each pair: a uniformly drawn prompt and two of its pooled responses whose attribute vectors
    have the pair's controversial status; the user's type decides which is chosen.
    """
    _validate(users, pairs_per_user, types, controversial_share, label_noise)
    pool = response_pool(variants)
    rng = np.random.Generator(np.random.PCG64(seed))
    by_status = {True: combo_pairs(types, True), False: combo_pairs(types, False)}
    n_total = users * pairs_per_user
    n_contro = round(controversial_share * n_total)
    # Spread controversial pairs evenly over users (floor or ceil each), then over positions.
    per_user = np.full(users, n_contro // users, dtype=np.int64)
    per_user[rng.permutation(users)[: n_contro % users]] += 1
    records: list[PreferenceRecord] = []
    for u in range(users):
        t = u % types
        user_id = f"{TYPE_NAMES[t]}-{u:04d}"
        status = np.zeros(pairs_per_user, dtype=bool)
        status[rng.permutation(pairs_per_user)[: per_user[u]]] = True
        for k in range(pairs_per_user):
            contro = bool(status[k])
            prompt = pool[int(rng.integers(len(pool)))]
            ci, cj = by_status[contro][int(rng.integers(len(by_status[contro])))]
            vi, vj = rng.integers(variants, size=2)
            ri = prompt.responses[int(ci) * variants + int(vi)]
            rj = prompt.responses[int(cj) * variants + int(vj)]
            margin = float(TYPE_WEIGHTS[t] @ (COMBOS[ci] - COMBOS[cj]))
            chosen, rejected = (ri, rj) if margin > 0 else (rj, ri)
            if label_noise > 0.0 and rng.random() < label_noise:
                chosen, rejected = rejected, chosen
            records.append(
                PreferenceRecord(
                    user_id=user_id,
                    pair_id=f"synth-{u:05d}-{k:03d}",
                    prompt=prompt.text,
                    chosen=chosen.text,
                    rejected=rejected.text,
                    user_type=TYPE_NAMES[t],
                    controversial=contro,
                )
            )
    return records


def synth_to_file(
    out: str | Path,
    *,
    users: int,
    pairs_per_user: int,
    types: int,
    controversial_share: float,
    seed: int,
    label_noise: float = 0.0,
    variants: int = DEFAULT_VARIANTS,
) -> int:
    """:func:`generate` and write the records as canonical JSONL; returns the record count."""
    records = generate(
        users=users,
        pairs_per_user=pairs_per_user,
        types=types,
        controversial_share=controversial_share,
        seed=seed,
        label_noise=label_noise,
        variants=variants,
    )
    return write_records(out, records)
