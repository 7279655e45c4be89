"""The pieces of ``hvdkit train``: configuration, data, models, the training
loops and metric logging. Framework-neutral modules (``config``, ``data``,
``metrics``, ``events``, ``resume``) import no framework and serve both loops;
the ``torch_*`` modules are the PyTorch path and the ``tf_*`` modules the
TensorFlow path, which never imports torch."""
