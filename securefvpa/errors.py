"""One exception tree for securefvpa.

Every error the package raises on purpose derives from :class:`SecureFVPAError`, so callers
(the CLI, the Flower apps, an auditor's script) can catch one type. Messages repeat the bad
value (``"privacy.delta must be in (0, 1). Found 1.5."``) except where detail would help an
attacker (secure-aggregation aborts say which check failed, never secret material).
"""

from __future__ import annotations


class SecureFVPAError(Exception):
    """Root of every error securefvpa raises on purpose."""


class ConfigError(SecureFVPAError, ValueError):
    """A run configuration, CLI argument or option is invalid; the message names key and value."""


class DataError(SecureFVPAError, ValueError):
    """A data file or record is invalid; the message names the file, line and field."""


class ModelError(SecureFVPAError):
    """A model or checkpoint cannot be built or loaded (shape or schema mismatch)."""


class PrivacyError(SecureFVPAError):
    """Base for privacy accounting and ledger errors."""


class PrivacyBudgetExhausted(PrivacyError):
    """Training would take a client past its privacy budget; nothing was trained or recorded."""


class LedgerError(PrivacyError):
    """The privacy ledger is unreadable or fails verification (edited, deleted, reordered)."""


class AccountingError(PrivacyError, ValueError):
    """A privacy event or accountant parameter is invalid (e.g. sigma <= 0, delta >= 1)."""


class ProtocolAbort(SecureFVPAError):
    """A secure-aggregation party aborted the round; nothing secret was revealed."""


class RunDirError(SecureFVPAError):
    """A run directory, manifest or node config is missing, damaged or from another run."""


class FederationError(SecureFVPAError):
    """The federated run cannot proceed (too few clients, a checkpoint that does not match)."""


class AuditFailure(SecureFVPAError):
    """An empirical privacy audit found a lower bound above the claimed epsilon."""
