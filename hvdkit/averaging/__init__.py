"""Model averaging (local SGD, post-local SGD), framework-neutral, used by both training loops:
:mod:`~hvdkit.averaging.schedule` says when and over which ranks, :mod:`~hvdkit.averaging.parameters`
averages. The torch optimizer (``local_sgd=``) and the Keras loop's callback
(:mod:`hvdkit.training.tf_callbacks`) both drive a :class:`PeriodicAverager`."""
from hvdkit.averaging.parameters import SCOPES, average_exchange, average_parameters, scope_links
from hvdkit.averaging.schedule import PeriodicAverager, parse_schedule, scope_at

__all__ = ["SCOPES", "PeriodicAverager", "average_exchange", "average_parameters", "parse_schedule", "scope_at",
           "scope_links"]
