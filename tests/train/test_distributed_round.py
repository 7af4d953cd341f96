"""A client's distributed round: it always sends a ring vector — its noise share even when none
of its units was sampled (so the server cannot tell who contributed and amplification by
sampling holds) — and commits the DdgEvent, with the sampling rate it used, before returning."""

from __future__ import annotations

import numpy as np

from securefvpa.config import config_from_dict
from securefvpa.data.load import load_dataset
from securefvpa.privacy.ddg import DdgEvent
from securefvpa.privacy.ledger import Ledger
from securefvpa.rounds.finish import initial_parameters
from securefvpa.rounds.prepare import prepare_local
from securefvpa.rundir import RunDir
from securefvpa.train.client import STATUS_OK, local_train_round


def _local(tmp_path, sample_rate: float):
    cfg = config_from_dict(
        {
            "data": {"source": "synth", "users": 24, "pairs_per_user": 16},
            "train": {"lr": 1.0, "optimizer": "sgd", "context_pairs": 8, "target_pairs": 4},
            "federation": {
                "mode": "inprocess",
                "rounds": 3,
                "local_steps": 1,
                "users_per_client": 3,
            },
            "privacy": {
                "enabled": True,
                "noise": "distributed",
                "sample_rate": sample_rate,
                "noise_multiplier": 2.0,
                "budget_epsilon": 1e6,
                "delta": 1e-5,
            },
            "secagg": {"enabled": True},
        }
    )
    pairs, split, _ = load_dataset(cfg)
    return cfg, prepare_local(cfg, pairs, split, RunDir(tmp_path / "run"), data={})


def test_an_unsampled_client_still_sends_its_noise_share(tmp_path):
    cfg, local = _local(tmp_path, sample_rate=1e-9)  # no unit is ever sampled
    node = local.nodes[0]
    res = local_train_round(node, initial_parameters(cfg, local.manifest), rnd=1)
    dist = node.plan.distributed
    assert res.status == STATUS_OK and res.ring is not None
    assert res.ring.shape == (dist.padded_dim,)
    signed = res.ring.view(np.int32 if dist.bits == 32 else np.int64).astype(np.float64)
    # noise only: mean ~ 0, std ~ local_sigma (levels); not zeros, not a constant
    assert abs(signed.std() / dist.local_sigma - 1.0) < 0.05
    assert abs(signed.mean()) < 5 * dist.local_sigma / np.sqrt(signed.size)
    with Ledger(node.plan.ledger) as led:
        events = led.events_for_client(node.client_id)
    assert events == [node.plan.event(client_id=node.client_id, round=1)]
    assert isinstance(events[0], DdgEvent) and events[0].sample_rate == 1e-9  # amplified by q
