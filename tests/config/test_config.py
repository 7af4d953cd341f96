"""The run config: every bad key or value is refused with the dotted key and the value named."""

from __future__ import annotations

import pytest
import tomli_w

from securefvpa.config import RunConfig, config_from_dict, config_hash, dump_config, load_config
from securefvpa.errors import ConfigError


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = config_from_dict({})
    assert cfg == RunConfig()
    path = tmp_path / "c.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert config_hash(load_config(path)) == config_hash(cfg)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"privacy": {"noise_multiplier": -1.0}}, "privacy.noise_multiplier"),
        ({"privacy": {"delta": 1.0}}, "privacy.delta"),
        ({"privacy": {"delta": 1.5}}, "1.5"),
        ({"privacy": {"sample_rate": 1.5}}, "privacy.sample_rate"),
        ({"privacy": {"sample_rate": 0.0}}, "privacy.sample_rate"),
        ({"privacy": {"accountant": "moments"}}, "'moments'"),
        ({"privacy": {"clip": 0}}, "privacy.clip"),
        ({"privacy": {"enabled": "yes"}}, "privacy.enabled"),
        ({"privacy": {"budget_epsilon": 0.0}}, "privacy.budget_epsilon"),
        (
            {"privacy": {"enabled": True, "target_epsilon": 9.0, "budget_epsilon": 8.0}},
            "target_epsilon",
        ),
        ({"secagg": {"threshold": 0.5}}, "secagg.threshold"),
        ({"secagg": {"bits": 16}}, "secagg.bits"),
        ({"secagg": {"degree": 3}}, "secagg.degree"),
        ({"secagg": {"enabled": True}}, "secagg.enabled"),
        ({"federation": {"mode": "cloud"}}, "'cloud'"),
        ({"federation": {"rounds": 0}}, "federation.rounds"),
        ({"federation": {"fraction_fit": 0.0}}, "federation.fraction_fit"),
        ({"federation": {"mode": "deployment"}}, "federation.superlink"),
        ({"data": {"pairs_per_user": 2}}, "data.pairs_per_user"),
        ({"data": {"heldout_pairs": 16}}, "data.heldout_pairs"),
        ({"data": {"source": "jsonl"}}, "data.path"),
        ({"model": {"kind": "gpt"}}, "'gpt'"),
        ({"model": {"tau_end": 2.0}}, "model.tau_end"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_values_name_key_and_value(raw, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        config_from_dict(raw)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"privacy": {"sigma": 1.0}}, "privacy.sigma"),
        ({"federaton": {}}, "federaton"),
        ({"model": {"kind": "btl", "hidden_size": 3}}, "model.hidden_size"),
    ],
)
def test_unknown_keys_are_rejected(raw, needle):
    with pytest.raises(ConfigError, match=f"unknown config key {needle}"):
        config_from_dict(raw)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = = 1")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)


def test_overrides_are_validated_too(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps({"federation": {"rounds": 3}}))
    assert load_config(path, {"federation.rounds": 5}).federation.rounds == 5
    with pytest.raises(ConfigError, match="federation.rounds"):
        load_config(path, {"federation.rounds": -5})


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"privacy": {"enabled": True, "noise": "distributed"}}, "secagg.enabled = true"),
        (
            {
                "privacy": {"enabled": True, "noise": "distributed"},
                "secagg": {"enabled": True},
                "federation": {"mode": "simulation", "local_steps": 3},
            },
            "local_steps = 1",
        ),
        (
            {
                "privacy": {"enabled": True, "noise": "distributed", "grad_sample_mode": "ghost"},
                "secagg": {"enabled": True},
                "federation": {"mode": "simulation", "local_steps": 1},
            },
            "ghost",
        ),
        (
            {"privacy": {"enabled": True, "noise": "central"}, "federation": {"mode": "simulation"}},
            "inprocess",
        ),
        ({"privacy": {"noise_multiplier": 0.0}}, "leave it out"),
        ({"privacy": {"delta": 0.0}}, "leave it out"),
        ({"privacy": {"max_colluding_clients": -1}}, "privacy.max_colluding_clients"),
        ({"secagg": {"rotation_block": 1000}}, "power of two"),
        ({"model": {"input_projection": -2}}, "model.input_projection"),
    ],
)
def test_noise_modes_and_new_keys_are_checked(over, needle):
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(over)
