"""securefvpa.data."""
