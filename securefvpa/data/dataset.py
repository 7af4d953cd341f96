"""Numeric views of preference data that the model consumes (numpy only, no torch).

``EmbeddedPairs`` holds frozen-encoder embeddings of every pair, row-aligned with the records it
came from. ``UserSplit`` says which rows each simulated user trains on, which are held out, and
which users are never trained on (unseen users, evaluated from their context pairs alone).

Feature contract (what models read):
- ``prompt[i]``   embedding of the prompt text of pair i
- ``chosen[i]``   embedding of prompt + chosen response (the text the reward head scores)
- ``rejected[i]`` embedding of prompt + rejected response
- ``chosen_len[i]``, ``rejected_len[i]``: log(1 + number of words) of each response
The original position of a response in a source file never enters a feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from securefvpa.errors import DataError

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class EmbeddedPairs:
    prompt: FloatArray  # [N, d]
    chosen: FloatArray  # [N, d]
    rejected: FloatArray  # [N, d]
    chosen_len: FloatArray  # [N]
    rejected_len: FloatArray  # [N]
    user_index: IntArray  # [N] index into ``user_ids``
    type_index: IntArray  # [N] index into ``type_names``; -1 when unknown
    controversial: npt.NDArray[np.int8]  # [N] 1 yes, 0 no, -1 unknown
    user_ids: tuple[str, ...]
    type_names: tuple[str, ...]
    pair_ids: tuple[str, ...]
    model_id: str = ""  # which frozen encoder produced the embeddings

    def __post_init__(self) -> None:
        n = self.prompt.shape[0]
        for name in ("chosen", "rejected", "chosen_len", "rejected_len", "user_index",
                     "type_index", "controversial"):
            if getattr(self, name).shape[0] != n:
                raise DataError(
                    f"EmbeddedPairs.{name} has {getattr(self, name).shape[0]} rows, expected {n}"
                )
        if len(self.pair_ids) != n:
            raise DataError(
                f"EmbeddedPairs.pair_ids has {len(self.pair_ids)} entries, expected {n}"
            )

    @property
    def n_pairs(self) -> int:
        return int(self.prompt.shape[0])

    @property
    def dim(self) -> int:
        return int(self.prompt.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the numeric arrays (the embeddings dominate: 3 x N x d x itemsize)."""
        return int(sum(getattr(self, name).nbytes for name in (
            "prompt", "chosen", "rejected", "chosen_len", "rejected_len", "user_index",
            "type_index", "controversial")))

    def subset(self, rows: IntArray) -> EmbeddedPairs:
        """Rows ``rows`` (user and type names kept, so indices stay meaningful)."""
        return EmbeddedPairs(
            prompt=self.prompt[rows], chosen=self.chosen[rows], rejected=self.rejected[rows],
            chosen_len=self.chosen_len[rows], rejected_len=self.rejected_len[rows],
            user_index=self.user_index[rows], type_index=self.type_index[rows],
            controversial=self.controversial[rows], user_ids=self.user_ids,
            type_names=self.type_names, pair_ids=tuple(self.pair_ids[i] for i in rows),
            model_id=self.model_id,
        )


@dataclass(frozen=True)
class UserData:
    """One simulated user's rows into an :class:`EmbeddedPairs`."""

    user: int  # index into EmbeddedPairs.user_ids
    type_index: int  # -1 when unknown
    train_rows: IntArray  # pairs the user may train on (seen users) or use as context (unseen)
    heldout_rows: IntArray  # pairs never trained on; scored for accuracy


@dataclass(frozen=True)
class UserSplit:
    seen: tuple[UserData, ...]
    unseen: tuple[UserData, ...]
    seed: int = 0
    meta: dict[str, int] = field(default_factory=dict)
