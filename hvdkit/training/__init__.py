"""The pieces of ``hvdkit train``: configuration, data, models, the training
loops and metric logging. Framework-neutral modules import no framework; the
``torch_*`` modules are the PyTorch path."""
