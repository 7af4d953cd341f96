"""``securefvpa run CONFIG --out RUN_DIR``: one entry point for central and federated runs.

Writes ``RUN_DIR/config.resolved.toml`` first (a ``--resume`` must find the same config there),
loads and embeds the data once (cached), then trains:
- ``federation.mode = "central"``: the centralised harness (``train.central``);
- ``"simulation"``: Flower's simulation engine in this process (``fl.launch``);
- ``"deployment"``: ``flwr run`` against an existing SuperLink.
Ends with ``RUN_DIR/metrics.json`` (and, with DP on, ``privacy_report.json`` + ``report.html``)
and returns a typed :class:`RunResult`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefvpa.config import RunConfig, config_from_dict, dump_config, load_config
from securefvpa.errors import ConfigError
from securefvpa.fsutil import atomic_write_text
from securefvpa.rundir import RunDir

log = logging.getLogger("securefvpa.run")

APP_DIR = Path(__file__).resolve().parent.parent  # holds pyproject.toml with [tool.flwr.app]


@dataclass(frozen=True)
class RunResult:
    """What a run leaves behind: its metrics and where its files are.

    With DP on, the server never receives evaluation counts (they stay on the nodes);
    ``node_evaluation`` is then what the operator of every node of a simulation aggregated from
    the nodes' own logs (``node_evaluation.json``; None in deployment mode).
    """

    run_dir: Path
    metrics: dict[str, Any]
    node_evaluation: dict[str, Any] | None = None

    @property
    def accuracy(self) -> dict[str, float | None]:
        """Accuracy as the server measured it, or (DP) as the nodes' own logs give it."""
        server = dict(self.metrics.get("accuracy", {}))
        if any(v is not None for v in server.values()) or self.node_evaluation is None:
            return server
        return dict(self.node_evaluation["final"].get("accuracy", {}))

    @property
    def epsilon(self) -> float | None:
        """The largest per-client epsilon of a DP run (its report's ``summary.epsilon_max``)."""
        path = self.report_path
        if path is None or not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))["summary"]["epsilon_max"]

    @property
    def metrics_path(self) -> Path:
        return RunDir(self.run_dir).metrics

    @property
    def params_path(self) -> Path:
        return RunDir(self.run_dir).final_params

    @property
    def report_path(self) -> Path | None:
        """``privacy_report.json`` of a DP run (None when DP was off)."""
        report = self.metrics.get("privacy_report")
        return Path(report["json"]) if report else None

    @property
    def ledger_path(self) -> Path | None:
        """The privacy ledger of a DP run (None when DP was off)."""
        plan = RunDir(self.run_dir).plan
        if not self.metrics.get("privacy") or not plan.is_file():
            return None
        from securefvpa.privacy.plan import ledger_path

        return ledger_path(load_config(RunDir(self.run_dir).config), RunDir(self.run_dir))

    def parameters(self) -> dict[str, np.ndarray]:
        """The final global parameters (``final_params.npz``; central runs have none)."""
        with np.load(self.params_path, allow_pickle=False) as z:
            return {k: z[k].copy() for k in z.files}


def resolve_config(
    config: str | Path | RunConfig | dict[str, Any], overrides: dict[str, Any] | None = None
) -> RunConfig:
    """A validated :class:`RunConfig` from a TOML path, a parsed mapping or a RunConfig."""
    if isinstance(config, RunConfig):
        if overrides:
            from securefvpa.config import config_to_dict, set_dotted

            raw = config_to_dict(config)
            for k, v in overrides.items():
                set_dotted(raw, k, v)
            return config_from_dict(raw)
        config.validate()
        return config
    if isinstance(config, dict):
        from securefvpa.config import set_dotted

        raw = json.loads(json.dumps(config))  # a deep copy; the caller's dict is not changed
        for k, v in (overrides or {}).items():
            set_dotted(raw, k, v)
        return config_from_dict(raw)
    if isinstance(config, str | Path):
        return load_config(config, overrides)
    raise ConfigError(
        f"config must be a TOML path, a dict or a RunConfig. Found {type(config).__name__}."
    )


