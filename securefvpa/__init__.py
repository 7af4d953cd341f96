"""securefvpa: federated, personalized preference learning with DP-SGD and secure aggregation."""

from securefvpa._version import __version__
from securefvpa.errors import SecureFVPAError

__all__ = ["SecureFVPAError", "__version__"]
