"""What a landscape is of: models, data and batches, losses and metrics, checkpoints, and the training stage."""
