"""``broadcast_variables``: every rank starts from the root rank's values, for Keras 3 variables too.

Horovod's ``broadcast_variables`` keys variables by ``v.ref()``, which Keras 3
variables lack. This one broadcasts the ``tf.Variable`` behind each Keras
variable and assigns the result. Float variables of one dtype travel packed
in one buffer (one Horovod op per dtype instead of one per variable); the
ranks first check that they hold the same variables, so a model built
differently on one rank is a clear error on every rank rather than a
mismatched-shape failure inside Horovod.
"""
import itertools

import horovod.tensorflow as hvd
import tensorflow as tf

from hvdkit.exchange import consistency
from hvdkit.kernels import tf_ops as kernels
from hvdkit.tensorflow.variables import label, tensor_infos, unwrap

__all__ = ["broadcast_variables"]

_calls = itertools.count()  # numbers calls (the same on every rank): op names stay unique inside one graph


@tf.autograph.experimental.do_not_convert  # plain Python at trace time; AutoGraph would take seconds
def broadcast_variables(variables, root_rank=0, process_set=None, inplace=False):
    """Assign ``root_rank``'s values to ``variables`` (tf.Variables or Keras 3 variables) on every rank.

    Eagerly it returns None; inside a tf.function, the op grouping the assignments. ``inplace`` is
    accepted for Horovod's signature (the variables are always assigned).
    """
    process_set = hvd.global_process_set if process_set is None else process_set
    variables = list(variables)
    targets = []
    for i, v in enumerate(variables):
        target = unwrap(v)
        if target is None:
            raise TypeError(f"broadcast_variables: variables[{i}] must be a tf.Variable or a Keras variable, "
                            f"got {type(v).__name__}")
        targets.append(target)
    size = hvd.size()
    if isinstance(root_rank, bool) or not isinstance(root_rank, int) or not 0 <= root_rank < size:
        raise ValueError(f"root_rank must be a rank in 0..{size - 1}, got {root_rank!r}")
    infos = tensor_infos(variables)
    with tf.init_scope():  # eager even while traced: every rank checks once, before any broadcast
        try:
            consistency.require_same([(i.name, i.shape, i.dtype) for i in infos],
                                     lambda obj: hvd.allgather_object(obj, process_set=process_set),
                                     {"root_rank": root_rank}, where="hvdkit broadcast_variables")
        except ValueError as err:
            legend = ", ".join(f"{info.name} is {label(v)!r}" for info, v in zip(infos, variables))
            raise ValueError(f"{err} (variables on this rank: {legend})") from None
    name = f"hvdkit.bcast{next(_calls)}"
    assigns = []
    for dtype, members in _by_dtype(targets).items():
        values = [targets[i].read_value() for i in members]
        if dtype in kernels.FLOAT_DTYPES:
            wire = tf.float32 if dtype == tf.bfloat16 else dtype  # Horovod moves no bfloat16
            flat = hvd.broadcast(kernels.pack(values, dtype=wire), root_rank, name=f"{name}.{dtype.name}",
                                 process_set=process_set)
            values = kernels.unpack(flat, values)
        else:
            values = [hvd.broadcast(value, root_rank, name=f"{name}.{i}", process_set=process_set)
                      for i, value in zip(members, values)]
        assigns += [targets[i].assign(value) for i, value in zip(members, values)]
    return None if tf.executing_eagerly() else tf.group(assigns)


def _by_dtype(targets):
    """dtype -> positions of the variables of that dtype, in order."""
    groups = {}
    for i, v in enumerate(targets):
        groups.setdefault(v.dtype, []).append(i)
    return groups
