"""hvdkit.topology under a real launcher: every rank checks its own view and
that all ranks agree on one layout."""
import os
import types

import pytest
import torch

from hvdkit import topology

pytestmark = pytest.mark.timeout(60)


def gather_rows(hvd, values):
    return hvd.allgather(torch.tensor([values], dtype=torch.int64)).tolist()


def test_fields_match_horovod_and_the_launcher(hvd, topo, expected_controller):
    assert (topo.rank, topo.size) == (hvd.rank(), hvd.size())
    assert 0 <= topo.local_rank < topo.local_size and 0 <= topo.node < topo.num_nodes
    assert topo.launcher == expected_controller
    assert sorted(r for n in topo.nodes for r in n) == list(range(topo.size))
    assert topo.nodes[topo.node][topo.local_rank] == topo.rank
    assert len(topo.nodes) == topo.num_nodes and len(topo.nodes[topo.node]) == topo.local_size


def test_layout_is_emulated_or_the_real_host(topo):
    k = os.environ.get(topology.ENV_RANKS_PER_NODE)
    if k:
        k = int(k)
        assert topo.emulated
        assert (topo.node, topo.local_rank, topo.local_size, topo.num_nodes) == (
            topo.rank // k, topo.rank % k, k, topo.size // k)
    else:
        # Every launch in the test matrix runs on one host.
        assert not topo.emulated
        assert (topo.node, topo.num_nodes, topo.local_rank, topo.local_size) == (0, 1, topo.rank, topo.size)
        launcher_local = os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", os.environ.get("HOROVOD_LOCAL_RANK"))
        if launcher_local is not None:
            assert topo.local_rank == int(launcher_local)


def test_every_rank_reports_the_same_layout(hvd, topo):
    rows = gather_rows(hvd, [topo.rank, topo.node, topo.local_rank, topo.local_size, topo.num_nodes])
    expected = [[r, k, n.index(r), len(n), len(topo.nodes)] for k, n in enumerate(topo.nodes) for r in n]
    assert sorted(rows) == sorted(expected)


def test_process_sets_hold_the_node_and_the_local_rank_peers(hvd, topo):
    mine = torch.tensor([topo.rank + 1], dtype=torch.int64)
    if topo.intra_node_set is None:
        assert topo.local_size == 1
    else:
        assert topo.intra_node_set.ranks == list(topo.nodes[topo.node])
        total = hvd.allreduce(mine, op=hvd.Sum, process_set=topo.intra_node_set)
        assert total.item() == sum(r + 1 for r in topo.nodes[topo.node])
    if topo.cross_node_set is None:
        assert topo.num_nodes == 1
    else:
        peers = [n[topo.local_rank] for n in topo.nodes]
        assert topo.cross_node_set.ranks == peers
        total = hvd.allreduce(mine, op=hvd.Sum, process_set=topo.cross_node_set)
        assert total.item() == sum(r + 1 for r in peers)
    assert topo.hierarchical == (topo.num_nodes > 1 and topo.local_size > 1)


def test_init_is_idempotent_and_current_returns_it(hvd, topo):
    assert topology.init(hvd) is topo
    assert topology.current() is topo
    with pytest.raises(RuntimeError, match=r"already initialised with horovod.torch; one Horovod framework"):
        topology.init(types.SimpleNamespace(__name__="horovod.tensorflow"))
