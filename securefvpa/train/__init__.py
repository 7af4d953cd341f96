"""securefvpa.train."""
