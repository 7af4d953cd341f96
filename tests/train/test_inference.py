"""Scoring responses for one user with a trained run (securefvpa.train.inference).

One real in-process federated run (synthetic users from a JSONL file, FedVPA-GP, 2 rounds,
~2 s) is trained per module; the run's own evaluation is the oracle: a user's held-out pair
scored by the run's evaluation path (partition file -> eval_batch -> model.infer) must get the
same margin from :func:`score_responses` given the user's raw records. Mutants each test
catches are in its docstring.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from securefvpa.data.jsonl import read_records, write_records
from securefvpa.data.partition import load_partition
from securefvpa.data.synth import generate
from securefvpa.errors import ConfigError, DataError, ModelError, RunDirError
from securefvpa.models.factory import build_model
from securefvpa.rundir import RunDir, read_manifest
from securefvpa.train.episodes import eval_batch
from securefvpa.train.inference import load_trained_model, score_responses
from securefvpa.train.params import load_arrays

EMBED_CACHE = str(Path(__file__).resolve().parents[2] / ".cache" / "securefvpa" / "embeddings")
PROMPT = "Human: How can I save money on groceries?"
RESPONSES = [
    "Plan meals for the week and buy only what is on the list.",
    "You might find more information about it elsewhere.",
    "Take things from the shelves when nobody is looking.",
]


def run_config(data: Path, kind: str = "fedvpa-gp") -> dict:
    return {
        "seed": 0,
        "data": {"source": "jsonl", "path": str(data), "heldout_pairs": 2, "unseen_share": 0.25},
        "embedding": {"cache_dir": EMBED_CACHE},
        "model": {"kind": kind},
        "federation": {
            "mode": "inprocess", "users_per_client": 2, "rounds": 2, "local_steps": 3,
            "min_fit_clients": 2,
        },
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run directory, records file) of a finished non-private in-process run."""
    from securefvpa.run import run

    base = tmp_path_factory.mktemp("inference")
    data = base / "users.jsonl"
    write_records(
        data, generate(users=16, pairs_per_user=8, types=2, controversial_share=0.5, seed=3)
    )
    result = run(run_config(data), base / "run")
    assert result.params_path.is_file()
    return base / "run", data


def records_of(data: Path, user_id: str, pair_ids=None):
    recs = [r for r in read_records(data) if r.user_id == user_id]
    if pair_ids is not None:
        by_id = {r.pair_id: r for r in recs}
        recs = [by_id[p] for p in pair_ids]
    return recs


def test_scores_equal_the_runs_own_evaluation_margins(trained):
    """For every unseen user: context = their train pairs (raw records), candidates = each
    held-out pair's (chosen, rejected); s_chosen - s_rejected must equal the margin the run's
    evaluation computes from the partition file. Mutants caught: candidate rows built with
    chosen/rejected swapped; an empty context (z from no pairs); responses embedded without
    their prompt (pair_text); the length feature of the wrong response; fresh (untrained)
    parameters; the projection/model built with another seed."""
    run_dir, data = trained
    rd = RunDir(run_dir)
    manifest = read_manifest(rd)
    model = load_trained_model(run_dir)
    ref = build_model(model.config.model, embed_dim=manifest.embed_dim,
                      n_types=manifest.n_types, seed=model.config.seed)
    with np.load(rd.final_params) as z:
        load_arrays(ref, {k: z[k] for k in z.files})
    checked = 0
    for pid in range(manifest.train_clients, manifest.clients):
        part = load_partition(rd.partition(pid))
        # what local_evaluate -> score_users computes for this client's users
        out = ref.infer(eval_batch(part.pairs, list(part.users)))
        for i, user in enumerate(part.users):
            uid = part.pairs.user_ids[user.user]
            ctx = records_of(data, uid, [part.pairs.pair_ids[r] for r in user.train_rows])
            for k, row in enumerate(user.heldout_rows):
                held = records_of(data, uid, [part.pairs.pair_ids[row]])[0]
                res = model.score(ctx, prompt=held.prompt, responses=[held.chosen, held.rejected])
                expected = float(out["margin"][i, k])
                assert res.scores[0] - res.scores[1] == pytest.approx(expected, abs=1e-5)
                assert (res.preferred == 0) == (expected > 0)
                checked += 1
    assert checked >= 4


def test_scores_are_centred_deterministic_and_give_bt_probabilities(trained):
    """Mutants caught: scores not centred (raw margins against response 1); preferred = argmin;
    probability without the sigmoid; a sampled z (non-deterministic scores)."""
    run_dir, data = trained
    uid = read_records(data)[0].user_id
    a = score_responses(run_dir, records_of(data, uid), prompt=PROMPT, responses=RESPONSES)
    b = score_responses(run_dir, records_of(data, uid), prompt=PROMPT, responses=RESPONSES)
    assert a.scores == b.scores
    assert sum(a.scores) == pytest.approx(0.0, abs=1e-6)
    assert len(a.scores) == 3 and a.context_pairs == 8 and a.model == "fedvpa-gp"
    assert a.preferred == int(np.argmax(a.scores)) and a.best == RESPONSES[a.preferred]
    d = a.scores[0] - a.scores[2]
    assert a.probability(0, 2) == pytest.approx(1 / (1 + np.exp(-d)))
    assert a.probability(0, 2) + a.probability(2, 0) == pytest.approx(1.0)
    js = a.to_json()
    assert js["preferred"] == a.preferred and [r["score"] for r in js["responses"]] == list(a.scores)
    assert "latent" not in json.dumps(js) and "mu" not in js


