r"""Scoring responses for one user with a trained run; the user's latent z stays local.

:func:`load_trained_model` reads a finished federated run directory (``config.resolved.toml``,
``manifest.json``, ``final_params.npz``) and rebuilds its model. :meth:`TrainedModel.score`
then takes ONE user's own preference pairs D_user and candidate responses y_1..y_m to a prompt
x and returns one score per response:

1. every text is embedded by the run's frozen encoder and cache (``data.embed``; the encoder's
   content hash must equal the ``model_id`` the run recorded, so the embeddings are the ones
   the model was trained on);
2. the user's posterior q(z | D_user) comes from the set encoder over all of D_user, exactly as
   the run evaluates a user from their context pairs (``train.episodes.eval_batch``,
   ``PreferenceModel.infer``: z = the posterior mean, exact expectations, no sampling);
3. each response gets the reward r(x, y_i, z) of the trained head, reported centred:
   ``s_i = r(x, y_i, z) - mean_j r(x, y_j, z)``. Bradley-Terry rewards are defined only up to
   a constant per prompt and user (Bradley & Terry 1952); differences are what the model says:
   ``P(user prefers y_i over y_j) = sigmoid(s_i - s_j)`` (:meth:`ResponseScores.probability`).

Privacy: z is computed inside :meth:`TrainedModel.score` and only the scores leave it, unless
the caller passes ``return_latent=True`` for local use (then :attr:`ResponseScores.latent`
holds the posterior). Nothing is sent anywhere and nothing is logged about z; as in a run, the
embeddings of the texts are added to the local embedding cache (``embedding.cache_dir``).

Central runs (``federation.mode = "central"``) keep no parameters (``train.central`` returns
metrics only), so only federated run directories (in-process, simulation, deployment) can be
loaded.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from securefvpa.config import RunConfig, load_recorded_config
from securefvpa.data.dataset import EmbeddedPairs, UserData
from securefvpa.data.embed import (
    embed_records,
    embed_texts,
    model_identity,
    pair_text,
    resolve_model_path,
)
from securefvpa.data.jsonl import read_records
from securefvpa.data.records import PreferenceRecord
from securefvpa.errors import ConfigError, DataError, ModelError, RunDirError
from securefvpa.rundir import Manifest, RunDir, read_manifest
from securefvpa.train.episodes import eval_batch

FloatArray = npt.NDArray[np.float64]
PairsInput = str | Path | Sequence[PreferenceRecord | Mapping[str, Any]]

__all__ = [
    "ResponseScores",
    "TrainedModel",
    "UserLatent",
    "load_trained_model",
    "score_responses",
]


@dataclass(frozen=True, repr=False)
class UserLatent:
    """One user's posterior q(z | D_user), for LOCAL use only (never send it anywhere).

    ``mean`` [latent_dim]: mu(D_user), the z the scores were computed with; ``log_variance``
    [latent_dim]: log sigma^2(D_user); ``component_probs`` [K]: q(c | D_user) at z = mu
    (FedVPA-GP only, else None).
    """

    mean: FloatArray
    log_variance: FloatArray
    component_probs: FloatArray | None

    def __repr__(self) -> str:  # keep z out of logs and tracebacks that print locals
        return f"UserLatent(<{self.mean.shape[0]}-dim posterior, not shown>)"


@dataclass(frozen=True)
class ResponseScores:
    """Scores of candidate responses for one user (see the module docstring).

    ``scores[i]`` is the centred reward of ``responses[i]`` (dimensionless logits; they sum to
    0). ``context_pairs`` is how many of the user's pairs the posterior was inferred from.
    ``latent`` is None unless ``return_latent=True`` was asked for.
    """

    prompt: str
    responses: tuple[str, ...]
    scores: tuple[float, ...]
    model: str
    context_pairs: int
    latent: UserLatent | None = None

    @property
    def preferred(self) -> int:
        """Index of the highest-scoring response (the first one on a tie)."""
        return int(np.argmax(np.asarray(self.scores)))

    @property
    def best(self) -> str:
        """The highest-scoring response."""
        return self.responses[self.preferred]

    def probability(self, i: int, j: int) -> float:
        """The model's P(this user prefers ``responses[i]`` over ``responses[j]``) =
        sigmoid(s_i - s_j) (Bradley-Terry)."""
        d = self.scores[i] - self.scores[j]
        return 1.0 / (1.0 + math.exp(-d)) if d >= 0 else math.exp(d) / (1.0 + math.exp(d))

    def to_json(self) -> dict[str, Any]:
        """Prompt, responses with scores, the preferred index, model and pair count (never z)."""
        return {
            "model": self.model,
            "context_pairs": self.context_pairs,
            "prompt": self.prompt,
            "responses": [
                {"text": t, "score": s} for t, s in zip(self.responses, self.scores)
            ],
            "preferred": self.preferred,
        }


class TrainedModel:
    """A finished federated run's model, ready to score responses (:meth:`score`).

    Build it with :func:`load_trained_model`. ``config`` is the run's resolved config,
    ``manifest`` its manifest, ``model_id`` the frozen encoder's content hash the run recorded.
    """

    def __init__(
        self,
        run_dir: Path,
        config: RunConfig,
        manifest: Manifest,
        model: Any,
        *,
        model_path: Path,
        cache_dir: str | Path,
        model_id: str,
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.manifest = manifest
        self.model_id = model_id
        self._model = model
        self._model_path = model_path
        self._cache_dir = cache_dir

    @property
    def kind(self) -> str:
        """The model kind: "btl", "vpl", "fedvpa-gp" or "oracle"."""
        return str(self.config.model.kind)

    def score(
        self,
        pairs: PairsInput,
        *,
        prompt: str,
        responses: Sequence[str],
        return_latent: bool = False,
    ) -> ResponseScores:
        """Score ``responses`` to ``prompt`` for the one user whose own ``pairs`` are given.

        ``pairs``: that user's preference pairs (:class:`PreferenceRecord` objects, mappings
        with the record fields, or a JSONL file path), at least one, all of one ``user_id``;
        the oracle model also needs their ``user_type``, one of the run's types. ``responses``:
        at least two non-empty strings. ``return_latent=True`` also returns the posterior for
        local use (module docstring).

        Raises :class:`DataError` for bad pairs (empty, several users, invalid or duplicate
        records) and :class:`ConfigError` for a bad prompt or responses, each naming the value.
        """
        records = user_records(pairs)
        prompt, texts = _check_candidates(prompt, responses)
        type_index = self._type_index(records)
        user_pairs = self._embed_records(records)
        cand, stats = embed_texts(
            [prompt, *(pair_text(prompt, r) for r in texts)],
            model_path=self._model_path,
            cache_dir=self._cache_dir,
            max_tokens=self.config.embedding.max_tokens,
            batch_size=self.config.embedding.batch_size,
            progress=False,
        )
        self._check_embeddings(stats.model_id, cand.shape[1])
        batch_pairs = _with_candidates(user_pairs, cand, texts)
        n, m = user_pairs.n_pairs, len(texts)
        user = UserData(
            user=0,
            type_index=type_index,
            train_rows=np.arange(n, dtype=np.int64),
            heldout_rows=np.arange(n, n + m, dtype=np.int64),
        )
        out = self._model.infer(eval_batch(batch_pairs, [user]))
        # Target i is the pair (y_i, y_1): margin_i = r(x, y_i, z) - r(x, y_1, z), one head call.
        margin = out["margin"][0, :m].double().numpy()
        centred = margin - margin.mean()
        latent = None
        if return_latent and "mu" in out:
            comp = out.get("comp_probs")
            latent = UserLatent(
                mean=out["mu"][0].double().numpy().copy(),
                log_variance=out["logvar"][0].double().numpy().copy(),
                component_probs=None if comp is None else comp[0].double().numpy().copy(),
            )
        return ResponseScores(
            prompt=prompt,
            responses=texts,
            scores=tuple(float(s) for s in centred),
            model=self.kind,
            context_pairs=n,
            latent=latent,
        )

    # -- helpers ---------------------------------------------------------------------------------

    def _embed_records(self, records: list[PreferenceRecord]) -> EmbeddedPairs:
        e = self.config.embedding
        pairs = embed_records(
            records,
            model_path=self._model_path,
            cache_dir=self._cache_dir,
            max_tokens=e.max_tokens,
            batch_size=e.batch_size,
            progress=False,
        )
        self._check_embeddings(pairs.model_id, pairs.dim)
        return pairs

    def _check_embeddings(self, model_id: str, dim: int) -> None:
        if model_id != self.model_id:  # checked at load; the folder may change on disk since
            raise ModelError(
                f"embedding model {model_id!r} is not the run's {self.model_id!r} "
                f"({str(self._model_path)!r} changed since the model was loaded)"
            )
        if dim != self.manifest.embed_dim:
            raise ModelError(
                f"embeddings have {dim} dimensions, the run's model expects "
                f"{self.manifest.embed_dim}"
            )

    def _type_index(self, records: list[PreferenceRecord]) -> int:
        if self.kind != "oracle":
            return -1
        types = sorted({r.user_type or "" for r in records})
        if len(types) != 1 or not types[0]:
            raise DataError(
                "the oracle model scores a user of a known type: every pair needs the same "
                f"user_type, one of {list(self.manifest.type_names)}. Found {types}."
            )
        if types[0] not in self.manifest.type_names:
            raise DataError(
                f"user_type {types[0]!r} is not one of the run's types "
                f"{list(self.manifest.type_names)}"
            )
        return self.manifest.type_names.index(types[0])


def user_records(pairs: PairsInput) -> list[PreferenceRecord]:
    """The validated records of ONE user: a JSONL path, records, or mappings of record fields.

    Raises :class:`DataError` when there are none, when they belong to more than one
    ``user_id``, or when a record is invalid or repeats a ``pair_id`` (named).
    """
    if isinstance(pairs, str | Path):
        records = read_records(pairs)
        where = str(pairs)
    elif isinstance(pairs, Sequence):
        records = []
        for i, obj in enumerate(pairs):
            if isinstance(obj, PreferenceRecord):
                records.append(obj)
            else:
                records.append(PreferenceRecord.from_json(obj, where=f"pairs[{i}]"))
        where = "pairs"
    else:
        raise DataError(
            "pairs must be a JSONL path or a sequence of records. Found "
            f"{type(pairs).__name__}."
        )
    if not records:
        raise DataError(
            f"{where}: no preference pairs; the user's z is inferred from their own pairs, "
            "give at least one"
        )
    users = list(dict.fromkeys(r.user_id for r in records))
    if len(users) > 1:
        shown = ", ".join(repr(u) for u in users[:5]) + (" ..." if len(users) > 5 else "")
        raise DataError(
            f"{where}: pairs of {len(users)} users ({shown}); score one user at a time "
            "from that user's own pairs"
        )
    seen: set[str] = set()
    for r in records:
        if r.pair_id in seen:
            raise DataError(f"{where}: pair_id {r.pair_id!r} appears twice")
        seen.add(r.pair_id)
    return records


def _check_candidates(prompt: object, responses: object) -> tuple[str, tuple[str, ...]]:
    if not isinstance(prompt, str):
        raise ConfigError(f"prompt must be a string. Found {type(prompt).__name__}.")
    if isinstance(responses, str | bytes) or not isinstance(responses, Sequence):
        raise ConfigError(
            "responses must be a sequence of at least two strings. Found "
            f"{type(responses).__name__} {str(responses)[:60]!r}."
        )
    texts = tuple(responses)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ConfigError(f"responses[{i}] must be a non-empty string. Found {t!r}.")
    if len(texts) < 2:
        raise ConfigError(
            f"responses must hold at least two responses to compare (scores are relative). "
            f"Found {len(texts)}."
        )
    return prompt, texts


def _with_candidates(
    user: EmbeddedPairs, cand: npt.NDArray[np.float32], texts: tuple[str, ...]
) -> EmbeddedPairs:
    """The user's pairs followed by one row per response i: (prompt, y_i, y_1)."""
    m = len(texts)
    prompt_vec = np.repeat(cand[:1], m, axis=0)
    resp = cand[1:]
    lens = np.log1p([len(t.split()) for t in texts]).astype(np.float32)  # as data.embed does

    def cat(a: np.ndarray, b: np.ndarray) -> Any:
        return np.concatenate([a, b.astype(a.dtype, copy=False)], axis=0)

    return EmbeddedPairs(
        prompt=cat(user.prompt, prompt_vec),
        chosen=cat(user.chosen, resp),
        rejected=cat(user.rejected, np.repeat(resp[:1], m, axis=0)),
        chosen_len=cat(user.chosen_len, lens),
        rejected_len=cat(user.rejected_len, np.repeat(lens[:1], m)),
        user_index=cat(user.user_index, np.zeros(m, dtype=np.int64)),
        type_index=cat(user.type_index, np.full(m, -1, dtype=np.int64)),
        controversial=cat(user.controversial, np.full(m, -1, dtype=np.int8)),
        user_ids=user.user_ids,
        type_names=user.type_names,
        pair_ids=(*user.pair_ids, *(f"<response {i}>" for i in range(m))),
        model_id=user.model_id,
    )


