"""Shared set-up for tests that run inside every rank of a real launcher.

``scripts/run_parallel_tests.sh`` starts ``python -m pytest tests/parallel/...``
under ``mpirun`` or ``horovodrun``; each rank runs the same tests and asserts on
its own results. Non-zero ranks print only failures, so the log stays readable.
"""
import importlib
import os

import pytest


def launcher_rank():
    """This process's rank as the launcher set it (before Horovod is initialised)."""
    for name in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


# The number of nodes this launch must see (scripts/run_parallel_tests.sh sets it on every launch).
ENV_EXPECT_NODES = "HVDKIT_TEST_EXPECT_NODES"


def pytest_configure(config):
    if launcher_rank() != 0:
        # Rank 0 reports skips and durations: every rank runs the same tests (a test skipped on some
        # ranks only would leave the others waiting in a collective), so the others report failures only.
        config.option.verbose = -1
        config.option.reportchars = "fE"
        config.option.durations = None


def pytest_collection_finish(session):
    """With HVDKIT_TEST_EXPECT_NODES=N, fail the session before any test unless the ranks see N nodes.

    The hierarchical tests skip where there is one node; in the launch that emulates two
    (HVDKIT_RANKS_PER_NODE=2 at -np 4) a layout that did not take effect would otherwise turn them
    all into skips and the launch would still pass.
    """
    expected = os.environ.get(ENV_EXPECT_NODES, "").strip()
    if not expected or session.config.option.collectonly:
        return
    try:
        expected = int(expected)
    except ValueError:
        raise pytest.UsageError(f"{ENV_EXPECT_NODES}={expected!r} must be a number of nodes") from None
    folders = sorted({item.path.parent.name for item in session.items} & set(_FRAMEWORK_OF_FOLDER))
    if not folders:
        return
    from hvdkit import topology

    topo = topology.init(importlib.import_module(_FRAMEWORK_OF_FOLDER[folders[0]]))
    if topo.num_nodes != expected:
        pytest.exit(f"rank {topo.rank}: this launch expects {expected} node(s) ({ENV_EXPECT_NODES}={expected}) but "
                    f"the ranks see {topo.num_nodes}: nodes {[list(n) for n in topo.nodes]}, "
                    f"{topology.ENV_RANKS_PER_NODE}={os.environ.get(topology.ENV_RANKS_PER_NODE)!r}; "
                    f"the tests that need several nodes would skip", returncode=pytest.ExitCode.TESTS_FAILED)


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


def pytest_collection_modifyitems(items):
    """Tests marked ``joins`` last: after Horovod's join() the ranks name unnamed ops differently; and
    after them those marked ``uneven_ops``, after which an unnamed collective hung at -np 4 on 2 nodes."""
    items.sort(key=lambda item: (item.get_closest_marker("joins") is not None
                                 or item.get_closest_marker("uneven_ops") is not None,
                                 item.get_closest_marker("uneven_ops") is not None))
