"""securefvpa: federated, personalized preference learning with DP-SGD and secure aggregation."""

from securefvpa.errors import SecureFVPAError

__all__ = ["SecureFVPAError", "__version__"]
__version__ = "0.1.0"
