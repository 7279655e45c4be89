"""Checks the environment variables hvdkit reads or sets defaults for, before any rank starts.

Their consumers are lenient in ways that hide mistakes until a job is running:
Horovod parses its settings with ``strtol``/``strtod``, so
``HOROVOD_CYCLE_TIME=fast`` silently becomes 0 (a background thread that
never sleeps), ``HOROVOD_FUSION_THRESHOLD=16M`` becomes 16 bytes,
``HOROVOD_STALL_CHECK_DISABLE=true`` leaves the check on, and a stall
shutdown shorter than the stall check is ignored with a log line; a bad
``HVDKIT_RANKS_PER_NODE`` fails on every rank only after the launch.
``validate(environ)`` raises ``UsageError`` naming the first bad variable,
its value and what is valid, so ``hvdkit train`` and ``hvdkit run`` exit
with code 2 instead.

``RULES`` maps each checked name to a parser; a module that starts reading a
new variable adds it there (tests/unit/test_env_check.py checks that every
default in ``hvdkit.runtime.horovod_env`` has a rule).
"""
import math
import os

from hvdkit.runtime import horovod_env
from hvdkit.errors import UsageError

__all__ = ["RULES", "validate", "value"]

RANKS_PER_NODE = "HVDKIT_RANKS_PER_NODE"
ABORT_ON_EXCEPTION = "HVDKIT_ABORT_ON_EXCEPTION"  # read by hvdkit.runtime.abort
PS_MEMBER_TIMEOUT = "HVDKIT_PS_MEMBER_TIMEOUT"  # read by hvdkit.training.ps_loop
TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"  # hvdkit.runtime.tf_log sets a default
CPU_ISAS = ("avx512", "avx2", "scalar")  # csrc/cpu/isa: the kernel tables a build may contain


