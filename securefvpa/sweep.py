"""``securefvpa sweep CONFIG --out DIR``: a privacy–utility study over a grid of runs.

The sweep file is a run configuration (every table of ``securefvpa run``: the *base* run) plus
one ``[sweep]`` table that names the grid::

    [sweep]
    epsilon = [1, 4, 8, "inf"]         # target ε per privacy unit; "inf" = privacy off
    unit = ["pair", "user"]            # privacy.unit (the neighbouring relation's unit)
    noise = ["distributed", "local"]   # privacy.noise
    model = ["btl", "vpl", "fedvpa-gp", "oracle"]
    users = [1000]                     # data.users
    pairs_per_user = [16]              # data.pairs_per_user
    seeds = [0, 1]                     # seed (data generation, split, init, sampling)
    [sweep.axes]                       # optional: further axes, dotted run-config keys
    "model.hidden" = [16, 64]
    [sweep.datasets.polis]             # optional: named data sets, each a partial run config
    data = { source = "polis", users = 0 }   # merged over the base (default: one data set,
                                       # named after data.source)

An axis left out takes the base config's value. ε is the calibration target *and* the hard
per-client budget (``privacy.target_epsilon = privacy.budget_epsilon = ε``; σ is calibrated, so
the base must not set ``privacy.noise_multiplier``); with ``privacy.noise = "distributed"``
secure aggregation is switched on (the noise lives inside it). ε = "inf" turns privacy off, so
unit and noise do not apply: the grid holds one non-private cell per (data set, model, users,
pairs per user, axes, seed) whatever the unit and noise axes say. The type-oracle under DP is
kept: it is the private model that is told each user's type, the ceiling of a private latent.

Every cell is one ``securefvpa.run.run`` call — the code path of ``securefvpa run``, with the
base config's ``federation.mode`` (``"inprocess"`` is the fast one for studies) — in its own run
directory ``DIR/cells/<cell id>/`` (a readable, deterministic id such as
``synth-fedvpa-gp-eps4-pair-distributed-u16-p16-s0``), with its own privacy ledger.

Resuming. A cell whose ``metrics.json`` exists and whose ``config.resolved.toml`` is the cell's
config (same SHA-256) is finished and never rerun. A cell interrupted after its data was
prepared (``manifest.json``) resumes with ``run(..., resume=True)`` from its last checkpoint:
the round-attempt journal and the ledger keep every spend of the interrupted attempt. A cell
interrupted earlier (nothing but its config) restarts cleanly. A cell directory written by
another config is moved to ``DIR/stale/`` and the cell is run again. So a killed sweep is
continued by running the same command again. A finished cell's ``partitions/`` (its clients'
copies of the embedded pairs, 0.7 GB per cell at 10,000 users) is deleted unless
``--keep-partitions``: only a resume reads it.

Invalid combinations (a cell whose config does not validate, e.g. distributed noise with
``federation.local_steps`` > 1, or DP with ``federation.mode = "central"``) are skipped with the
reason, logged and listed in ``results.json``. A bad grid value (``epsilon = [-1]``, an unknown
model, a value a config key refuses) is a :class:`ConfigError` naming it before anything runs.

Outputs (rewritten after every sweep, also when every cell was already finished):

* ``results.csv`` / ``results.json``: one row per cell (= per seed): :data:`RESULT_COLUMNS`.
  Accuracies are shares of held-out pairs ranked correctly (ties 1/2); ``mi_bits`` is the plug-in
  mutual information in bits between inferred latent cell and user type; ``gap_closed`` is
  (acc_model − acc_BTL) / (acc_oracle − acc_BTL) on unseen users, against the BTL and oracle
  cells of the same data set, users, pairs per user, axes, seed *and* privacy setting (ε, unit,
  noise), empty when one is missing or when the oracle does not beat BTL; ``gain_kept`` is the
  model's gain over BTL at this ε divided by its gain at ε = inf (same key otherwise): the
  personalization gain each at equal privacy; ``gain_kept_vs_nonprivate_btl`` is the stricter
  (model at ε − BTL at ε = inf) / (model − BTL, both at ε = inf): what a user gains over the
  non-private baseline, as ``securefvpa run --baseline fedbtl`` reports it.
* ``results_by_group.csv``: one row per cell and group of user types (Polis: conversation), from
  the last evaluation's ``by_group`` section (``rounds.evaluation.group_metrics``): accuracy per
  role, MI and active components within the group, and the group's gap closed.
* ``summary.csv`` / ``summary_by_group.csv``: means over seeds with 95 % confidence intervals:
  **Student t intervals over seeds** (mean ± t_{0.975, n−1} · s / √n, seeds taken as independent
  replicates of the whole pipeline; empty for n = 1; with n = 2 the interval is wide, t = 12.7).
* ``plots/<data set>_accuracy_vs_epsilon.{png,svg}`` (unseen- and seen-user accuracy vs ε, one
  line per model, unit and noise, error bars = those t intervals) and
  ``plots/<data set>_gap_closed_vs_users.{png,svg}`` (vs pairs per user when only that varies).
* ``sweep.log``: what each invocation did with each cell (finished, resumed, skipped, failed).
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from securefvpa.config import (
    ModelKind,
    NoiseMode,
    PrivacyUnit,
    RunConfig,
    config_from_dict,
    config_hash,
    dump_config,
    read_toml,
    set_dotted,
)
from securefvpa.errors import ConfigError, SecureFVPAError
from securefvpa.fsutil import atomic_write_text
from securefvpa.rundir import RunDir

log = logging.getLogger("securefvpa.sweep")

INF = "inf"
GRID_KEYS = ("epsilon", "unit", "noise", "model", "users", "pairs_per_user", "seeds")
SWEEP_KEYS = (*GRID_KEYS, "axes", "datasets")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

RESULT_COLUMNS = (
    "cell_id",
    "dataset",
    "model",
    "epsilon",  # target ε per unit ("inf" = privacy off)
    "epsilon_spent",  # largest ε of any client (privacy report), empty without DP
    "delta",
    "unit",
    "noise",
    "users",  # data.users as configured (0 = all the data allows)
    "users_loaded",  # users the data gave
    "pairs_per_user",
    "seed",
    "rounds",
    "accuracy_seen",
    "accuracy_unseen",
    "accuracy_controversial",
    "pairs_seen",
    "pairs_unseen",
    "mi_bits",
    "active_components",
    "gap_closed",
    "gain_kept",
    "gain_kept_vs_nonprivate_btl",
    "seconds",  # wall seconds of the run() call that finished the cell (data included)
    "seconds_per_round",  # mean wall seconds of rounds 1.. (evaluation included)
    "resumed",
)
GROUP_COLUMNS = (
    "cell_id",
    "dataset",
    "model",
    "epsilon",
    "unit",
    "noise",
    "users",
    "pairs_per_user",
    "seed",
    "group",
    "types",
    "group_users",
    "pairs_seen",
    "pairs_unseen",
    "accuracy_seen",
    "accuracy_unseen",
    "mi_bits",
    "active_components",
    "gap_closed",
)
SUMMARY_METRICS = (
    "accuracy_unseen",
    "accuracy_seen",
    "accuracy_controversial",
    "mi_bits",
    "active_components",
    "gap_closed",
    "gain_kept",
    "gain_kept_vs_nonprivate_btl",
    "epsilon_spent",
    "seconds_per_round",
)
GROUP_SUMMARY_METRICS = ("accuracy_unseen", "accuracy_seen", "mi_bits", "active_components", "gap_closed")


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file: the base run config (raw table) and the grid axes."""

    base: dict[str, Any]
    epsilon: tuple[float, ...]  # math.inf = privacy off
    unit: tuple[str, ...]
    noise: tuple[str, ...]
    model: tuple[str, ...]
    users: tuple[int, ...]
    pairs_per_user: tuple[int, ...]
    seeds: tuple[int, ...]
    axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    datasets: tuple[tuple[str, dict[str, Any]], ...] = ()


