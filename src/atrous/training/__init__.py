"""Training: the loop (poly LR, resumable exactly, one or many processes), its configuration,
losses and the one-batch pre-flight check."""
