"""compression="auto" on real ranks: every rank takes the same plan, a run trains as the fixed strategy it chose
does, and the step stats split the bytes by link class as counted by hand (inside a node, between nodes)."""
import pytest
import torch

import hvdkit.torch as hvdkit_torch
from hvdkit.compression import registry
from optimizer_support import assert_same_on_every_rank

pytestmark = pytest.mark.timeout(120)

STEPS = 4
LR = 0.05


def make_model():
    """Two weight matrices (compressible: >= 1024 values) and two small biases (always dense)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))


def train(model, optimizer, rank, steps=STEPS):
    for step in range(steps):
        g = torch.Generator().manual_seed(1000 * step + rank)
        x, y = torch.randn(16, 64, generator=g), torch.randn(16, 8, generator=g)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def optimizer(model, compression, hierarchical, fusion_mb=25):
    return hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR), model.named_parameters(),
                                             compression=compression, hierarchical=hierarchical, fusion_mb=fusion_mb)


def needs_ranks(hvd):
    if hvd.size() == 1:
        pytest.skip("a lone rank exchanges nothing, so there is nothing to choose (compression is off at 1 rank)")


def test_every_rank_takes_the_same_plan_and_logs_it(hvd):
    needs_ranks(hvd)
    topo = hvdkit_torch.init()
    model = make_model()
    opt = optimizer(model, "auto,revisit=2", topo.hierarchical)
    train(model, opt, hvd.rank(), 15)  # at most 5 plans, each 1 step unmeasured and 2 measured: settled by then
    auto = opt.auto_compression
    mine = [[str(c) for c, _ in plan] for plan in auto.plans]
    assert hvd.allgather_object((mine, auto.trial, auto.settled)) == [(mine, auto.trial, auto.settled)] * hvd.size()
    assert auto.settled and len(auto.plan) == len(opt.buckets)
    assert any("chosen" in e and "predicted exchange" in e for e in auto.events)
    assert any("measured" in e and "predicted" in e for e in auto.events)  # measured after revisit=2 steps
    for bucket, (choice, _) in zip(opt.buckets, auto.plan):
        assert choice.dense or bucket.compressed  # small tensors stay dense
        assert choice.route in ("flat", "two_phase") or topo.hierarchical
    assert_same_on_every_rank(hvd, list(model.parameters()))
    # Horovod names a user's unnamed operations by a per-process count of operations, so the probes and
    # trials must have made as many on every rank (else this pairs up wrongly and hangs to the timeout).
    assert hvd.allreduce(torch.tensor([float(hvd.rank())]), op=hvd.Sum).item() == sum(range(hvd.size()))


def fixed_spec(choice):
    """The compression spec and hierarchical flag that run ``choice`` (a Choice) as a fixed strategy."""
    options = registry.ALGORITHMS[choice.spec.split(":")[0]].options
    two_phase = f",two_phase={int(choice.route == 'two_phase')}" if "two_phase" in options else ""
    return f"{choice.spec},min_numel=1024{two_phase}", choice.route == "hierarchical"


def test_a_slow_link_picks_compression_and_trains_as_that_fixed_strategy(hvd):
    """Told the link between nodes runs at 10 Mbit/s, auto compresses the weights' bucket; the run then equals
    the same fixed spec and route (dense buckets may take another route: sums in another order, 1e-6)."""
    needs_ranks(hvd)
    topo = hvdkit_torch.init()
    model = make_model()
    opt = optimizer(model, "auto,gbit=0.01,revisit=0", topo.hierarchical)
    got = train(model, opt, hvd.rank())
    compressed = [c for (c, _), b in zip(opt.auto_compression.plan, opt.buckets) if b.compressed]
    assert len(compressed) == 1 and not compressed[0].dense, opt.auto_compression.events
    spec, hierarchical = fixed_spec(compressed[0])
    model = make_model()
    want = train(model, optimizer(model, spec, hierarchical), hvd.rank())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"auto vs {spec}: {m}")
    initial = [p.detach() for p in make_model().parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(got[1::2], initial[1::2]))  # it trained (biases: dense)
    # A checkpoint resumes the plan and the chosen compressor's residuals, without probing again.
    saved = opt.state_dict()
    resumed = optimizer(make_model(), "auto,gbit=0.01,revisit=0", topo.hierarchical)
    resumed.load_state_dict(saved)
    assert resumed.auto_compression.plan == opt.auto_compression.plan and not resumed.auto_compression.pending
    assert resumed.state_dict()["hvdkit"]["buckets"].keys() == saved["hvdkit"]["buckets"].keys()


def test_pinned_choice_is_used_without_revisiting(hvd):
    needs_ranks(hvd)
    topo = hvdkit_torch.init()
    model = make_model()
    opt = optimizer(model, "auto,pin=int8@flat", topo.hierarchical)
    train(model, opt, hvd.rank(), 2)
    plan = [(str(c), b.compressed) for (c, _), b in zip(opt.auto_compression.plan, opt.buckets)]
    assert all(choice == "int8@flat" for choice, compressed in plan if compressed)
    assert opt.auto_compression.settled and not any("measured" in e for e in opt.auto_compression.events)
    assert opt.last_step_stats.compressed_bytes > 0


def hand_count(buckets, size, per_node, local_rank, hierarchical):
    """(wire bytes inside the node, between nodes, the flat dense ring's between nodes) of one dense step:
    ring allreduce 2(p-1)/p of a bucket, one link in ``per_node`` of the ring crossing between nodes;
    hierarchically, reduce-scatter (L-1)/L and allgather (L-1) shares inside, an allreduce of this rank's share
    (Horovod gives the first numel % L local ranks one more value) among the N nodes between them."""
    intra = cross = ring_cross = 0.0
    nodes = size // per_node
    for b in buckets:
        ring = 2 * (size - 1) / size * b.nbytes
        ring_cross += ring / per_node if nodes > 1 else 0.0
        if hierarchical and b.numel >= per_node:
            share = (b.numel // per_node + (local_rank < b.numel % per_node)) * 4
            intra += (per_node - 1) / per_node * b.nbytes + (per_node - 1) * share
            cross += 2 * (nodes - 1) / nodes * share
        elif nodes > 1:
            cross += ring / per_node
            intra += ring - ring / per_node
        else:
            intra += ring
    return intra, cross, ring_cross


@pytest.mark.parametrize("hierarchical", [False, True])
def test_step_stats_count_bytes_per_link_class(hvd, hierarchical):
    needs_ranks(hvd)
    topo = hvdkit_torch.init()
    if hierarchical and not topo.hierarchical:
        pytest.skip("one node (or one rank per node): no hierarchical exchange; the flat case counts this layout")
    model = make_model()
    opt = optimizer(model, "none", hierarchical, fusion_mb=0.02)
    train(model, opt, hvd.rank(), 2)
    stats = opt.last_step_stats
    intra, cross, ring_cross = hand_count(opt.buckets, topo.size, topo.local_size, topo.local_rank, hierarchical)
    slack = 2 * 3 * len(opt.buckets)  # each collective's estimate is rounded to whole bytes
    assert stats.intra_node_bytes == pytest.approx(intra, abs=slack) and stats.intra_node_bytes > 0
    assert stats.cross_node_bytes == pytest.approx(cross, abs=slack)
    assert stats.dense_cross_node_bytes == pytest.approx(ring_cross, abs=slack)
    if topo.num_nodes > 1:
        assert cross > 0
        if hierarchical:  # more payload than the dense buckets (a "ratio" under 1), fewer bytes on the slow link
            assert stats.bytes_sent > stats.dense_bytes
            assert stats.cross_node_ratio == pytest.approx(ring_cross / cross, rel=1e-3) and ring_cross / cross > 1.4
    else:
        assert stats.cross_node_bytes == 0 and stats.cross_node_ratio == 1.0
