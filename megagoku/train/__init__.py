"""Training: the loop, EMA, metrics and checkpoints."""
