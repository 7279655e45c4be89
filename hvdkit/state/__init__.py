"""Training state on disk: atomic, checksummed checkpoints for torch and TensorFlow.

:mod:`~hvdkit.state.checkpoint` is the one mechanism and imports no framework;
:mod:`~hvdkit.state.torch_codec` (``torch.save``) and :mod:`~hvdkit.state.tf_codec`
(``tf.train.Checkpoint``) turn each framework's payloads into its files' bytes."""
