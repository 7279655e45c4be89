"""The ``hvdkit`` command line: ``run``, ``train``, ``bench`` and ``doctor``."""
