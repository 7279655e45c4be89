"""What ``model.compile`` must change when its optimizer is hvdkit's DistributedOptimizer.

Installed once (by the first ``DistributedOptimizer``) around Keras 3's
``Trainer.compile``; models compiled with any other optimizer are untouched.
For ours it:

* turns ``jit_compile`` off, with a warning: Keras 3 XLA-compiles the train
  step on GPUs (``jit_compile="auto"``), and the gradient exchange (Horovod
  through ``tf.py_function``) cannot be compiled by XLA;
* drops ``experimental_run_tf_function``, a Keras 2 argument that Horovod's
  Keras examples pass and Keras 3 rejects;
* refuses ``LossScaleOptimizer(DistributedOptimizer(...))``, given or made by
  Keras for a ``mixed_float16`` model: that checks each rank's own gradients
  for overflow before averaging, so ranks could disagree and hang.
"""
import functools
import inspect
import warnings

import keras

from hvdkit.tensorflow.keras.optimizer import is_distributed, wraps_distributed

__all__ = ["disable_jit", "install"]


_ORDER = ("that order checks each rank's own gradients for overflow before they are averaged, so ranks could "
          "disagree and hang. Wrap in the other order: DistributedOptimizer(keras.optimizers.LossScaleOptimizer("
          "optimizer))")


def _check_loss_scaling(model, arguments):
    optimizer = arguments["optimizer"]
    if wraps_distributed(optimizer):
        raise ValueError(f"model.compile got a LossScaleOptimizer around hvdkit's DistributedOptimizer: {_ORDER}.")
    policy = getattr(model, "dtype_policy", None)
    if (arguments.get("auto_scale_loss", True) and getattr(policy, "name", None) == "mixed_float16"
            and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
        raise ValueError(f"model.compile would wrap hvdkit's DistributedOptimizer in a LossScaleOptimizer (the "
                         f"model's dtype policy is mixed_float16): {_ORDER}, or pass auto_scale_loss=False.")


def _wrap(compile_fn):
    signature = inspect.signature(compile_fn)

    @functools.wraps(compile_fn)
    def compile(self, *args, **kwargs):
        ours = dict(kwargs)
        ours.pop("experimental_run_tf_function", None)
        try:
            arguments = signature.bind_partial(self, *args, **ours).arguments
        except TypeError:
            arguments = {}
        optimizer = arguments.get("optimizer")
        if not (is_distributed(optimizer) or wraps_distributed(optimizer)):
            return compile_fn(self, *args, **kwargs)
        _check_loss_scaling(self, arguments)
        result = compile_fn(self, *args, **ours)
        disable_jit(self, stacklevel=3)
        return result

    compile._hvdkit_compile_hook = True
    return compile


def disable_jit(model, stacklevel=2):
    """Turn XLA off for ``model`` (with a warning when it was on)."""
    if model.jit_compile:
        warnings.warn("hvdkit: jit_compile turned off for this model: the DistributedOptimizer's gradient "
                      "exchange runs Horovod through tf.py_function, which XLA cannot compile",
                      UserWarning, stacklevel=stacklevel + 1)
        model.jit_compile = False


def install():
    """Wrap ``Trainer.compile`` (idempotent)."""
    from keras.src.trainers.trainer import Trainer

    if not getattr(Trainer.compile, "_hvdkit_compile_hook", False):
        Trainer.compile = _wrap(Trainer.compile)
