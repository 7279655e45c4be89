"""``load_model``: a saved Keras model, its optimizer wrapped again in hvdkit's DistributedOptimizer.

A DistributedOptimizer saves as the plain optimizer it wraps (same class name
and config), so a model trained with hvdkit loads anywhere; this restores the
distributed training set-up, optimizer state included.
"""
import keras

from hvdkit.tensorflow.keras import compile_hook
from hvdkit.tensorflow.keras.optimizer import DistributedOptimizer

__all__ = ["load_model"]


def load_model(filepath, custom_optimizers=None, custom_objects=None, compression="none", legacy_opts=False,
               **distributed):
    """Load a ``.keras`` model (``keras.models.load_model``) and wrap its optimizer, state kept.

    As ``horovod.tensorflow.keras.load_model``: ``custom_optimizers`` lists optimizer classes the file
    may name, ``compression`` is passed to ``DistributedOptimizer``, like any further keyword
    (``hierarchical``, ``fusion_mb``, ...). ``legacy_opts`` must be False (Keras 3 has no legacy optimizers).
    """
    if legacy_opts:
        raise ValueError("legacy_opts=True: Keras 3 has no legacy optimizers")
    objects = dict(custom_objects or {})
    for cls in custom_optimizers or ():
        objects.setdefault(cls.__name__, cls)
    model = keras.models.load_model(filepath, custom_objects=objects or None)
    if model.optimizer is not None:
        model.optimizer = DistributedOptimizer(model.optimizer, compression=compression, **distributed)
        compile_hook.disable_jit(model)
    return model
