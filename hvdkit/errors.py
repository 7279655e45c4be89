"""Exceptions shared across hvdkit's modules."""


class UsageError(ValueError):
    """A bad command-line or configuration value.

    The command line prints it as one line naming the option and exits with
    code 2, before any rank starts.
    """