@dataclass(frozen=True)
class Cell:
    """One run of the grid (one seed)."""

    cell_id: str
    dataset: str
    model: str
    epsilon: float  # math.inf = privacy off
    unit: str | None  # None when privacy is off
    noise: str | None
    users: int
    pairs_per_user: int
    seed: int
    axes: tuple[tuple[str, Any], ...]
    config: RunConfig

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    def key(self, *, model: str | None = None, epsilon: float | None = None) -> tuple[Any, ...]:
        """Identity without the model (and, given, another ε): what BTL/oracle rows pair on."""
        eps = self.epsilon if epsilon is None else epsilon
        private = math.isfinite(eps)
        return (
            self.dataset,
            self.users,
            self.pairs_per_user,
            self.axes,
            self.seed,
            eps,
            self.unit if private else None,
            self.noise if private else None,
            model or self.model,
        )


@dataclass
class SweepResult:
    """What :func:`run_sweep` leaves: result rows and the files it wrote."""

    out: Path
    rows: list[dict[str, Any]]
    group_rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    failed: list[dict[str, str]]
    files: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Parsing the grid
# ----------------------------------------------------------------------------------------------


def _values(sweep: dict[str, Any], key: str, default: Any) -> list[Any]:
    if key not in sweep:
        return [default]
    value = sweep[key]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"sweep.{key} must be a non-empty array. Found {value!r}.")
    return value


def _epsilon(i: int, v: Any) -> float:
    if isinstance(v, str) and v.lower() == INF:
        return math.inf
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf):
        raise ConfigError(f'sweep.epsilon[{i}] must be a number > 0 or "inf". Found {v!r}.')
    return float(v)


def _literal(key: str, i: int, v: Any, allowed: tuple[str, ...]) -> str:
    if v not in allowed:
        raise ConfigError(f"sweep.{key}[{i}] must be one of {list(allowed)}. Found {v!r}.")
    return str(v)


def _int(key: str, i: int, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"sweep.{key}[{i}] must be an integer in [{lo}, {hi}]. Found {v!r}.")
    return v


