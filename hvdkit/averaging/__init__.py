"""Model averaging (local SGD, post-local SGD), framework-neutral, used by both training loops:
:mod:`~hvdkit.averaging.schedule` says when and over which ranks, :mod:`~hvdkit.averaging.parameters`
averages."""
from hvdkit.averaging.parameters import SCOPES, average_parameters
from hvdkit.averaging.schedule import PeriodicAverager, parse_schedule, scope_at

__all__ = ["SCOPES", "PeriodicAverager", "average_parameters", "parse_schedule", "scope_at"]
