"""The scale model (hvdkit.exchange.scale) counts bytes from the real strategies; the counts are checked
against the closed forms of the algorithms (ring allreduce 2(p-1)/p, allgather (p-1), two-phase about
2x the payload whatever p), and the issue's targets."""
import math

import pytest
import torch

from hvdkit.exchange import cost, scale

NUMEL = 2**20  # 1,024 whole 1-bit blocks: equal chunks at every power-of-two world size up to 1,024


@pytest.fixture(scope="module")
def bucket():
    return torch.randn(NUMEL) * 0.01


def onebit_payload(numel):
    return numel / 8 + 4 * math.ceil(numel / 1024)


@pytest.mark.parametrize("ranks", [2, 4, 64])
def test_dense_ring_moves_what_ring_allreduce_moves(bucket, ranks):
    traffic = scale.traffic("none", "ring", ranks, 8, bucket)
    assert traffic.bytes_per_rank == pytest.approx(2 * 2 * (ranks - 1) / ranks * 4 * NUMEL)


@pytest.mark.parametrize("ranks", [4, 64, 1024])
def test_allgather_grows_with_the_ranks_and_two_phase_does_not(bucket, ranks):
    payload = onebit_payload(NUMEL)
    gathered = scale.traffic("onebit", "allgather", ranks, 8, bucket)
    assert gathered.bytes_per_rank == pytest.approx(2 * (ranks - 1) * payload, rel=1e-3)
    two = scale.traffic("onebit", "two_phase", ranks, 8, bucket)
    # alltoall (p-1)/p of the payload, then an allgather of the p-th each rank sums: both ways.
    assert two.bytes_per_rank == pytest.approx(2 * 2 * (ranks - 1) / ranks * payload, rel=1e-3)


def test_targets_two_phase_stays_flat_and_beats_the_dense_ring(bucket):
    flat = {n: scale.traffic("onebit", "two_phase", n, 8, bucket).bytes_per_rank for n in (4, 1024)}
    int8 = {n: scale.traffic("int8", "two_phase", n, 8, bucket).bytes_per_rank for n in (4, 1024)}
    # 2(p-1)/p: 1.5 payloads at 4 ranks, 2 at 1,024 -- bounded by 4/3 whatever the size.
    assert flat[1024] / flat[4] <= 4 / 3 + 1e-3 and int8[1024] / int8[4] <= 4 / 3 + 1e-3
    dense = scale.traffic("none", "ring", 64, 8, bucket).bytes_per_rank
    assert dense / scale.traffic("onebit", "two_phase", 64, 8, bucket).bytes_per_rank >= 16


def test_hierarchical_sends_between_nodes_a_node_sum_once(bucket):
    ranks, local = 64, 8
    hier = scale.traffic("onebit", "hierarchical", ranks, local, bucket)
    ring = scale.traffic("none", "ring", ranks, local, bucket)
    assert 0 < hier.cross_node_bytes_per_rank < ring.cross_node_bytes_per_rank / 4
    network = cost.Network(latency_s=50e-6, gbit=10)
    no_kernels = [scale.Traffic(t.hops, 0.0) for t in (hier, ring)]
    assert scale.predict(no_kernels[0], local, network) < scale.predict(no_kernels[1], local, network)


def test_routes_that_do_not_apply_are_refused(bucket):
    with pytest.raises(ValueError, match=r"route 'two_phase' does not apply to 'powersgd:4'; choose one of "
                                         r"allreduce, hierarchical"):
        scale.traffic("powersgd:4", "two_phase", 4, 2, bucket)
