"""securefvpa: federated, personalized preference learning with DP-SGD and secure aggregation.

The Python front door (README "Python API")::

    import securefvpa

    cfg = securefvpa.load_config("examples/demo.toml", overrides={"federation.rounds": 3})
    result = securefvpa.run(cfg, "runs/demo")          # -> RunResult
    print(result.accuracy, result.report_path)
    scores = securefvpa.score("runs/demo", "my_pairs.jsonl", prompt="Human: ...",
                              responses=["...", "..."])  # z stays local
    securefvpa.epsilon(noise_multiplier=1.1, sample_rate=0.01, steps=10_000, delta=1e-5,
                       relation="replace_one")

Importing ``securefvpa`` is cheap: torch, flwr, opacus, transformers and ray are imported only
by the functions that need them. Every error raised on purpose is a :class:`SecureFVPAError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# `securefvpa.run` is a submodule too. Python binds a submodule to its package's attribute when
# the submodule is first imported, which would replace the function of the same name: import it
# now (it imports neither torch nor flwr), then bind the function, so that `securefvpa.run`
# stays the front door and `from securefvpa.run import ...` keeps working. (The audit function
# is `run_audit` because `securefvpa.audit` is the audit package, which type checkers resolve
# to the package whatever this module binds.)
import securefvpa.run  # noqa: F401
from securefvpa._version import __version__
from securefvpa.api import (
    AuditResult,
    calibrate,
    epsilon,
    generate_users,
    load_config,
    load_model,
    read_records,
    run,
    run_audit,
    score,
    write_records,
)
from securefvpa.config import RunConfig
from securefvpa.errors import (
    AccountingError,
    AuditFailure,
    ConfigError,
    DataError,
    FederationError,
    LedgerError,
    ModelError,
    PrivacyBudgetExhausted,
    PrivacyError,
    ProtocolAbort,
    RunDirError,
    SecureFVPAError,
)
from securefvpa.run import RunResult

if TYPE_CHECKING:
    from securefvpa.data.records import PreferenceRecord
    from securefvpa.train.inference import ResponseScores, TrainedModel, UserLatent

__all__ = [
    "AccountingError",
    "AuditFailure",
    "AuditResult",
    "ConfigError",
    "DataError",
    "FederationError",
    "LedgerError",
    "ModelError",
    "PreferenceRecord",
    "PrivacyBudgetExhausted",
    "PrivacyError",
    "ProtocolAbort",
    "ResponseScores",
    "RunConfig",
    "RunDirError",
    "RunResult",
    "SecureFVPAError",
    "TrainedModel",
    "UserLatent",
    "__version__",
    "calibrate",
    "epsilon",
    "generate_users",
    "load_config",
    "load_model",
    "read_records",
    "run",
    "run_audit",
    "score",
    "write_records",
]


def __getattr__(name: str) -> Any:
    """The types whose modules import torch, loaded on first use."""
    if name == "PreferenceRecord":
        from securefvpa.data.records import PreferenceRecord

        return PreferenceRecord
    if name in ("ResponseScores", "TrainedModel", "UserLatent"):
        from securefvpa.train import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'securefvpa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
