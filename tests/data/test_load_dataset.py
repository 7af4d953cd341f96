"""load_dataset: the one data entry point of `securefvpa run`, for every source."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from securefvpa.config import RunConfig, config_from_dict
from securefvpa.data import synth
from securefvpa.data.jsonl import write_records
from securefvpa.data.load import cap_users_balanced, load_dataset
from securefvpa.data.records import PreferenceRecord
from securefvpa.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore")
SMALL = {"users": 8, "pairs_per_user": 4, "heldout_pairs": 1, "unseen_share": 0.25, "types": 2,
         "controversial_share": 0.5}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emb")


def _cfg(cache: Path, seed: int = 0, **data: object) -> RunConfig:
    return config_from_dict({"seed": seed, "data": {**SMALL, **data},
                             "embedding": {"cache_dir": str(cache)}})


def test_synth_end_to_end_then_cached(cache: Path) -> None:
    pairs, split, info = load_dataset(_cfg(cache))
    assert pairs.n_pairs == 32 and pairs.dim == 384 and len(pairs.user_ids) == 8
    assert pairs.type_names == synth.TYPE_NAMES[:2]
    assert info["records"] == 32 and info["split_unseen_users"] == 2
    assert len(split.seen) == 6 and len(split.unseen) == 2
    assert {d.type_index for d in split.unseen} == {0, 1}  # stratified
    assert all(len(d.heldout_rows) == 1 for d in split.seen + split.unseen)
    assert int((pairs.controversial == 1).sum()) == 16
    pairs2, split2, info2 = load_dataset(_cfg(cache))
    assert info2["cache_hits"] == info["distinct_texts"] and info2["model_loaded"] is False
    np.testing.assert_array_equal(pairs.chosen, pairs2.chosen)
    assert [d.user for d in split.unseen] == [d.user for d in split2.unseen]


def test_jsonl_source_matches_synth(cache: Path, tmp_path: Path) -> None:
    recs = synth.generate(users=8, pairs_per_user=4, types=2, controversial_share=0.5, seed=0)
    path = tmp_path / "r.jsonl"
    write_records(path, recs)
    # The synth load warms the cache first: under pytest-xdist this test may run on a worker
    # where no earlier test of this module has filled the module-scoped cache.
    ref, _, _ = load_dataset(_cfg(cache))
    pairs, _, info = load_dataset(_cfg(cache, source="jsonl", path=str(path)))
    assert info["source"] == "jsonl" and info["cache_misses"] == 0
    np.testing.assert_array_equal(pairs.rejected, ref.rejected)
    assert pairs.pair_ids == ref.pair_ids


def test_synth_needs_users(cache: Path) -> None:
    with pytest.raises(ConfigError, match="data.users must be >= 1"):
        load_dataset(_cfg(cache, users=0))


def test_cap_users_balanced() -> None:
    recs = [PreferenceRecord(f"{t}-{u}", f"{t}-{u}-{k}", "", "a", "b", t)
            for t in ("x", "y") for u in range(3) for k in range(2)]
    kept = cap_users_balanced(recs, 3)
    assert sorted({r.user_id for r in kept}) == ["x-0", "x-1", "y-0"]
    assert cap_users_balanced(recs, 10) == recs


@pytest.mark.skipif(not os.environ.get("SECUREFVPA_HH_RLHF_DIR"),
                    reason="SECUREFVPA_HH_RLHF_DIR is not set")
def test_hh_rlhf_source(cache: Path) -> None:
    pairs, split, info = load_dataset(_cfg(cache, source="hh_rlhf", max_pairs=40, users=4))
    assert pairs.type_names == ("harmless", "helpful")
    assert len(pairs.user_ids) == 4 and pairs.n_pairs == 16
    assert np.bincount(pairs.type_index).tolist() == [8, 8]
    assert (pairs.controversial == -1).all()
    assert info["hh_users_available"] == 10 and info["hh_rows_read"] == 40
    assert len(split.unseen) == 1
