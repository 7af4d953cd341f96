from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

EMBED_CACHE = str(Path(__file__).resolve().parents[2] / ".cache" / "securefvpa" / "embeddings")


def small_config(**sections: dict) -> dict:
    """A small federated config: 24 synth users, 1 user per client, a few rounds."""
    cfg = {
        "seed": 0,
        "data": {
            "source": "synth",
            "users": 24,
            "pairs_per_user": 16,
            "heldout_pairs": 4,
            "unseen_share": 0.2,
        },
        "embedding": {"cache_dir": EMBED_CACHE},
        "model": {"kind": "fedvpa-gp"},
        "train": {"lr": 0.01},
        "federation": {
            "mode": "simulation",
            "rounds": 3,
            "local_steps": 8,
            "min_fit_clients": 2,
            "round_timeout_s": 120.0,
        },
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


@pytest.fixture
def fed_config():
    return small_config


@pytest.fixture
def write_config(tmp_path):
    def write(cfg: dict, name: str = "cfg.toml"):
        path = tmp_path / name
        path.write_text(tomli_w.dumps(cfg))
        return path

    return write
