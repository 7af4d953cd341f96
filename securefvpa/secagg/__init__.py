"""securefvpa.secagg."""
