"""securefvpa.audit."""
