"""The Opacus adapter: client-side DP-SGD over episodes, the only module that imports opacus.

Privacy unit: one preference pair. Mechanism, per local step:

1. every train pair of the client is placed in exactly one *episode* (a group of one user's
   pairs: context pairs encoded into z, target pairs scored) by a random permutation that does
   not look at content (``episodes.partition_episodes``);
2. each episode is included independently with probability ``q`` (Poisson sampling; the coin
   flips come from the OS CSPRNG);
3. Opacus computes one gradient per included episode (``GradSampleModule``), clips it to norm
   ``C`` and sums (``DPOptimizer.clip_and_accumulate``);
4. Gaussian noise ``N(0, sigma^2 C^2 I)`` from the OS CSPRNG is added (``CsprngDPOptimizer``).

Changing one pair changes the content of exactly one episode and so at most one clipped
per-episode gradient, by at most ``2C`` in L2 norm: the mechanism is the Poisson-subsampled
Gaussian under the *replace-one* (substitution) relation on pairs, with the number of pairs of
a client public. Under ``privacy.unit = "user"`` one user is one episode, so the same holds per
user, and adding or removing a user adds or removes one clipped gradient (norm <= C): the
add/remove-one relation (``privacy.neighbouring_relation``), allowed for users only. ``tests/train/test_private.py::test_one_pair_changes_one_clipped_gradient``
measures this; the accountant (securefvpa.privacy) composes exactly these events.

Why not ``PrivacyEngine.make_private``: it owns the data loader and the noise generator, and its
secure mode needs ``torchcsprng`` (no build for torch 2.13). We use the same Opacus parts it
assembles (``GradSampleModule`` / ``DPOptimizer``) with CSPRNG sampling and noise, and a fresh
optimizer per round; Opacus' own accountant is never used: every step is recorded as a
dp-accounting event in the client's ledger, which the report is computed from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from opacus.validators import ModuleValidator

from securefvpa.config import TrainConfig
from securefvpa.data.dataset import EmbeddedPairs, UserData
from securefvpa.errors import ConfigError, ModelError
from securefvpa.privacy.plan import DPSettings
from securefvpa.train import csprng
from securefvpa.train.episodes import collate, unit_episodes
from securefvpa.train.loop import apply_schedule, make_optimizer

if TYPE_CHECKING:
    from securefvpa.models.preference import PreferenceModel


@dataclass(frozen=True)
class PrivateStats:
    steps: int
    mean_loss: float
    episodes: int  # episodes in the client's partition per step (the Poisson population)
    sampled: int  # episodes actually sampled over all steps


class CsprngDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer with Gaussian noise drawn from the OS CSPRNG (see ``csprng``)."""

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            summed = p.summed_grad
            if std > 0:
                noise = csprng.standard_normal(summed.numel()) * std
                summed = summed + torch.from_numpy(noise).to(summed.dtype).view_as(summed)
            p.grad = summed.view_as(p)


def validate_for_dp(model: torch.nn.Module) -> None:
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ModelError(f"model is not compatible with Opacus DP-SGD: {errors[0]}")


class CsprngGhostDPOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' ghost-clipping optimizer with Gaussian noise from the OS CSPRNG."""

    def add_noise(self) -> None:
        CsprngDPOptimizer.add_noise(self)  # same rule: p.grad = p.summed_grad + N(0, (sigma C)^2)


def wrap(model: torch.nn.Module, mode: str, *, clip: float | None = None) -> GradSampleModule:
    """Opacus' per-sample machinery for ``mode`` ("hooks", "functorch" or "ghost")."""
    if mode not in ("hooks", "functorch", "ghost"):
        raise ConfigError(
            f"grad_sample_mode must be 'hooks', 'functorch' or 'ghost'. Found {mode!r}."
        )
    validate_for_dp(model)
    if mode == "ghost":
        if clip is None:
            raise ConfigError("ghost clipping needs the clip norm. Found clip=None.")
        return GradSampleModuleFastGradientClipping(
            model, batch_first=True, loss_reduction="mean", max_grad_norm=clip, use_ghost_clipping=True
        )
    return GradSampleModule(
        model, batch_first=True, loss_reduction="mean", force_functorch=(mode == "functorch")
    )