def _number(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError
    return value


def _rule(parse, valid, accept=lambda value: True):
    """A parser for one variable: ``parse(text)`` (ValueError when malformed) and ``accept(value)``;
    ``valid`` says in words what is accepted."""
    def check(text):
        try:
            value = parse(text.strip())
        except ValueError:
            raise ValueError(valid) from None
        if not accept(value):
            raise ValueError(valid)
        return value

    check.valid = valid
    return check


def _choice(*choices, exact_case=False, valid=None):
    """One of ``choices``; in any letter case unless ``exact_case`` (the reader compares bytes).
    ``valid`` says what they mean, where "one of ..." would not."""
    def pick(text):
        key = text if exact_case else text.lower()
        if key not in choices:
            raise ValueError
        return key

    return _rule(pick, valid or "one of " + ", ".join(choices))


_MCA_BOOL = ("0", "1", "true", "false", "yes", "no", "enabled", "disabled")  # Open MPI's boolean spellings

RULES = {
    # Horovod (horovod/common/utils/env_parser.cc, operations.cc)
    "HOROVOD_CYCLE_TIME": _rule(_number, "a number of milliseconds >= 0", lambda v: v >= 0),
    "HOROVOD_FUSION_THRESHOLD": _rule(int, "an integer number of bytes >= 0 (0: no fusion)", lambda v: v >= 0),
    "HOROVOD_STALL_CHECK_TIME_SECONDS": _rule(int, "an integer number of seconds >= 1", lambda v: v >= 1),
    "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": _rule(int, "an integer number of seconds >= 0 (0: never shut down)",
                                                 lambda v: v >= 0),
    "HOROVOD_STALL_CHECK_DISABLE": _choice("0", "1"),
    "HOROVOD_CONTROLLER": _choice("mpi", "gloo"),
    "HOROVOD_CPU_OPERATIONS": _choice("mpi", "gloo", "ccl"),
    # Open MPI and PyTorch settings hvdkit sets defaults for (hvdkit.runtime.horovod_env)
    "OMPI_MCA_mpi_yield_when_idle": _choice(*_MCA_BOOL),
    "THP_MEM_ALLOC_ENABLE": _choice("0", "1"),
    # hvdkit's own
    RANKS_PER_NODE: _rule(int, "a positive integer that divides the number of ranks", lambda v: v >= 1),
    "HVDKIT_CPU_ISA": _choice(*CPU_ISAS, exact_case=True),
    PS_MEMBER_TIMEOUT: _rule(_number, "a number of seconds > 0 (how long the parameter servers wait for a silent "
                                      "worker before they drop it)", lambda v: v > 0),
    ABORT_ON_EXCEPTION: _choice("1", "0", valid="1 (the default: an uncaught exception on a rank aborts the job) "
                                                "or 0 (leave it to Python and Horovod)"),
    # TensorFlow (tsl/platform/default/logging.cc reads it with istringstream: a typo silently means 0)
    TF_LOG_LEVEL: _rule(int, "an integer >= 0 (0: all of TensorFlow's C++ logs, 1: no INFO, 2: no WARNING, "
                             "3: no ERROR)", lambda v: v >= 0),
}


def _bad(name, text, valid, source=""):
    return UsageError(f"{name}={text!r}{source}: expected {valid}")


def value(name, environ=None):
    """The parsed value of ``name`` (one of ``RULES``) in ``environ`` (default ``os.environ``), or
    None when it is unset; a UsageError (a ValueError) naming a bad value and what is valid."""
    environ = os.environ if environ is None else environ
    text = environ.get(name)
    if text is None:
        return None
    try:
        return RULES[name](text)
    except ValueError as err:
        raise _bad(name, text, err) from None


def validate(environ=None, world_size=None):
    """Raise UsageError for the first variable of ``RULES`` with a bad value in ``environ`` (default
    ``os.environ``), then for contradictions between them (unset ones take hvdkit's defaults from
    ``horovod_env``). ``world_size``, when known, must be divisible by ``HVDKIT_RANKS_PER_NODE``.
    An empty ``HVDKIT_RANKS_PER_NODE`` means unset, as in ``hvdkit.topology``."""
    environ = os.environ if environ is None else environ
    values = {}
    for name in RULES:
        text = environ.get(name)
        if text is None or (name == RANKS_PER_NODE and not text.strip()):
            continue
        values[name] = value(name, environ)
    k = values.get(RANKS_PER_NODE)
    if k is not None and world_size is not None and world_size % k:
        divisors = ", ".join(str(d) for d in range(1, world_size + 1) if world_size % d == 0)
        raise UsageError(f"{RANKS_PER_NODE}={environ[RANKS_PER_NODE]!r} does not divide the {world_size} ranks; "
                         f"expected one of {divisors}")
    _check_stall_times(environ, values)


# Horovod's own values where hvdkit sets none (horovod/common/stall_inspector.h)
_HOROVOD_DEFAULTS = {"HOROVOD_STALL_CHECK_TIME_SECONDS": "60", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "0"}


def _effective(name, environ, values):
    """(value, how to show it) of a Horovod setting: the user's, else hvdkit's default."""
    if name in values:
        return values[name], f"{name}={environ[name].strip()}"
    default = horovod_env.DEFAULTS.get(name)
    if default is None:
        default = _HOROVOD_DEFAULTS[name]
        return RULES[name](default), f"{name}={default} (Horovod's default)"
    return RULES[name](default), f"{name}={default} (hvdkit's default)"


def _check_stall_times(environ, values):
    """Horovod ignores a stall shutdown shorter than the stall check (it logs a warning and never
    shuts down), so the job that was meant to end would hang instead."""
    if values.get("HOROVOD_STALL_CHECK_DISABLE") == "1":
        return
    shutdown, shown_shutdown = _effective("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", environ, values)
    check, shown_check = _effective("HOROVOD_STALL_CHECK_TIME_SECONDS", environ, values)
    if shutdown and shutdown < check:
        raise UsageError(f"{shown_shutdown} is less than {shown_check}: Horovod would never shut a stalled job "
                         f"down; expected 0 (never) or a value >= {check}")
