"""FedVPA-GP on the data helper's generated text users, embedded by the real MiniLM encoder."""

from __future__ import annotations

import pytest

from securefvpa.config import config_from_dict
from securefvpa.data.load import load_dataset
from securefvpa.train.central import run_central

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory):
    raw = {
        "seed": 0,
        "data": {
            "source": "synth",
            "users": 60,
            "pairs_per_user": 16,
            "types": 2,
            "controversial_share": 0.5,
            "heldout_pairs": 4,
            "unseen_share": 0.2,
        },
        "embedding": {"cache_dir": str(tmp_path_factory.mktemp("emb"))},
        "model": {"hidden": 32, "latent_dim": 4, "components": 2},
        "train": {"steps": 400},
    }
    pairs, split, _ = load_dataset(config_from_dict(raw))
    return raw, pairs, split


def _run(synth, kind: str) -> dict:
    raw, pairs, split = synth
    cfg = config_from_dict({**raw, "model": {**raw["model"], "kind": kind}})
    return run_central(cfg, pairs, split, progress=False)


@pytest.mark.slow  # ~18 s of it is embedding the texts with MiniLM on a cold cache
def test_fedvpa_gp_beats_btl_on_controversial_synth_pairs(synth) -> None:
    btl, gp = _run(synth, "btl"), _run(synth, "fedvpa-gp")
    assert 0.3 <= btl["accuracy"]["controversial"] <= 0.7
    assert gp["accuracy"]["controversial"] >= btl["accuracy"]["controversial"] + 0.10
    assert gp["latent"]["mutual_information_bits"] >= 0.3