def _unique(key: str, values: Sequence[Any]) -> None:
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"sweep.{key} names {v!r} twice")
        seen.add(v)


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``src`` into a copy of ``dst`` (tables merge, other values replace)."""
    out = copy.deepcopy(dst)
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_sweep(raw: dict[str, Any]) -> SweepSpec:
    """A :class:`SweepSpec` from a parsed sweep file (base run config + ``[sweep]``).

    Every grid value is checked on its own (ranges, allowed values; axes and data sets against
    the base config) and a bad one raises :class:`ConfigError` naming ``sweep.<axis>[i]`` and
    the value. The base must validate as a run config too.
    """
    if "sweep" not in raw or not isinstance(raw["sweep"], dict):
        raise ConfigError(
            "a sweep file needs a [sweep] table (the grid: epsilon, unit, noise, model, users, "
            "pairs_per_user, seeds). Found none."
        )
    base = {k: v for k, v in raw.items() if k != "sweep"}
    sweep = raw["sweep"]
    unknown = sorted(set(sweep) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown key sweep.{unknown[0]} (known: {list(SWEEP_KEYS)})")
    cfg = config_from_dict(base)  # the base alone: errors name the run-config key
    p = cfg.privacy
    if "noise_multiplier" in base.get("privacy", {}):
        raise ConfigError(
            "the sweep calibrates sigma from each epsilon; remove privacy.noise_multiplier from "
            f"the base config. Found {p.noise_multiplier!r}."
        )
    if p.ledger:
        raise ConfigError(
            "every sweep cell keeps its privacy ledger in its own run directory; remove "
            f"privacy.ledger from the base config. Found {p.ledger!r}."
        )
    eps = [
        _epsilon(i, v)
        for i, v in enumerate(_values(sweep, "epsilon", p.target_epsilon if p.enabled else INF))
    ]
    units = [_literal("unit", i, v, get_args(PrivacyUnit)) for i, v in enumerate(_values(sweep, "unit", p.unit))]
    noises = [_literal("noise", i, v, get_args(NoiseMode)) for i, v in enumerate(_values(sweep, "noise", p.noise))]
    models = [
        _literal("model", i, v, get_args(ModelKind))
        for i, v in enumerate(_values(sweep, "model", cfg.model.kind))
    ]
    users = [_int("users", i, v, 0, 10**7) for i, v in enumerate(_values(sweep, "users", cfg.data.users))]
    ppu = [
        _int("pairs_per_user", i, v, 4, 4096)
        for i, v in enumerate(_values(sweep, "pairs_per_user", cfg.data.pairs_per_user))
    ]
    seeds = [_int("seeds", i, v, 0, 2**63 - 1) for i, v in enumerate(_values(sweep, "seeds", cfg.seed))]
    for key, vals in (("epsilon", eps), ("unit", units), ("noise", noises), ("model", models),
                      ("users", users), ("pairs_per_user", ppu), ("seeds", seeds)):
        _unique(key, vals)
    axes = _parse_axes(base, sweep.get("axes", {}))
    datasets = _parse_datasets(base, sweep.get("datasets", {}), cfg)
    return SweepSpec(
        base=base,
        epsilon=tuple(eps),
        unit=tuple(units),
        noise=tuple(noises),
        model=tuple(models),
        users=tuple(users),
        pairs_per_user=tuple(ppu),
        seeds=tuple(seeds),
        axes=axes,
        datasets=datasets,
    )


def _parse_axes(base: dict[str, Any], axes: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(axes, dict):
        raise ConfigError(f"sweep.axes must be a table of dotted keys. Found {axes!r}.")
    reserved = {"seed", "model.kind", "data.users", "data.pairs_per_user", "privacy.enabled",
                "privacy.target_epsilon", "privacy.budget_epsilon", "privacy.unit",
                "privacy.noise", "run_id"}
    out = []
    for key, values in axes.items():
        if key in reserved:
            raise ConfigError(
                f'sweep.axes."{key}" is set by the grid itself (epsilon, unit, noise, model, '
                "users, pairs_per_user, seeds); use those keys"
            )
        if not isinstance(values, list) or not values:
            raise ConfigError(f'sweep.axes."{key}" must be a non-empty array. Found {values!r}.')
        for i, v in enumerate(values):
            raw = copy.deepcopy(base)
            try:
                set_dotted(raw, key, v)
                config_from_dict(raw)
            except ConfigError as exc:
                raise ConfigError(f'sweep.axes."{key}"[{i}] = {v!r} is refused: {exc}') from None
        _unique(f'axes."{key}"', [json.dumps(v) for v in values])
        out.append((key, tuple(values)))
    return tuple(out)


def _parse_datasets(
    base: dict[str, Any], datasets: Any, cfg: RunConfig
) -> tuple[tuple[str, dict[str, Any]], ...]:
    if not isinstance(datasets, dict):
        raise ConfigError(f"sweep.datasets must be a table of named tables. Found {datasets!r}.")
    if not datasets:
        return ((cfg.data.source, {}),)
    out = []
    for name, override in datasets.items():
        if not _NAME.match(name):
            raise ConfigError(
                f"sweep.datasets: a data set name is letters, digits, '_', '.', '-' (at most 64). "
                f"Found {name!r}."
            )
        if not isinstance(override, dict):
            raise ConfigError(f"sweep.datasets.{name} must be a table. Found {override!r}.")
        try:
            config_from_dict(_merge(base, override))
        except ConfigError as exc:
            raise ConfigError(f"sweep.datasets.{name} is refused: {exc}") from None
        out.append((name, override))
    return tuple(out)


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read a sweep file (:func:`securefvpa.config.read_toml`), apply ``overrides`` (dotted keys,
    ``sweep.*`` included) and :func:`parse_sweep` it."""
    raw = read_toml(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return parse_sweep(raw)


def _eps_label(eps: float) -> str:
    return INF if not math.isfinite(eps) else f"{eps:g}"


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", str(value)).strip("-") or "x"


def cell_id(
    dataset: str, model: str, eps: float, unit: str | None, noise: str | None, users: int,
    ppu: int, axes: Sequence[tuple[str, Any]], seed: int,
) -> str:
    """The deterministic, readable id (and directory name) of a cell."""
    privacy = f"eps{_eps_label(eps)}" + (f"-{unit}-{noise}" if math.isfinite(eps) else "")
    extra = "".join(f"-{_slug(k)}={_slug(v)}" for k, v in axes)
    return f"{dataset}-{model}-{privacy}-u{users}-p{ppu}{extra}-s{seed}"


def plan_cells(spec: SweepSpec) -> tuple[list[Cell], list[dict[str, str]]]:
    """Every valid cell of the grid in a fixed order, and the skipped combinations with the
    reason. Raises ConfigError when no cell is valid (the first reason is named)."""
    cells: list[Cell] = []
    skipped: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    axis_keys = [k for k, _ in spec.axes]
    for (dataset, override), users, ppu, axis_values, seed, eps, unit, noise, model in itertools.product(
        spec.datasets,
        spec.users,
        spec.pairs_per_user,
        itertools.product(*(v for _, v in spec.axes)),
        spec.seeds,
        spec.epsilon,
        spec.unit,
        spec.noise,
        spec.model,
    ):
        private = math.isfinite(eps)
        axes = tuple(zip(axis_keys, axis_values))
        cid = cell_id(dataset, model, eps, unit if private else None, noise if private else None,
                      users, ppu, axes, seed)
        if cid in seen:  # eps = inf: one cell whatever unit and noise say
            continue
        raw = _merge(spec.base, override)
        run_id = spec.base.get("run_id") or "sweep"
        for k, v in (("seed", seed), ("run_id", f"{run_id}-{cid}"), ("model.kind", model),
                     ("data.users", users), ("data.pairs_per_user", ppu), *axes):
            set_dotted(raw, k, v)
        if private:
            for k, v in (("privacy.enabled", True), ("privacy.target_epsilon", eps),
                         ("privacy.budget_epsilon", eps), ("privacy.unit", unit),
                         ("privacy.noise", noise)):
                set_dotted(raw, k, v)
            if noise == "distributed":
                set_dotted(raw, "secagg.enabled", True)
        else:
            set_dotted(raw, "privacy.enabled", False)
        try:
            cfg = config_from_dict(raw)
            if cfg.privacy.enabled and cfg.federation.mode == "central":
                raise ConfigError(
                    "DP-SGD runs on clients: federation.mode 'central' has no private training"
                )
        except ConfigError as exc:
            seen[cid] = "skipped"
            skipped.append({"cell_id": cid, "reason": str(exc)})
            log.warning("sweep: skipping %s: %s", cid, exc)
            continue
        seen[cid] = "cell"
        cells.append(
            Cell(cid, dataset, model, eps, unit if private else None, noise if private else None,
                 users, ppu, seed, axes, cfg)
        )
    if not cells:
        raise ConfigError(
            f"no cell of the sweep grid is a valid run; the first, {skipped[0]['cell_id']}, "
            f"fails with: {skipped[0]['reason']}"
        )
    return cells, skipped


# ----------------------------------------------------------------------------------------------
# Running the cells
# ----------------------------------------------------------------------------------------------

CELL_RECORD = "sweep_cell.json"


def cell_state(cell: Cell, root: Path) -> str:
    """``"done"`` | ``"resume"`` | ``"fresh"`` | ``"stale"`` (another config's directory)."""
    rd = RunDir(root)
    if not root.exists():
        return "fresh"
    if not rd.config.is_file():
        return "fresh" if not any(root.iterdir()) else "stale"
    if rd.config.read_text(encoding="utf-8") != dump_config(cell.config):
        return "stale"
    if rd.metrics.is_file():
        return "done"
    if cell.config.federation.mode != "central" and rd.manifest.is_file():
        return "resume"
    return "fresh"


def _set_aside(root: Path, stale_dir: Path) -> Path:
    stale_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while (stale_dir / f"{root.name}.{n}").exists():
        n += 1
    dest = stale_dir / f"{root.name}.{n}"
    root.rename(dest)
    return dest


def run_cell(
    cell: Cell, out: Path, *, keep_partitions: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Finish one cell (run, resume, or nothing when it is done); return (metrics, record).

    Once the cell has finished, its ``partitions/`` folder (each client's copy of its users'
    embedded pairs, ~15 MB per 200 users: 0.7 GB per cell at 10,000 users) is deleted unless
    ``keep_partitions``: only a resume needs it, and a finished cell is never resumed."""
    from securefvpa.run import evaluated_metrics, run

    root = out / "cells" / cell.cell_id
    state = cell_state(cell, root)
    record_path = root / CELL_RECORD
    want = config_hash(cell.config)
    if state == "done":
        log.info("sweep: %s already finished (config %s); not rerun", cell.cell_id, want[:12])
        metrics = evaluated_metrics(
            root, json.loads(RunDir(root).metrics.read_text(encoding="utf-8"))
        )
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        return metrics, record | {"state": "done"}
    if state == "stale":
        dest = _set_aside(root, out / "stale")
        log.warning("sweep: %s holds another config's run; moved to %s", cell.cell_id, dest)
    elif state == "fresh" and root.exists():
        # Interrupted before its data was prepared: only the config (and perhaps partition
        # files) exist, no ledger (the ledger starts after the manifest), so nothing is lost.
        shutil.rmtree(root)
        log.info("sweep: %s was interrupted before its data was prepared; restarting", cell.cell_id)
    resume = state == "resume"
    if resume:
        log.info("sweep: %s was interrupted; resuming it (run --resume)", cell.cell_id)
    t0 = time.perf_counter()
    metrics = evaluated_metrics(root, run(cell.config, root, resume=resume).metrics)
    record = {
        "cell_id": cell.cell_id,
        "config_hash": want,
        "seconds": time.perf_counter() - t0,
        "resumed": resume,
    }
    atomic_write_text(record_path, json.dumps(record, indent=2))
    log.info("sweep: %s finished in %.1f s", cell.cell_id, record["seconds"])
    if not keep_partitions:
        shutil.rmtree(RunDir(root).partitions, ignore_errors=True)
    return metrics, record | {"state": "resumed" if resume else "ran"}


def run_sweep(
    config: str | Path,
    out: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    on_cell: Callable[[Cell, dict[str, Any]], None] | None = None,
    keep_partitions: bool = False,
) -> SweepResult:
    """Run (or continue) the sweep of ``config`` into ``out``; write the tables and plots.
    ``keep_partitions``: keep each finished cell's ``partitions/`` (see :func:`run_cell`).

    ``on_cell(cell, record)`` is called after each cell (progress hooks). A cell that fails
    with a :class:`SecureFVPAError` (bad input found at run time) is listed in ``failed`` and
    the sweep goes on; any other exception stops the sweep (rerun to continue).
    """
    spec = load_sweep(config, overrides)
    cells, skipped = plan_cells(spec)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file, not a directory")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "sweep.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)  # sweep.log records every cell's fate
    try:
        log.info("sweep: %d cells (%d skipped) from %s into %s", len(cells), len(skipped), config, out)
        for s in skipped:
            log.info("sweep: skipped %s: %s", s["cell_id"], s["reason"])
        finished: list[tuple[Cell, dict[str, Any], dict[str, Any]]] = []
        failed: list[dict[str, str]] = []
        for cell in _progress(cells):
            try:
                metrics, record = run_cell(cell, out, keep_partitions=keep_partitions)
            except SecureFVPAError as exc:
                log.error("sweep: %s failed: %s", cell.cell_id, exc)
                failed.append({"cell_id": cell.cell_id, "error": f"{type(exc).__name__}: {exc}"})
                continue
            finished.append((cell, metrics, record))
            if on_cell is not None:
                on_cell(cell, record)
        result = write_results(out, finished, skipped=skipped, failed=failed)
        log.info("sweep: %d cells finished, %d failed, %d skipped; %s", len(finished),
                 len(failed), len(skipped), result.files.get("results_csv"))
        return result
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()


def _progress(cells: list[Cell]) -> Iterable[Cell]:
    """tqdm over the cells (on a terminal), naming the current one; log lines otherwise."""
    from tqdm import tqdm

    bar = tqdm(cells, desc="sweep", unit="cell", disable=None, dynamic_ncols=True)
    for i, cell in enumerate(bar, 1):
        bar.set_postfix_str(cell.cell_id, refresh=True)
        log.info("sweep: cell %d/%d %s", i, len(cells), cell.cell_id)
        yield cell


# ----------------------------------------------------------------------------------------------
# Results: rows, gap closed, summaries, files
# ----------------------------------------------------------------------------------------------


def _last_eval(metrics: dict[str, Any]) -> dict[str, Any]:
    return next((r["eval"] for r in reversed(metrics.get("rounds", [])) if r.get("eval")), {})


def cell_groups(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The last evaluation's ``by_group`` section, or the one :func:`group_metrics` derives from
    its ``by_type`` counts and the run's type names (``data.type_names``); ``{}`` without
    groups (no ``/`` in the type names, or a central run)."""
    from securefvpa.rounds.evaluation import group_metrics

    ev = _last_eval(metrics)
    if "by_group" in ev:
        return dict(ev["by_group"])
    names = metrics.get("data", {}).get("type_names")
    if "by_type" not in ev or not names:
        return {}
    return group_metrics(ev["by_type"], names, kind=str(metrics.get("model", "")))


def cell_row(cell: Cell, metrics: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """One results row (:data:`RESULT_COLUMNS`, plus one column per extra axis)."""
    acc = metrics.get("accuracy", {})
    latent = metrics.get("latent", {})
    pairs = metrics.get("pairs") or _last_eval(metrics).get("pairs", {})
    rounds = [r for r in metrics.get("rounds", []) if r.get("round", 0) >= 1]
    spent = delta = None
    report = metrics.get("privacy_report")
    if report and Path(report["json"]).is_file():
        rep = json.loads(Path(report["json"]).read_text(encoding="utf-8"))
        spent = rep.get("summary", {}).get("epsilon_max")
        delta = rep.get("accounting", {}).get("delta")
    row: dict[str, Any] = {
        "cell_id": cell.cell_id,
        "dataset": cell.dataset,
        "model": cell.model,
        "epsilon": _eps_label(cell.epsilon),
        "epsilon_spent": spent,
        "delta": delta,
        "unit": cell.unit,
        "noise": cell.noise,
        "users": cell.users,
        "users_loaded": metrics.get("data", {}).get("users"),
        "pairs_per_user": cell.pairs_per_user,
        "seed": cell.seed,
        "rounds": len(rounds) if rounds else None,
        "accuracy_seen": acc.get("seen_users"),
        "accuracy_unseen": acc.get("unseen_users"),
        "accuracy_controversial": acc.get("controversial"),
        "pairs_seen": pairs.get("seen_users"),
        "pairs_unseen": pairs.get("unseen_users"),
        "mi_bits": latent.get("mutual_information_bits"),
        "active_components": latent.get("active_components"),
        "gap_closed": None,
        "gain_kept": None,
        "gain_kept_vs_nonprivate_btl": None,
        "seconds": record.get("seconds"),
        "seconds_per_round": sum(r.get("wall_seconds", 0.0) for r in rounds) / len(rounds)
        if rounds
        else None,
        "resumed": bool(record.get("resumed", False)),
    }
    for k, v in cell.axes:
        row[k] = v
    return row


def gap_closed(model: float | None, btl: float | None, oracle: float | None) -> float | None:
    """(model − BTL) / (oracle − BTL); None when a value is missing or oracle <= BTL."""
    if model is None or btl is None or oracle is None or oracle - btl <= 0:
        return None
    return (model - btl) / (oracle - btl)


def _fill_gaps(cells: list[Cell], rows: list[dict[str, Any]]) -> None:
    by_key = {c.key(): r for c, r in zip(cells, rows)}
    for c, r in zip(cells, rows):
        btl = by_key.get(c.key(model="btl"), {}).get("accuracy_unseen")
        oracle = by_key.get(c.key(model="oracle"), {}).get("accuracy_unseen")
        r["gap_closed"] = gap_closed(r["accuracy_unseen"], btl, oracle)
        if c.private and c.model != "btl":
            off = by_key.get(c.key(epsilon=math.inf))
            off_btl = by_key.get(c.key(model="btl", epsilon=math.inf))
            if btl is not None and off and off_btl and r["accuracy_unseen"] is not None:
                gain_off = off["accuracy_unseen"] - off_btl["accuracy_unseen"]
                if gain_off > 0:
                    r["gain_kept"] = (r["accuracy_unseen"] - btl) / gain_off
                    r["gain_kept_vs_nonprivate_btl"] = (
                        r["accuracy_unseen"] - off_btl["accuracy_unseen"]
                    ) / gain_off


def _group_rows(
    cells: list[Cell], metrics: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    per_cell: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for c, m in zip(cells, metrics):
        per_cell[c.key()] = cell_groups(m)
    for c in cells:
        groups = per_cell[c.key()]
        btl = per_cell.get(c.key(model="btl"), {})
        oracle = per_cell.get(c.key(model="oracle"), {})
        for name, g in groups.items():
            acc_u = g["accuracy"].get("unseen_users")
            out.append({
                "cell_id": c.cell_id,
                "dataset": c.dataset,
                "model": c.model,
                "epsilon": _eps_label(c.epsilon),
                "unit": c.unit,
                "noise": c.noise,
                "users": c.users,
                "pairs_per_user": c.pairs_per_user,
                "seed": c.seed,
                "group": name,
                "types": g["types"],
                "group_users": g["users"],
                "pairs_seen": g["pairs"].get("seen_users"),
                "pairs_unseen": g["pairs"].get("unseen_users"),
                "accuracy_seen": g["accuracy"].get("seen_users"),
                "accuracy_unseen": acc_u,
                "mi_bits": g["mutual_information_bits"],
                "active_components": g["active_components"],
                "gap_closed": gap_closed(
                    acc_u,
                    btl.get(name, {}).get("accuracy", {}).get("unseen_users"),
                    oracle.get(name, {}).get("accuracy", {}).get("unseen_users"),
                ),
                **dict(c.axes),
            })
    return out


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of the Student t interval mean ± t_{(1+level)/2, n−1} · s / √n over
    independent replicates (seeds); low/high are None for n < 2."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def summarize(
    rows: list[dict[str, Any]], group_by: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Mean and 95 % t interval over seeds (:func:`t_interval`) of ``metrics`` per ``group_by``
    key; ``<metric>`` (mean), ``<metric>_ci_low``, ``<metric>_ci_high``, ``<metric>_n``."""
    buckets: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        buckets.setdefault(tuple(r.get(k) for k in group_by), []).append(r)
    out = []
    for key, members in buckets.items():
        s: dict[str, Any] = dict(zip(group_by, key))
        s["seeds"] = len(members)
        for m in metrics:
            vals = [float(r[m]) for r in members if r.get(m) is not None]
            mean, lo, hi = t_interval(vals) if vals else (None, None, None)
            s.update({m: mean, f"{m}_ci_low": lo, f"{m}_ci_high": hi, f"{m}_n": len(vals)})
        out.append(s)
    return out


def _stat_columns(metrics: Sequence[str]) -> list[str]:
    return [f"{m}{s}" for m in metrics for s in ("", "_ci_low", "_ci_high", "_n")]


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    cols = list(columns) + sorted({k for r in rows for k in r} - set(columns))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in cols})
    atomic_write_text(path, buf.getvalue())


def write_results(
    out: Path,
    finished: list[tuple[Cell, dict[str, Any], dict[str, Any]]],
    *,
    skipped: list[dict[str, str]],
    failed: list[dict[str, str]],
) -> SweepResult:
    """Write results.{csv,json}, results_by_group.csv, summary*.csv and the plots."""
    cells = [c for c, _, _ in finished]
    rows = [cell_row(c, m, r) for c, m, r in finished]
    _fill_gaps(cells, rows)
    group_rows = _group_rows(cells, [m for _, m, _ in finished])
    axis_keys = sorted({k for c in cells for k, _ in c.axes})
    keys = ["dataset", "model", "epsilon", "unit", "noise", "users", "pairs_per_user", *axis_keys]
    summary = summarize(rows, keys, SUMMARY_METRICS)
    group_summary = summarize(group_rows, [*keys, "group"], GROUP_SUMMARY_METRICS)
    files = {
        "results_csv": str(out / "results.csv"),
        "results_json": str(out / "results.json"),
        "results_by_group_csv": str(out / "results_by_group.csv"),
        "summary_csv": str(out / "summary.csv"),
        "summary_by_group_csv": str(out / "summary_by_group.csv"),
    }
    _write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    _write_csv(out / "results_by_group.csv", group_rows, GROUP_COLUMNS)
    _write_csv(out / "summary.csv", summary, [*keys, "seeds", *_stat_columns(SUMMARY_METRICS)])
    _write_csv(
        out / "summary_by_group.csv",
        group_summary,
        [*keys, "group", "seeds", *_stat_columns(GROUP_SUMMARY_METRICS)],
    )
    plots = write_plots(out / "plots", summary)
    result = SweepResult(out, rows, group_rows, summary, skipped, failed, files)
    files["plots"] = ", ".join(plots)
    doc = {
        "ci": "95 % Student t interval over seeds: mean ± t_{0.975, n-1} s / sqrt(n)",
        "gap_closed": "(acc - acc_BTL) / (acc_oracle - acc_BTL), unseen users, same data set, "
        "users, pairs per user, axes, seed and privacy setting",
        "gain_kept": "(acc - acc_BTL) at this epsilon / (acc - acc_BTL) at epsilon = inf",
        "gain_kept_vs_nonprivate_btl": "(acc at this epsilon - acc_BTL at epsilon = inf) / "
        "(acc - acc_BTL) at epsilon = inf",
        "rows": rows,
        "rows_by_group": group_rows,
        "summary": summary,
        "summary_by_group": group_summary,
        "skipped": skipped,
        "failed": failed,
        "plots": [str(Path(p).relative_to(out)) for p in plots],  # relative to DIR
    }
    atomic_write_text(out / "results.json", json.dumps(doc, indent=2, allow_nan=False))
    return result


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on the Agg canvas: no pyplot, no global backend state)
# ----------------------------------------------------------------------------------------------


def _figure(ncols: int, nrows: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * ncols + 1.5, 3.2 * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, stem: Path) -> list[str]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, format=ext, metadata=meta, dpi=120)
        paths.append(str(path))
    return paths


def _err(s: dict[str, Any], m: str) -> tuple[float, float]:
    if s.get(f"{m}_ci_low") is None:
        return 0.0, 0.0
    return s[m] - s[f"{m}_ci_low"], s[f"{m}_ci_high"] - s[m]


def _eps_sort(label: str) -> float:
    return math.inf if label == INF else float(label)


def write_plots(folder: Path, summary: list[dict[str, Any]]) -> list[str]:
    """Per data set: accuracy vs ε and gap closed vs users (or pairs per user), PNG + SVG.

    Error bars are the 95 % t intervals over seeds of :func:`summarize`; ε = inf (privacy off)
    is drawn at the right end, the same point on every unit/noise line of a model."""
    paths: list[str] = []
    for dataset in sorted({s["dataset"] for s in summary}):
        rows = [s for s in summary if s["dataset"] == dataset]
        paths += _plot_accuracy(folder / f"{dataset}_accuracy_vs_epsilon", dataset, rows)
        paths += _plot_gap(folder / f"{dataset}_gap_closed_vs_users", dataset, rows)
    return paths


def _plot_accuracy(stem: Path, dataset: str, rows: list[dict[str, Any]]) -> list[str]:
    labels = sorted({s["epsilon"] for s in rows}, key=_eps_sort)
    xpos = {e: i for i, e in enumerate(labels)}
    panels = sorted({(s["users"], s["pairs_per_user"]) for s in rows})
    metrics = [("accuracy_unseen", "unseen users"), ("accuracy_seen", "seen users")]
    fig = _figure(len(panels), len(metrics))
    axes = fig.subplots(len(metrics), len(panels), squeeze=False)
    lines = sorted({(s["model"], s["unit"] or "", s["noise"] or "") for s in rows if s["unit"]})
    models_off = sorted({s["model"] for s in rows})
    if not lines:  # only non-private cells: one line per model
        lines = [(m, "", "") for m in models_off]
    for col, (users, ppu) in enumerate(panels):
        for row, (m, title) in enumerate(metrics):
            ax = axes[row][col]
            for j, (model, unit, noise) in enumerate(lines):
                pts = [
                    s for s in rows
                    if s["model"] == model and (s["users"], s["pairs_per_user"]) == (users, ppu)
                    and s[m] is not None
                    and ((s["unit"] or "", s["noise"] or "") == (unit, noise) or s["epsilon"] == INF)
                ]
                pts.sort(key=lambda s: _eps_sort(s["epsilon"]))
                if not pts:
                    continue
                shift = (j - (len(lines) - 1) / 2) * 0.04
                xs = [xpos[s["epsilon"]] + shift for s in pts]
                err = list(zip(*(_err(s, m) for s in pts)))
                label = model + (f" ({unit}, {noise})" if unit else "")
                ax.errorbar(xs, [s[m] for s in pts], yerr=err, marker="o", capsize=3, label=label)
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")  # chance on a pair
            ax.set_ylim(0.0, 1.0)  # a t interval of n = 2 seeds may reach past [0, 1]
            ax.set_xticks(range(len(labels)), [("∞ (off)" if e == INF else e) for e in labels])
            ax.set_xlabel("target ε per unit")
            ax.set_ylabel(f"accuracy, {title}")
            ax.set_title(f"{dataset}: {users or 'all'} users, {ppu} pairs/user", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("accuracy vs ε (error bars: 95 % t interval over seeds)", fontsize=10)
    return _save(fig, stem)


def _plot_gap(stem: Path, dataset: str, rows: list[dict[str, Any]]) -> list[str]:
    pts_all = [s for s in rows if s["gap_closed"] is not None and s["model"] not in ("btl", "oracle")]
    if not pts_all:
        log.info("sweep: %s: no gap-closed plot (needs btl and oracle cells)", dataset)
        return []
    users = {s["users"] for s in rows}
    ppus = {s["pairs_per_user"] for s in rows}
    x_key, x_label = ("users", "users (data.users)")
    if len(users) == 1 and len(ppus) > 1:
        x_key, x_label = ("pairs_per_user", "pairs per user")
    fig = _figure(1, 1)
    ax = fig.subplots()
    series = sorted({(s["model"], s["epsilon"], s["unit"] or "", s["noise"] or "") for s in pts_all},
                    key=lambda t: (t[0], _eps_sort(t[1]), t[2], t[3]))
    for model, eps, unit, noise in series:
        pts = sorted(
            (s for s in pts_all if (s["model"], s["epsilon"], s["unit"] or "", s["noise"] or "")
             == (model, eps, unit, noise)),
            key=lambda s: s[x_key],
        )
        err = list(zip(*(_err(s, "gap_closed") for s in pts)))
        label = f"{model}, ε {'∞' if eps == INF else eps}" + (f" ({unit}, {noise})" if unit else "")
        ax.errorbar([s[x_key] for s in pts], [s["gap_closed"] for s in pts], yerr=err,
                    marker="o", capsize=3, label=label)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(x_label)
    ax.set_ylabel("BTL → oracle gap closed (unseen users)")
    ax.set_title(f"{dataset}: gap closed (error bars: 95 % t interval over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, stem)
