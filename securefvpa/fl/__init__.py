"""securefvpa.fl."""
