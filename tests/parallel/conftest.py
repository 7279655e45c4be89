"""Shared set-up for tests that run inside every rank of a real launcher.

``scripts/run_parallel_tests.sh`` starts ``python -m pytest tests/parallel/...``
under ``mpirun`` or ``horovodrun``; each rank runs the same tests and asserts on
its own results. Non-zero ranks print only failures, so the log stays readable.
"""
import os

import pytest


def launcher_rank():
    """This process's rank as the launcher set it (before Horovod is initialised)."""
    for name in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def pytest_configure(config):
    if launcher_rank() != 0:
        config.option.verbose = -1
        config.option.reportchars = "fE"


@pytest.fixture(scope="session")
def rank():
    return launcher_rank()


@pytest.fixture(scope="session")
def expected_controller():
    """'mpi' or 'gloo': which Horovod controller this launch must be using."""
    return os.environ.get("HVDKIT_TEST_LAUNCHER", "mpi")


def rank_tensor_values(rank, shape, dtype, seed=1234):
    """The numbers rank ``rank`` contributes in a test: any process can compute
    every rank's values, so each rank can check a collective's result alone."""
    import numpy as np

    rng = np.random.default_rng([seed, rank])
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-1000, 1000, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


_FRAMEWORK_OF_FOLDER = {"torch": "horovod.torch", "tensorflow": "horovod.tensorflow"}


@pytest.fixture
def hvd(request):
    """The Horovod module of the test's folder (torch/ or tensorflow/),
    initialised through ``hvdkit.topology.init`` so hvdkit's process sets exist."""
    import importlib

    from hvdkit import topology

    folder = request.path.parent.name
    if folder not in _FRAMEWORK_OF_FOLDER:
        raise RuntimeError(f"the hvd fixture serves tests under tests/parallel/torch or tensorflow, not {folder}/")
    module = importlib.import_module(_FRAMEWORK_OF_FOLDER[folder])
    topology.init(module)
    return module


@pytest.fixture
def topo(hvd):
    """This rank's ``hvdkit.topology.Topology`` (Horovod initialised)."""
    from hvdkit import topology

    return topology.current()
