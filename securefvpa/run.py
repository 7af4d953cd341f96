"""``securefvpa run CONFIG --out RUN_DIR``: one entry point for central and federated runs.

Writes ``RUN_DIR/config.resolved.toml`` first (a ``--resume`` must find the same config there),
loads and embeds the data once (cached), then trains:
- ``federation.mode = "central"``: the centralised harness (``train.central``);
- ``"simulation"``: Flower's simulation engine in this process (``fl.driver``);
- ``"deployment"``: ``flwr run`` against an existing SuperLink.
Ends with ``RUN_DIR/metrics.json`` (and, with DP on, ``privacy_report.json`` + ``report.html``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from securefvpa.config import RunConfig, dump_config, load_config
from securefvpa.errors import ConfigError
from securefvpa.fsutil import atomic_write_text

log = logging.getLogger("securefvpa.run")

APP_DIR = Path(__file__).resolve().parent.parent  # holds pyproject.toml with [tool.flwr.app]


def prepare_run_dir(cfg: RunConfig, out: Path, *, resume: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    resolved = out / "config.resolved.toml"
    text = dump_config(cfg)
    if resolved.exists():
        if not resume:
            if (out / "metrics.json").exists() or (out / "server_state.npz").exists():
                raise ConfigError(
                    f"run directory {str(out)!r} already holds a run; use --resume or a new --out"
                )
        elif resolved.read_text() != text:
            raise ConfigError(
                f"--resume: the config differs from {str(resolved)!r}; resume with the same config"
            )
    elif resume:
        raise ConfigError(f"--resume: {str(resolved)!r} not found; nothing to resume")
    atomic_write_text(resolved, text)


def run(
    config_path: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cfg = load_config(config_path, overrides)
    out = Path(out)
    prepare_run_dir(cfg, out, resume=resume)
    from securefvpa.data.load import load_dataset

    t0 = time.perf_counter()
    pairs, split, info = load_dataset(cfg)
    log.info(
        "data: %d pairs, %d seen and %d unseen users (%.1f s)",
        pairs.n_pairs,
        len(split.seen),
        len(split.unseen),
        time.perf_counter() - t0,
    )
    if cfg.federation.mode == "central":
        if cfg.privacy.enabled:
            raise ConfigError(
                "privacy.enabled = true needs federation.mode 'simulation' or 'deployment' "
                "(DP-SGD runs on clients). Found 'central'."
            )
        from securefvpa.train.central import run_central

        metrics = run_central(cfg, pairs, split)
        metrics["data"] = _jsonable(info)
        _write_json(out / "metrics.json", metrics)
        return metrics
    from securefvpa.fl import driver

    if not resume or not (out / driver.MANIFEST).exists():
        driver.prepare_federated_run(cfg, pairs, split, out)
    if cfg.privacy.enabled:
        from securefvpa.dp_plan import start_ledger

        start_ledger(cfg, out)
    if cfg.federation.mode == "simulation":
        driver.run_simulation_mode(cfg, out, resume=resume)
    else:
        driver.run_deployment_mode(cfg, out, resume=resume, app_dir=APP_DIR)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["data"] = _jsonable(info)
    _write_json(out / "metrics.json", metrics)
    if cfg.privacy.enabled and metrics.get("privacy_report"):
        metrics["report_html"] = metrics["privacy_report"]["html"]
    return dict(metrics)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))
