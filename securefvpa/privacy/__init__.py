"""securefvpa.privacy."""
