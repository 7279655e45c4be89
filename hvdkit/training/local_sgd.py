"""``--average-every H [--average-warmup W]`` as the one averager both loops drive: the torch
optimizer's ``local_sgd=`` and the Keras loop's ``tf_callbacks.ModelAveraging``."""
from hvdkit import averaging

__all__ = ["averager"]


def averager(config, hvd, topology):
    """A ``PeriodicAverager`` that averages the whole model every H steps after W synchronous ones,
    or None without ``--average-every``."""
    if not config.average_every:
        return None
    return averaging.PeriodicAverager(period=config.average_every, warmup_steps=config.average_warmup, hvd=hvd,
                                      topology=topology)
