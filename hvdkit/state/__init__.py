"""Training state on disk: atomic, checksummed checkpoints for torch and TensorFlow."""
