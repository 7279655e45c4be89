"""The row bookkeeping of hierarchical_allgather for layouts a one-host launch
cannot produce (round-robin and scrambled node membership).

The three gathers are replayed with torch.cat, ordered the way Horovod
orders results (by rank within each process set); the plan must cut the
final gather back into global rank order.
"""
import pytest
import torch

from hvdkit.collectives import _HierarchicalGather
from hvdkit.topology import topology_for

LAYOUTS = [
    ((0, 1), (2, 3)),
    ((0, 2), (1, 3)),
    ((0, 3), (1, 2)),
    ((0, 4, 5), (1, 2, 3)),
    ((0, 5), (1, 4), (2, 3)),
]


def replay(nodes, inputs):
    """What every rank's final gather holds, computed from all ranks' inputs."""
    size = sum(len(n) for n in nodes)
    views = [topology_for(r, nodes) for r in range(size)]
    plans = [_HierarchicalGather(None, t, inputs[t.rank], None) for t in views]
    rows = torch.tensor([len(x) for x in inputs])
    for plan in plans:
        plan._rows = rows.tolist()
    blocks = {k: torch.cat([inputs[r] for r in members]) for k, members in enumerate(nodes)}
    carried = {}
    for t, plan in zip(views, plans):
        lo, hi = plan._piece_bounds(t.node, t.local_rank)
        carried[t.rank] = blocks[t.node][lo:hi]
    crossed = {t.rank: torch.cat([carried[r] for r in sorted(n[t.local_rank] for n in nodes)]) for t in views}
    spread = {t.rank: torch.cat([crossed[r] for r in sorted(nodes[t.node])]) for t in views}
    return [plan.assemble(spread[t.rank]) for t, plan in zip(views, plans)]


@pytest.mark.parametrize("nodes", LAYOUTS)
@pytest.mark.parametrize("rows_of", [lambda r: 2, lambda r: r % 3, lambda r: 0 if r else 5])
def test_assembly_restores_global_rank_order(nodes, rows_of):
    size = sum(len(n) for n in nodes)
    inputs = [torch.arange(rows_of(r) * 2, dtype=torch.int64).reshape(-1, 2) + 1000 * r for r in range(size)]
    expected = torch.cat(inputs)
    for result in replay(nodes, inputs):
        assert torch.equal(result, expected)