def prepare_run_dir(cfg: RunConfig, out: Path, *, resume: bool) -> RunDir:
    """Check ``out`` for this run (new, or a resume of the same config) and write the config."""
    rd = RunDir(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file, not a directory")
    text = dump_config(cfg)
    if resume:
        if not rd.config.is_file():
            raise ConfigError(f"--resume: {str(rd.config)!r} not found; nothing to resume")
        if rd.config.read_text(encoding="utf-8") != text:
            raise ConfigError(
                f"--resume: the config differs from {str(rd.config)!r}; resume with the same config"
            )
        return rd
    if rd.config.exists() and (rd.metrics.exists() or rd.checkpoint.exists()):
        raise ConfigError(
            f"run directory {str(out)!r} already holds a run; use --resume or a new --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(rd.config, text)
    except OSError as exc:
        raise ConfigError(f"--out {str(out)!r} cannot be written: {exc}") from None
    return rd


def environment() -> dict[str, Any]:
    """What a seeded run's numbers can depend on besides the config (recorded in metrics)."""
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
    }


def run(
    config: str | Path | RunConfig | dict[str, Any],
    out: str | Path,
    *,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
) -> RunResult:
    """Run ``config`` into the run directory ``out``; see the module docstring."""
    cfg = resolve_config(config, overrides)
    rd = prepare_run_dir(cfg, Path(out), resume=resume)
    from securefvpa.data.load import load_dataset

    def load() -> tuple[Any, Any, dict[str, Any]]:
        t0 = time.perf_counter()
        pairs, split, info = load_dataset(cfg)
        log.info(
            "data: %d pairs, %d seen and %d unseen users (%.1f s)",
            pairs.n_pairs,
            len(split.seen),
            len(split.unseen),
            time.perf_counter() - t0,
        )
        return pairs, split, _jsonable(info | {"environment": environment()})

    if cfg.federation.mode == "central":
        if cfg.privacy.enabled:
            raise ConfigError(
                "privacy.enabled = true needs federation.mode 'simulation' or 'deployment' "
                "(DP-SGD runs on clients). Found 'central'."
            )
        from securefvpa.train.central import run_central

        pairs, split, info = load()
        metrics = run_central(cfg, pairs, split)
        metrics["data"] = info
        atomic_write_text(rd.metrics, json.dumps(metrics, indent=2, default=str))
        return RunResult(rd.root, metrics)
    from securefvpa.fl import launch
    from securefvpa.rounds.prepare import prepare_or_resume

    prepare_or_resume(cfg, rd, resume=resume, load=load)
    if cfg.federation.mode == "inprocess":
        metrics = run_inprocess(cfg, rd, resume=resume)
    elif cfg.federation.mode == "simulation":
        metrics = launch.run_simulation_mode(cfg, rd, resume=resume)
    else:  # the ServerApp runs under the SuperLink and leaves its metrics in the run directory
        launch.run_deployment_mode(cfg, rd, resume=resume, app_dir=APP_DIR)
        return RunResult(rd.root, json.loads(rd.metrics.read_text(encoding="utf-8")))
    node_eval = collect_node_evaluation(cfg, rd, metrics) if cfg.privacy.enabled else None
    return RunResult(rd.root, metrics, node_eval)


def evaluated_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with the evaluation filled in from ``node_evaluation.json`` when the server
    has none (DP simulations: the nodes kept their counts; their operator aggregated them).
    The result names its ``evaluation_source``; ``metrics.json`` itself is never rewritten."""
    path = RunDir(Path(run_dir)).node_evaluation
    server_has = any(v is not None for v in metrics.get("accuracy", {}).values())
    if server_has or not path.is_file():
        return metrics | {"evaluation_source": "server"}
    node = json.loads(path.read_text(encoding="utf-8"))
    final = node["final"]
    rounds = [
        r | {"eval": node["rounds"][str(r["round"])]} if str(r["round"]) in node["rounds"] else r
        for r in metrics.get("rounds", [])
    ]
    return metrics | {
        "accuracy": final.get("accuracy", {}),
        "latent": final.get("latent", {}),
        "pairs": final.get("pairs", {}),
        "by_group": final.get("by_group"),
        "rounds": rounds,
        "evaluation_source": node["source"],
    }


NODE_EVAL_SOURCE = (
    "the nodes' own evaluation logs, aggregated by the simulation's operator (who runs every "
    "node); with DP on the server never received these counts"
)


def collect_node_evaluation(
    cfg: RunConfig, rd: RunDir, metrics: dict[str, Any]
) -> dict[str, Any] | None:
    """DP simulations: aggregate the nodes' own evaluation logs into ``node_evaluation.json``
    and re-derive the privacy report with that utility, labelled with its source."""
    from securefvpa.privacy.plan import load_plan, write_privacy_report
    from securefvpa.rounds.evaluation import collect_node_evaluations
    from securefvpa.rundir import read_manifest

    manifest = read_manifest(rd)
    rounds = collect_node_evaluations(
        [rd.eval_log(pid) for pid in range(manifest.clients)],
        cfg,
        type_names=manifest.type_names,
    )
    if not rounds:
        return None
    last = max(rounds)
    out = {"source": NODE_EVAL_SOURCE, "final_round": last, "final": rounds[last]}
    out["rounds"] = {str(r): m for r, m in rounds.items()}
    atomic_write_text(rd.node_evaluation, json.dumps(out, indent=2, default=str))
    plan = load_plan(cfg, rd)
    if plan is not None:
        utility = dict(rounds[last]["accuracy"]) | {"source": NODE_EVAL_SOURCE}
        write_privacy_report(
            cfg, rd, plan, metrics=metrics | {"accuracy": utility, "pairs": rounds[last]["pairs"]}
        )
    return out


def run_inprocess(cfg: RunConfig, rd: RunDir, *, resume: bool) -> dict[str, Any]:
    """The rounds of a prepared run directory without Flower: the production round engine over
    the in-process transport (``rounds.local``), the same checkpoints, journal, ledger and
    report as a Flower run. Returns the metrics written to ``metrics.json``.

    Torch runs single-threaded here, as each Flower simulation client does (``OMP_NUM_THREADS``
    = 1): the clients' small steps gain nothing from a second thread, and on a busy machine two
    threads per tiny matrix product are many times slower; it also makes seeded results
    independent of the machine's thread count (recorded in ``data.environment``)."""
    import torch

    from securefvpa.config import config_hash
    from securefvpa.rounds.engine import RunDirStore, run_rounds
    from securefvpa.rounds.finish import finish_run, initial_parameters
    from securefvpa.rounds.prepare import load_local
    from securefvpa.rounds.progress import make_progress
    from securefvpa.rundir import read_manifest

    manifest = read_manifest(rd)
    transport = load_local(cfg, rd, manifest).transport()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store = RunDirStore(rd.checkpoint, rd.journal, config_hash=config_hash(cfg), resume=resume)
    try:
        result = run_rounds(
            transport,
            cfg,
            initial_params=initial_parameters(cfg, manifest),
            store=store,
            progress=make_progress(cfg),
        )
    finally:
        torch.set_num_threads(threads)
    return finish_run(cfg, rd, result, manifest)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))
