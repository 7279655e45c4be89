"""TensorBoard event files for ``hvdkit train``, written by the job's own framework.

A torch job writes through torch's ``SummaryWriter``, a TensorFlow job through
``tf.summary``, so neither job imports the other framework. Both write one
scalar per numeric field of each epoch's record, at the epoch as step.
"""
import sys
import types

__all__ = ["FRAMEWORKS", "open_writer"]


class TorchEvents:
    """Scalars through ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, log_dir, summary_writer):
        self._writer = summary_writer(log_dir=log_dir)

    def scalars(self, values, step):
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self):
        self._writer.close()


class TFEvents:
    """Scalars through ``tf.summary`` (TensorFlow's own writer)."""

    def __init__(self, log_dir):
        import tensorflow as tf

        self._tf = tf
        self._writer = tf.summary.create_file_writer(log_dir)

    def scalars(self, values, step):
        with self._writer.as_default():
            for key, value in values.items():
                self._tf.summary.scalar(key, value, step=step)
        self._writer.flush()

    def close(self):
        self._writer.close()


def _torch_events(log_dir):
    if "tensorflow" not in sys.modules:
        # TensorBoard's writer imports all of TensorFlow (seconds, and its banners on every rank)
        # unless its documented no-TensorFlow switch, the module ``tensorboard.compat.notf``, exists.
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the tensorboard package is optional for torch jobs
        return None
    return TorchEvents(log_dir, SummaryWriter)


OPENERS = {"torch": _torch_events, "tensorflow": TFEvents}
FRAMEWORKS = tuple(OPENERS)


def open_writer(framework, log_dir):
    """The event writer of ``framework`` in ``log_dir``; None where torch has no tensorboard package."""
    if framework not in OPENERS:
        raise ValueError(f"framework must be one of {', '.join(map(repr, FRAMEWORKS))}, got {framework!r}")
    return OPENERS[framework](log_dir)
