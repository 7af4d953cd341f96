"""Frozen MiniLM embeddings: equal to sentence-transformers, left truncation, sound disk cache."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from securefvpa.data import embed
from securefvpa.data.records import PreferenceRecord
from securefvpa.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore")

SENTENCES = ["How do I bake bread?", "Keep your bedroom cool, dark and quiet.",
             "The quick brown fox jumps over the lazy dog."]


@pytest.fixture(scope="module")
def model_path() -> Path:
    return embed.resolve_model_path("")


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    """A cache that already holds SENTENCES (one model load for the whole module)."""
    cache = tmp_path_factory.mktemp("emb")
    vecs, st = embed.embed_texts(SENTENCES, cache_dir=cache, progress=False)
    assert st.misses == 3 and st.model_loaded
    return cache


def test_matches_sentence_transformers(warm_cache: Path, model_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(model_path), device="cpu").encode(
        SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
    ours, _ = embed.embed_texts(SENTENCES, cache_dir=warm_cache, progress=False)
    assert ours.dtype == np.float32 and ours.shape == (3, 384)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_cache_hit_loads_no_model(warm_cache: Path) -> None:
    vecs, st = embed.embed_texts(SENTENCES[::-1] + SENTENCES[:1], cache_dir=warm_cache,
                                 progress=False)
    assert (st.texts, st.hits, st.misses, st.model_loaded) == (3, 3, 0, False)
    alone, _ = embed.embed_texts([SENTENCES[2]], cache_dir=warm_cache, progress=False)
    np.testing.assert_array_equal(vecs[0], alone[0])
    np.testing.assert_array_equal(vecs[2], vecs[3])
    # A fresh process serving from cache never imports torch or transformers.
    code = (
        "import sys, json; from securefvpa.data.embed import embed_texts\n"
        f"v, st = embed_texts({SENTENCES!r}, cache_dir={str(warm_cache)!r}, progress=False)\n"
        "print(json.dumps([st.hits, st.model_loaded, 'torch' in sys.modules,"
        " 'transformers' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [3, False, False, False]


def test_partial_miss_and_corrupt_shard(warm_cache: Path, caplog: pytest.LogCaptureFixture,
                                        tmp_path: Path) -> None:
    cache = tmp_path / "c"
    # copy the warm shards, then add a torn shard that must be ignored with a warning
    for shard in warm_cache.rglob("shard-*.npz"):
        dest = cache / shard.parent.name / shard.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(shard.read_bytes())
        (dest.parent / "shard-99999999999999999999-torn.npz").write_bytes(b"PK\x03\x04 torn")
    with caplog.at_level(logging.WARNING, logger="securefvpa.data"):
        vecs, st = embed.embed_texts(SENTENCES + ["A brand new sentence."], cache_dir=cache,
                                     progress=False)
    assert (st.hits, st.misses, st.model_loaded) == (3, 1, True)
    assert "unreadable embedding cache shard" in caplog.text
    again, st2 = embed.embed_texts(["A brand new sentence."], cache_dir=cache, progress=False)
    assert (st2.hits, st2.misses) == (1, 0)
    np.testing.assert_array_equal(again[0], vecs[3])


def test_left_truncation_keeps_the_end(tmp_path: Path) -> None:
    end = " so in the end the answer is to water the plant twice a week and no more than that."
    a = "Human: my basil is dying and I do not know why, it was fine last month" + end
    b = "Human: completely different opening words about a trip to the seaside" + end
    c = "Human: my basil is dying and I do not know why, it was fine last month. It is fine now."
    v, _ = embed.embed_texts([a, b, c], cache_dir=tmp_path, max_tokens=16, progress=False)
    np.testing.assert_allclose(v[0], v[1], atol=1e-6)  # only the shared ending survives
    assert float(v[0] @ v[2]) < 0.95  # same beginning, different ending: different vectors
    full, _ = embed.embed_texts([a, b], cache_dir=tmp_path, max_tokens=256, progress=False)
    assert float(full[0] @ full[1]) < 0.99  # and the cache keeps max_tokens apart


def test_model_identity_follows_content(tmp_path: Path) -> None:
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text('{"model_type": "bert"}')
    (m / "model.safetensors").write_bytes(b"\x00" * 64)
    (m / "README.md").write_text("docs do not matter")
    first = embed.model_identity(m)
    assert first.startswith("bert-")
    (m / "README.md").write_text("edited docs")
    assert embed.model_identity(m) == first
    (m / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 63)  # same size, new weights
    os.utime(m / "model.safetensors", ns=(1, 1))
    assert embed.model_identity(m) != first


def test_bad_model_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"Found '{tmp_path / 'missing'}'"):
        embed.embed_texts(["x"], model_path=tmp_path / "missing", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        embed.embed_texts(["x"], model_path=tmp_path, cache_dir=tmp_path)


def test_embed_records_layout(warm_cache: Path) -> None:
    recs = [
        PreferenceRecord("u1", "p1", "", SENTENCES[0], SENTENCES[1], "b", True),
        PreferenceRecord("u2", "p2", "", SENTENCES[2], SENTENCES[0], None, None),
        PreferenceRecord("u1", "p3", "", SENTENCES[1], SENTENCES[2], "a", False),
    ]
    pairs, st = embed.embed_records_with_stats(recs, cache_dir=warm_cache, progress=False)
    assert st.misses == 1  # only the empty prompt text is new
    assert pairs.user_ids == ("u1", "u2") and pairs.user_index.tolist() == [0, 1, 0]
    assert pairs.type_names == ("a", "b") and pairs.type_index.tolist() == [1, -1, 0]
    assert pairs.controversial.tolist() == [1, -1, 0]
    np.testing.assert_allclose(pairs.chosen_len, np.log1p([5, 9, 7]), rtol=1e-6)
    np.testing.assert_allclose(pairs.rejected_len, np.log1p([7, 5, 9]), rtol=1e-6)
    np.testing.assert_array_equal(pairs.chosen[0], pairs.rejected[1])
    np.testing.assert_array_equal(pairs.prompt[0], pairs.prompt[2])
    assert pairs.model_id == st.model_id and pairs.pair_ids == ("p1", "p2", "p3")


def test_pair_text_format() -> None:
    assert embed.pair_text("Human: hi", "Hello") == "Human: hi\n\nAssistant: Hello"
    assert embed.pair_text("", "Hello") == "Hello"