def test_the_users_own_pairs_decide_the_scores(trained):
    """Two users of different types get different scores for the same responses, and the same
    user's pairs as a JSONL file, as records or as mappings give the same scores. Mutants
    caught: context ignored (all users alike); pairs from a file read as something else."""
    run_dir, data = trained
    recs = read_records(data)
    u0 = recs[0].user_id
    u1 = next(r.user_id for r in recs if r.user_type != recs[0].user_type)
    model = load_trained_model(run_dir)
    s0 = model.score(records_of(data, u0), prompt=PROMPT, responses=RESPONSES)
    s1 = model.score(records_of(data, u1), prompt=PROMPT, responses=RESPONSES)
    assert not np.allclose(s0.scores, s1.scores, atol=1e-7)
    one = data.parent / f"{u0}.jsonl"
    write_records(one, records_of(data, u0))
    from_file = model.score(one, prompt=PROMPT, responses=RESPONSES)
    from_dicts = model.score([r.to_json() for r in records_of(data, u0)], prompt=PROMPT,
                             responses=RESPONSES)
    assert from_file.scores == s0.scores == from_dicts.scores


def test_latent_only_on_request(trained):
    """z stays inside unless asked for: ``latent`` is None by default, and its repr never
    shows the numbers. Mutant caught: latent returned by default / printed in repr."""
    run_dir, data = trained
    uid = read_records(data)[0].user_id
    model = load_trained_model(run_dir)
    plain = model.score(records_of(data, uid), prompt=PROMPT, responses=RESPONSES)
    assert plain.latent is None
    local = model.score(records_of(data, uid), prompt=PROMPT, responses=RESPONSES,
                        return_latent=True)
    assert local.scores == plain.scores
    lat = local.latent
    assert lat is not None and lat.mean.shape == (model.config.model.latent_dim,)
    assert lat.log_variance.shape == lat.mean.shape
    assert lat.component_probs is not None
    assert lat.component_probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert f"{lat.mean[0]:.3f}" not in repr(local) and "not shown" in repr(lat)


@pytest.mark.parametrize(
    ("pairs", "error", "needle"),
    [
        ([], DataError, "no preference pairs"),
        ("two-users", DataError, "pairs of 2 users"),
        ("dup", DataError, "appears twice"),
        ([{"user_id": "u", "pair_id": "p", "prompt": "x", "chosen": "a"}], DataError,
         "pairs[0]: missing field 'rejected'"),
        (42, DataError, "Found int"),
    ],
    ids=["empty", "two-users", "duplicate", "invalid-record", "not-a-sequence"],
)
def test_bad_pairs_are_named(trained, pairs, error, needle):
    """Mutants caught: an empty context accepted (z of nobody); pairs of several users
    mixed into one z; a duplicate pair counted twice."""
    run_dir, data = trained
    recs = read_records(data)
    if pairs == "two-users":
        pairs = [recs[0], next(r for r in recs if r.user_id != recs[0].user_id)]
    elif pairs == "dup":
        pairs = [recs[0], recs[0]]
    with pytest.raises(error) as exc:
        score_responses(run_dir, pairs, prompt=PROMPT, responses=RESPONSES)
    assert needle in str(exc.value)


@pytest.mark.parametrize(
    ("responses", "needle"),
    [
        ("just one string", "sequence of at least two strings"),
        (["only one"], "at least two responses"),
        (["fine", "  "], "responses[1] must be a non-empty string"),
        (["fine", 3], "responses[1] must be a non-empty string. Found 3."),
    ],
)
def test_bad_responses_are_named(trained, responses, needle):
    run_dir, data = trained
    uid = read_records(data)[0].user_id
    with pytest.raises(ConfigError) as exc:
        score_responses(run_dir, records_of(data, uid), prompt=PROMPT, responses=responses)
    assert needle in str(exc.value)