def _empty_grad_samples(gsm: GradSampleModule) -> None:
    """An empty Poisson sample: zero per-sample rows, so the step is noise only."""
    for p in gsm.parameters():
        if p.requires_grad:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)


class PrivateStepper:
    """Opacus' per-episode machinery and a CSPRNG DP optimizer around ``model``, for one round.

    ``step(batch)`` is one DP-SGD step on an already Poisson-sampled batch of episodes (None =
    an empty sample: the step is noise only). ``close()`` removes Opacus' hooks.
    """

    def __init__(self, model: torch.nn.Module, *, dp: DPSettings, train_cfg: TrainConfig,
                 expected_batch: float) -> None:
        self.ghost = dp.grad_sample_mode == "ghost"
        self.gsm = wrap(model, dp.grad_sample_mode, clip=dp.clip)
        self.optimizer = (CsprngGhostDPOptimizer if self.ghost else CsprngDPOptimizer)(
            make_optimizer(self.gsm, train_cfg),
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.clip,
            expected_batch_size=max(1, round(expected_batch)),
            loss_reduction="mean",
        )
        self.gsm.train()

    def step(self, batch: Any | None) -> float | None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = None
        if batch is not None:
            per_episode, _ = self.gsm(**batch.inputs())
            if self.ghost:
                # two backward passes: per-episode norms, then the clipped-and-summed gradient
                DPTensorFastGradientClipping(self.gsm, self.optimizer, per_episode, "mean").backward()
            else:
                per_episode.mean().backward()
            loss = float(per_episode.detach().mean())
        elif self.ghost:
            for p in self.gsm.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
        else:
            _empty_grad_samples(self.gsm)
        self.optimizer.step()
        return loss

    def close(self) -> None:
        self.gsm._close()


def private_train_steps(
    model: torch.nn.Module,
    pairs: EmbeddedPairs,
    users: tuple[UserData, ...] | list[UserData],
    *,
    steps: int,
    train_cfg: TrainConfig,
    dp: DPSettings,
    rng: np.random.Generator,
    step_offset: int = 0,
    total_steps: int | None = None,
    schedule: bool = True,
    unit: str = "pair",
) -> PrivateStats:
    """Run ``steps`` DP-SGD steps on ``model`` in place; returns statistics, never data.

    ``unit`` is the privacy unit: ``"pair"`` samples the episodes of a disjoint partition of
    every user's pairs; ``"user"`` samples users, one capped episode each (``unit_episodes``).
    ``rng`` only shuffles pairs into episodes (content-independent, not a secret); the sampling
    coins and the noise come from the CSPRNG.
    """

    def episodes_now(r: np.random.Generator) -> list[Any]:
        return unit_episodes(pairs, users, unit=unit, train_cfg=train_cfg, rng=r)

    n_episodes = len(episodes_now(np.random.default_rng(0)))  # depends on counts only
    if n_episodes == 0:
        raise ModelError("the client has no training pairs")
    stepper = PrivateStepper(model, dp=dp, train_cfg=train_cfg,
                             expected_batch=dp.sample_rate * n_episodes)
    total = total_steps or steps
    losses: list[float] = []
    sampled_total = 0
    try:
        for i in range(steps):
            if schedule and hasattr(model, "set_kl_weight"):
                # the same temperature / KL warm-up schedule as the non-private loop
                apply_schedule(cast("PreferenceModel", model), step_offset + i, total, train_cfg)
            episodes = episodes_now(rng)
            keep = csprng.poisson_mask(len(episodes), dp.sample_rate)
            chosen = [e for e, k in zip(episodes, keep) if k]
            sampled_total += len(chosen)
            loss = stepper.step(collate(pairs, chosen) if chosen else None)
            if loss is not None:
                losses.append(loss)
    finally:
        stepper.close()
    return PrivateStats(
        steps=steps,
        mean_loss=float(np.mean(losses)) if losses else float("nan"),
        episodes=n_episodes,
        sampled=sampled_total,
    )


