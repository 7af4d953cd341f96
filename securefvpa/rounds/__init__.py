"""The flwr-free round engine: sample, train (over a transport), aggregate, server step, evaluate."""