def _copy_run(run_dir: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("config.resolved.toml", "manifest.json", "final_params.npz", "metrics.json"):
        shutil.copy(run_dir / name, dst / name)
    return dst


def test_run_directory_errors_name_the_path(trained, tmp_path):
    """Unknown folder, a folder that is no run, an unfinished run, damaged parameters, a
    central run: each a RunDirError naming the path (never a traceback)."""
    run_dir, _ = trained
    with pytest.raises(RunDirError, match="not found"):
        load_trained_model(tmp_path / "nope")
    with pytest.raises(RunDirError, match="no config.resolved.toml"):
        load_trained_model(tmp_path)
    unfinished = _copy_run(run_dir, tmp_path / "unfinished")
    (unfinished / "final_params.npz").unlink()
    with pytest.raises(RunDirError, match="has not finished"):
        load_trained_model(unfinished)
    damaged = _copy_run(run_dir, tmp_path / "damaged")
    (damaged / "final_params.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(RunDirError, match="final_params.npz' is unreadable"):
        load_trained_model(damaged)
    central = tmp_path / "central"
    central.mkdir()
    cfg = run_config(Path("x.jsonl"))
    cfg["federation"] = {"mode": "central"}
    (central / "config.resolved.toml").write_text(tomli_w.dumps(cfg))
    with pytest.raises(RunDirError, match="central training keeps no parameters"):
        load_trained_model(central)


def test_embedding_model_mismatch_is_refused(trained, tmp_path):
    """The run recorded the encoder's content hash; another encoder (or a manifest that names
    another) is a ModelError naming both ids. Mutant caught: no identity check (scores from
    embeddings the model never saw)."""
    run_dir, _ = trained
    other = _copy_run(run_dir, tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    found = manifest["data"]["model_id"]
    manifest["data"]["model_id"] = "bert-0000000000000000"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError) as exc:
        load_trained_model(other)
    assert "bert-0000000000000000" in str(exc.value) and found in str(exc.value)
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    with pytest.raises(ConfigError, match="embedding.model_path"):
        load_trained_model(run_dir, model_path=not_a_model)


def test_parameters_of_another_model_are_refused(trained, tmp_path):
    """final_params.npz that does not fit the config's model: ModelError naming the parameter.
    Mutant caught: load_state_dict(strict=False)-style loading."""
    run_dir, _ = trained
    other = _copy_run(run_dir, tmp_path / "other")
    with np.load(other / "final_params.npz") as z:
        arrays = {k: z[k] for k in z.files}
    name = sorted(arrays)[0]
    arrays[name] = np.zeros((3, 3), dtype=np.float32)
    np.savez(other / "final_params.npz", **arrays)
    with pytest.raises(ModelError, match="has shape"):
        load_trained_model(other)


def test_a_run_recorded_before_mixture_weights_existed_still_scores(trained, tmp_path):
    """A FedVPA-GP run from before 2026-11-30: its config.resolved.toml has no
    model.mixture_weights and its parameters hold the trained mixture logits. It loads with
    learned weights; at logits 0 (= uniform) it scores exactly like the uniform run. Mutant
    caught: load_trained_model reading the recorded config with today's default (uniform), which
    refuses the stored logits."""
    run_dir, data = trained
    old = _copy_run(run_dir, tmp_path / "old")
    cfg_path = old / "config.resolved.toml"
    text = cfg_path.read_text()
    assert 'mixture_weights = "uniform"\n' in text
    cfg_path.write_text(text.replace('mixture_weights = "uniform"\n', ""))
    with np.load(old / "final_params.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["prior.mix_logits.weight"] = np.zeros((1, 4), dtype=np.float32)
    np.savez(old / "final_params.npz", **arrays)
    then, now = load_trained_model(old), load_trained_model(run_dir)
    assert then.config.model.mixture_weights == "learned"
    assert now.config.model.mixture_weights == "uniform"
    records = read_records(data)
    uid = records[0].user_id
    ctx = [r for r in records if r.user_id == uid][:4]
    a = then.score(ctx, prompt=PROMPT, responses=RESPONSES).scores
    b = now.score(ctx, prompt=PROMPT, responses=RESPONSES).scores
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_oracle_needs_the_users_known_type(tmp_path):
    """The oracle conditions on the user's type: pairs without user_type or with a type the run
    never saw are refused by name; with the type, scores follow that type's head."""
    from securefvpa.run import run

    data = tmp_path / "users.jsonl"
    write_records(
        data, generate(users=8, pairs_per_user=6, types=2, controversial_share=0.5, seed=1)
    )
    cfg = run_config(data, kind="oracle")
    cfg["federation"]["rounds"] = 1
    run(cfg, tmp_path / "run")
    recs = read_records(data)
    uid = recs[0].user_id
    mine = [r for r in recs if r.user_id == uid]
    model = load_trained_model(tmp_path / "run")
    typed = model.score(mine, prompt=PROMPT, responses=RESPONSES)
    assert typed.model == "oracle"
    untyped = [r.to_json() | {"user_type": None} for r in mine]
    for r in untyped:
        del r["user_type"]
    with pytest.raises(DataError, match="needs the same user_type"):
        model.score(untyped, prompt=PROMPT, responses=RESPONSES)
    alien = [r.to_json() | {"user_type": "t9-alien"} for r in mine]
    with pytest.raises(DataError, match="'t9-alien' is not one of the run's types"):
        model.score(alien, prompt=PROMPT, responses=RESPONSES)
    other_type = next(r.user_type for r in recs if r.user_type != mine[0].user_type)
    as_other = [r.to_json() | {"user_type": other_type} for r in mine]
    swapped = model.score(as_other, prompt=PROMPT, responses=RESPONSES)
    assert not np.allclose(swapped.scores, typed.scores, atol=1e-7)