@dataclass(frozen=True)
class ClippedUnits:
    """One distributed-DP step of a client: the clipped gradient of every sampled unit.

    ``grads`` is ``[B, d]`` float64 in the order of ``rounds.encoding.flatten`` (sorted
    state-dict names; zeros for entries that do not train), each row of L2 norm <= ``clip``
    (Opacus' rule ``g * min(1, C / (||g|| + 1e-6))``). ``units`` is the Poisson population
    (units the client holds this step), ``B`` the number sampled.
    """

    grads: np.ndarray
    units: int


def clipped_unit_gradients(
    model: torch.nn.Module,
    pairs: EmbeddedPairs,
    users: tuple[UserData, ...] | list[UserData],
    *,
    unit: str,
    train_cfg: TrainConfig,
    dp: DPSettings,
    rng: np.random.Generator,
) -> ClippedUnits:
    """Poisson-sample this client's units (rate ``dp.sample_rate``, CSPRNG coins), and return
    each sampled unit's clipped gradient — no noise, no parameter change.

    This is the client's part of *distributed* DP-SGD (Kairouz, Liu & Steinke 2021): the noise is
    added once for the secure sum (discrete-Gaussian shares, ``secagg.ddg``), not per client.
    Per-unit gradients come from Opacus' ``GradSampleModule`` (the same machinery, and the same
    clipping rule, as ``DPOptimizer``; ``tests/train/test_private.py`` checks them against a
    brute-force micro-batch oracle). Ghost clipping never materialises per-unit gradients, so it
    is refused here.
    """
    if dp.grad_sample_mode == "ghost":
        raise ConfigError(
            "privacy.grad_sample_mode 'ghost' cannot give per-unit gradients, which distributed "
            "noise rounds per unit; use 'hooks' or 'functorch'. Found 'ghost'."
        )
    episodes = unit_episodes(pairs, users, unit=unit, train_cfg=train_cfg, rng=rng)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names = sorted(shapes)
    width = int(sum(int(np.prod(shapes[k])) for k in names))
    keep = csprng.poisson_mask(len(episodes), dp.sample_rate)
    chosen = [e for e, k in zip(episodes, keep) if k]
    if not chosen:
        return ClippedUnits(grads=np.zeros((0, width)), units=len(episodes))
    params = dict(model.named_parameters())
    gsm = wrap(model, dp.grad_sample_mode)
    try:
        gsm.train()
        gsm.zero_grad(set_to_none=True)
        per_episode, _ = gsm(**collate(pairs, chosen).inputs())
        # loss_reduction="mean" (wrap): Opacus rescales, so grad_sample is each episode's own
        # gradient (the micro-batch oracle test checks it)
        per_episode.mean().backward()
        cols = []
        for k in names:
            p = params.get(k)
            if p is not None and p.requires_grad and getattr(p, "grad_sample", None) is not None:
                cols.append(
                    cast(Any, p).grad_sample.detach().reshape(len(chosen), -1).to(torch.float64)
                )
            else:
                cols.append(torch.zeros((len(chosen), int(np.prod(shapes[k]))), dtype=torch.float64))
        flat = torch.cat(cols, dim=1)
    finally:
        for p in model.parameters():
            p.grad = None
            if hasattr(p, "grad_sample"):
                p.grad_sample = None
        gsm._close()
    factor = (dp.clip / (flat.norm(dim=1) + 1e-6)).clamp(max=1.0)  # Opacus' clipping rule
    return ClippedUnits(grads=(flat * factor[:, None]).numpy(), units=len(episodes))
