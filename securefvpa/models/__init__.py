"""securefvpa.models."""