def load_trained_model(
    run_dir: str | Path,
    *,
    model_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> TrainedModel:
    """Load the final model of the federated run in ``run_dir``.

    ``model_path`` / ``cache_dir`` replace the run's ``embedding.model_path`` /
    ``embedding.cache_dir`` (a run scored on another machine); the encoder found there must
    have the content hash the run recorded (``manifest.json`` ``data.model_id``).

    Raises :class:`RunDirError` when ``run_dir`` is not a finished federated run directory
    (missing, a central run, no ``final_params.npz``, damaged files) and :class:`ModelError`
    when the encoder or the parameters do not match the run (both ids or shapes named).
    """
    root = Path(run_dir)
    rd = RunDir(root)
    if not root.is_dir():
        raise RunDirError(f"run directory {str(root)!r} not found")
    if not rd.config.is_file():
        raise RunDirError(
            f"{str(root)!r} is not a run directory (no config.resolved.toml); give the --out "
            "folder of `securefvpa run`"
        )
    cfg = load_recorded_config(rd.config)
    if cfg.federation.mode == "central":
        raise RunDirError(
            f"{str(root)!r} is a central run (federation.mode = 'central'): central training "
            "keeps no parameters; score a federated run (inprocess, simulation or deployment)"
        )
    manifest = read_manifest(rd)
    if not rd.final_params.is_file():
        raise RunDirError(
            f"{str(rd.final_params)!r} not found: the run has not finished (continue it with "
            "`securefvpa run CONFIG --out RUN_DIR --resume`)"
        )
    recorded = str(manifest.data.get("model_id") or "")
    e = cfg.embedding
    path = resolve_model_path(e.model_path if model_path is None else model_path)
    found = model_identity(path)
    if not recorded:
        raise RunDirError(
            f"{str(rd.manifest)!r} records no embedding model id (data.model_id): cannot "
            "check that the encoder matches the run"
        )
    if found != recorded:
        raise ModelError(
            f"embedding model {str(path)!r} is {found!r}, but the run was trained on embeddings "
            f"of {recorded!r}; use the run's encoder (embedding.model_path)"
        )
    params = _read_params(rd.final_params)
    from securefvpa.models.factory import build_model
    from securefvpa.train.params import load_arrays

    model = build_model(
        cfg.model, embed_dim=manifest.embed_dim, n_types=manifest.n_types, seed=cfg.seed
    )
    load_arrays(model, params)
    model.eval()
    return TrainedModel(
        root,
        cfg,
        manifest,
        model,
        model_path=path,
        cache_dir=e.cache_dir if cache_dir is None else cache_dir,
        model_id=recorded,
    )


def _read_params(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k].copy() for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{str(path)!r} is unreadable: {exc}") from None


def score_responses(
    run_dir: str | Path,
    pairs: PairsInput,
    *,
    prompt: str,
    responses: Sequence[str],
    return_latent: bool = False,
) -> ResponseScores:
    """:func:`load_trained_model` then :meth:`TrainedModel.score` (see both for errors)."""
    return load_trained_model(run_dir).score(
        pairs, prompt=prompt, responses=responses, return_latent=return_latent
    )
