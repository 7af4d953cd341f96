"""The ``[audit]`` table of an audit configuration (parsed here, not in ``securefvpa.config``).

An audit config is a normal run config plus an ``[audit]`` table; :func:`load_audit_config`
strips that table before ``config_from_dict`` so the run config stays exactly what
``securefvpa run`` would accept. Overrides (``securefvpa audit CFG --set audit.canaries=400``)
whose key starts with ``audit.`` go to this table, all others to the run config.

Keys (defaults in brackets):

* ``canaries`` [200]: number m of canary pairs.
* ``seed`` [0]: seed of the canary texts, orientations, membership and users (audit design).
* ``k_grid`` [fractions 0.05, 0.1, 0.25, 0.5 of m per side]: list of ``[k_plus, k_minus]``;
  more than one pair is Bonferroni-corrected (``scores.one_run_audit_grid``).
* ``confidence`` [0.95].
* ``inject`` ["none"]: "none" (configured DP), "no_noise" (train with sigma = 0), "no_clip"
  (train with no clipping, same absolute noise std sigma * clip). The claim stays the epsilon of
  the configured sigma, so a broken run must fail.
* ``score_context`` ["user"]: context of the canary's forward pass: "user" (the holder's real
  train pairs) or "empty".
* ``run_dir`` [""]: a privacy run directory whose ``report.html`` gets a link to the audit.
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from securefvpa.config import RunConfig, config_from_dict, read_toml, set_dotted
from securefvpa.errors import ConfigError

INJECT_MODES = ("none", "no_noise", "no_clip")
SCORE_CONTEXTS = ("user", "empty")
DEFAULT_FRACTIONS = (0.05, 0.1, 0.25, 0.5)


@dataclass(frozen=True)
class AuditSettings:
    canaries: int = 200
    seed: int = 0
    k_grid: tuple[tuple[int, int], ...] = ()
    confidence: float = 0.95
    inject: str = "none"
    score_context: str = "user"
    run_dir: str = ""

    def resolved_k_grid(self) -> tuple[tuple[int, int], ...]:
        if self.k_grid:
            return self.k_grid
        ks = sorted({max(1, int(round(f * self.canaries / 2))) for f in DEFAULT_FRACTIONS})
        return tuple((k, k) for k in ks if 2 * k <= self.canaries)


def _int(key: str, value: object, lo: int, hi: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or cast(int, value) < lo
        or (hi is not None and cast(int, value) > hi)
    ):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ConfigError(f"audit.{key} must be an integer {rng}. Found {value!r}.")
    return int(value)


def parse_audit_table(raw: dict[str, Any]) -> AuditSettings:
    known = {"canaries", "seed", "k_grid", "confidence", "inject", "score_context", "run_dir"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown config key audit.{unknown[0]} (known keys: {sorted(known)})")
    m = _int("canaries", raw.get("canaries", 200), 2, 1_000_000)
    seed = _int("seed", raw.get("seed", 0), 0, 2**63 - 1)
    conf = raw.get("confidence", 0.95)
    if (
        isinstance(conf, bool)
        or not isinstance(conf, numbers.Real)
        or not 0 < cast(float, conf) < 1
    ):
        raise ConfigError(f"audit.confidence must be in (0, 1). Found {conf!r}.")
    inject = raw.get("inject", "none")
    if inject not in INJECT_MODES:
        raise ConfigError(f"audit.inject must be one of {list(INJECT_MODES)}. Found {inject!r}.")
    context = raw.get("score_context", "user")
    if context not in SCORE_CONTEXTS:
        raise ConfigError(
            f"audit.score_context must be one of {list(SCORE_CONTEXTS)}. Found {context!r}."
        )
    run_dir = raw.get("run_dir", "")
    if not isinstance(run_dir, str):
        raise ConfigError(f"audit.run_dir must be a string. Found {run_dir!r}.")
    grid: list[tuple[int, int]] = []
    raw_grid = raw.get("k_grid", [])
    if not isinstance(raw_grid, list):
        raise ConfigError(f"audit.k_grid must be a list of [k_plus, k_minus]. Found {raw_grid!r}.")
    for item in raw_grid:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise ConfigError(f"audit.k_grid entries must be [k_plus, k_minus]. Found {item!r}.")
        kp, km = _int("k_grid k_plus", item[0], 0), _int("k_grid k_minus", item[1], 0)
        if kp + km < 1 or kp + km > m:
            raise ConfigError(
                f"audit.k_grid entry k_plus + k_minus must be in [1, canaries={m}]. Found {item!r}."
            )
        grid.append((kp, km))
    if len(set(grid)) != len(grid):
        raise ConfigError(f"audit.k_grid must not repeat an entry. Found {raw_grid!r}.")
    return AuditSettings(canaries=m, seed=seed, k_grid=tuple(grid), confidence=float(conf),
                         inject=str(inject), score_context=str(context), run_dir=run_dir)


def load_audit_config(
    path: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[RunConfig, AuditSettings]:
    """Read an audit TOML: ``[audit]`` -> :class:`AuditSettings`, the rest -> RunConfig.

    The file is read by :func:`securefvpa.config.read_toml`, so a missing path, a folder, a
    binary or non-UTF-8 file, invalid TOML and a file that sets no key are each a
    :class:`ConfigError` naming the file.
    """
    raw = copy.deepcopy(read_toml(path))
    audit_raw = raw.pop("audit", {})
    if not isinstance(audit_raw, dict):
        raise ConfigError(f"audit must be a table. Found {audit_raw!r}.")
    for dotted, value in (overrides or {}).items():
        if dotted.startswith("audit."):
            audit_raw[dotted.removeprefix("audit.")] = value
        else:
            set_dotted(raw, dotted, value)
    settings = parse_audit_table(audit_raw)
    cfg = config_from_dict(raw)
    if not cfg.privacy.enabled:
        raise ConfigError(
            "privacy.enabled must be true for a privacy audit (there is no claim to test). "
            "Found false."
        )
    return cfg, settings
