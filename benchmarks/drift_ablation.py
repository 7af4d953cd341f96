"""Client-drift ablation: which federated optimiser lets the latent learn the user types.

``python benchmarks/drift_ablation.py [--settings synth-16] [--models fedvpa-gp,vpl] [--seeds 0,1]``
prints a table and writes ``benchmarks/results/drift_ablation.json``.

Each row trains on the same generated users (one single-type user per client, 60 clients per
round) with a different server/client optimiser pair, then evaluates seen and unseen users and
the MI (bits) between the inferred latent cell and the true type. For speed the rounds run
in-process instead of through Flower: the same round engine (``rounds.engine.run_rounds``:
seeded client sampling, weighted mean, ``server_step``), the same client code and metrics, over
``rounds.local.LocalTransport`` — only Flower's messaging is left out. The Flower runs of
the winning recipe are in ``benchmarks/federated.py --fedadam``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import federated as fb  # noqa: E402

from securefvpa.config import load_config  # noqa: E402
from securefvpa.data.load import load_dataset  # noqa: E402
from securefvpa.rounds.engine import run_rounds  # noqa: E402
from securefvpa.rounds.finish import initial_parameters  # noqa: E402
from securefvpa.rounds.prepare import prepare_local  # noqa: E402
from securefvpa.rundir import RunDir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "drift_ablation.json"

# FedAdam with torch's Adam epsilon (server_tau 1e-8, the config default)
FEDADAM = {
    "server_optimizer": "fedadam",
    "server_lr": 0.01,
    "server_tau": 1e-8,
    "client_optimizer": "sgd",
    "client_lr": 1.0,
}

# (label, rounds, local steps, options for benchmarks/federated.config)
RECIPES: list[tuple[str, int, int, dict[str, Any]]] = [
    ("FedAvg, 10 local Adam steps", 8, 10, {}),
    ("FedAvg, 1 local Adam step", 150, 1, {}),
    ("FedAdam, 1 local SGD step", 150, 1, FEDADAM),
    ("FedAdam, 2 local SGD steps", 150, 2, FEDADAM),
    ("FedAdam, 5 local SGD steps", 60, 5, FEDADAM),
    ("FedAdam tau=1e-3 (Flower's), 2 local SGD steps", 150, 2, FEDADAM | {"server_tau": 1e-3}),
]


def run_recipe(
    setting: str, model: str, rounds: int, steps: int, opt: dict[str, Any], seed: int = 0
) -> dict[str, Any]:
    s = fb.SETTINGS[setting]
    fraction = min(1.0, 60 / (0.8 * s["users"]))
    with tempfile.TemporaryDirectory(prefix="sfvpa-drift-") as tmp:
        work = Path(tmp)
        path = work / "cfg.toml"
        path.write_text(
            tomli_w.dumps(fb.config(s, model, seed, rounds, fraction, steps, "drift", opt))
        )
        cfg = load_config(path)
        pairs, split, _ = load_dataset(cfg)
        local = prepare_local(cfg, pairs, split, RunDir(work / "run"), data={})
        transport = local.transport(evaluate=False)
        t0 = time.perf_counter()
        result = run_rounds(transport, cfg, initial_params=initial_parameters(cfg, local.manifest))
        seconds = time.perf_counter() - t0
        transport.do_evaluate = True
        m = transport.evaluate(rounds, result.params)
    return {
        "seen": m["accuracy"]["seen_users"],
        "unseen": m["accuracy"]["unseen_users"],
        "mi_bits": m["latent"]["mutual_information_bits"],
        "active_components": m["latent"]["active_components"],
        "mean_kl": m["latent"]["mean_kl"],
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="synth-16")
    ap.add_argument("--models", default="fedvpa-gp,vpl")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    for setting in args.settings.split(","):
        for model in args.models.split(","):
            for seed in (int(x) for x in args.seeds.split(",")):
                for label, rounds, steps, opt in RECIPES:
                    row = run_recipe(setting, model, rounds, steps, opt, seed) | {
                        "rounds": rounds,
                        "local_steps": steps,
                        "options": opt,
                    }
                    out.setdefault(setting, {}).setdefault(model, {}).setdefault(
                        f"seed {seed}", {}
                    )[label] = row
                    print(
                        f"{setting:<9} {model:<10} seed={seed} {label:<48} "
                        f"seen={row['seen']:.3f} unseen={row['unseen']:.3f} "
                        f"MI={row['mi_bits']:.2f} bits KL={row['mean_kl']:.2f} "
                        f"({row['seconds']:.0f} s)",
                        flush=True,
                    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
