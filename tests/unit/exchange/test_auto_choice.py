"""compression="auto": the choice maths (hvdkit.exchange.auto) against the cost model restated in numpy, the
link probe's fit, and the spec. Kernel times are set to known values so only the model is compared; the
bytes come from running the real strategies (hvdkit.exchange.scale), the formulas here from the algorithms."""
import math

import numpy as np
import pytest
import torch

from hvdkit.compression import registry, spec
from hvdkit.compression.torch_ops import TorchOps
from hvdkit.exchange import auto, cost, probe
from hvdkit.exchange.buckets import TensorInfo, plan_buckets

N = 2**20  # elements of the bucket: 4 MiB of float32, whole int8 blocks, equal shares and chunks
P, L = 4, 2  # 4 ranks, 2 per node
HEADS = ["none", "fp16", "int8", "topk:0.01"]


@pytest.fixture(scope="module")
def bucket():
    info = TensorInfo("w", (1024, 1024), "float32", 4)
    return plan_buckets([info], 2**30, lambda _: True)[0]


@pytest.fixture(scope="module")
def measured(bucket):
    return auto.measure(HEADS, bucket, TorchOps(), torch.zeros(1), P, L, hierarchical=True)


def restated(cross, intra):
    """{(spec, route): seconds} of the cost model, from the algorithms' byte counts (no kernel time)."""
    ac, bc, ai, bi = cross.latency_s, cross.bytes_per_s, intra.latency_s, intra.bytes_per_s

    def hop(messages, sent, cross_part):
        latency = ac if cross_part > 0 else ai
        return messages * latency + max(cross_part * sent * L / bc, (1 - cross_part) * sent / bi)

    def world(kind, x):  # one collective over the 4 ranks of 2 nodes (rings cross at 1 link in L)
        return {"allreduce": hop(2 * (P - 1), 2 * (P - 1) / P * x, 1 / L),
                "allgather": hop(P - 1, (P - 1) * x, 1 / L),
                "alltoall": hop(P - 1, (P - 1) / P * x, (P - L) / (P - 1))}[kind]

    nodes = P // L
    share = 4 * N / L  # dense bytes each local rank owns after the reduce-scatter
    inside = hop(L - 1, (L - 1) / L * 4 * N, 0) + hop(L - 1, (L - 1) * share, 0)  # reduce-scatter + allgather

    def between(kind, x):
        return hop(2 * (nodes - 1), 2 * (nodes - 1) / nodes * x, 1) if kind == "allreduce" else hop(
            nodes - 1, (nodes - 1) * x, 1)

    def int8(n):
        return [n, 4 * math.ceil(n / 1024)]

    def topk(n):
        k = math.ceil(0.01 * n)
        return [4 * k, 4 * k]

    out = {("none", "flat"): world("allreduce", 4 * N), ("fp16", "flat"): world("allreduce", 2 * N),
           ("none", "hierarchical"): inside + between("allreduce", share),
           ("fp16", "hierarchical"): inside + between("allreduce", share / 2)}
    for name, parts in (("int8", int8), ("topk:0.01", topk)):
        out[name, "flat"] = sum(world("allgather", x) for x in parts(N))
        # each rank's chunk compressed on its own (top-k keeps k of every chunk), then the chunk sums
        out[name, "two_phase"] = (sum(world("alltoall", P * x) for x in parts(N // P))
                                  + sum(world("allgather", x) for x in parts(N // P)))
        out[name, "hierarchical"] = inside + sum(between("allgather", x) for x in parts(N // L))
    return out


def no_kernels(measured):
    return {key: 0.0 for key in measured}


SLOW = (cost.Network(latency_s=100e-6, gbit=0.1), cost.Network(latency_s=5e-6, gbit=50))
FAST = (cost.Network(latency_s=5e-6, gbit=400), cost.Network(latency_s=5e-6, gbit=400))


@pytest.mark.parametrize("links", [SLOW, FAST, (cost.Network(50e-6, 10), cost.Network(5e-6, 400))],
                         ids=["100Mbit", "fast", "10Gbit"])
def test_each_choice_is_priced_as_the_model_restated(measured, links):
    priced = {(c.spec, c.route): c.seconds for c in auto.price(measured, L, *links, no_kernels(measured))}
    expected = restated(*links)
    assert set(priced) == set(expected)
    for key, seconds in expected.items():
        assert priced[key] == pytest.approx(seconds, rel=1e-6), key


def test_a_slow_link_and_a_big_bucket_pick_compression(measured):
    choices = auto.price(measured, L, *SLOW, no_kernels(measured))
    chosen = auto.choose(choices, tie=0.1)
    expected = restated(*SLOW)
    keys = list(expected)
    best = keys[int(np.argmin([expected[k] for k in keys]))]
    assert not chosen.dense and (chosen.spec, chosen.route) == best
    assert min(expected[k] for k in keys if k[0] == "none") > 10 * expected[best]  # not a near thing


def test_a_fast_link_picks_dense(measured):
    """On a fast link what compression saves is less than its kernels cost (here: 1 ms each, about what a
    CPU takes for 4 MiB; on links this fast the model alone, without kernel time, would favour top-k)."""
    kernels = {key: 0.0 if key[0] == "none" else 1e-3 for key in measured}
    chosen = auto.choose(auto.price(measured, L, *FAST, kernels), tie=0.1)
    expected = {key: s + (0.0 if key[0] == "none" else 1e-3) for key, s in restated(*FAST).items()}
    best = min(expected, key=expected.get)
    assert best[0] == "none" and (chosen.spec, chosen.route) == best


@pytest.mark.parametrize("fraction, dense_wins", [(0.95, True), (0.92, True), (0.88, False)])
def test_dense_wins_ties_within_the_margin(measured, fraction, dense_wins):
    """Kernel time makes every compressed choice cost ``fraction`` of the best dense one: dense stays unless
    compression is faster by more than tie=10 %."""
    expected = restated(*SLOW)
    dense = min(s for k, s in expected.items() if k[0] == "none")
    kernels = {key: (0.0 if key[0] == "none" else max(0.0, fraction * dense - expected[key[0], auto.ROUTE_OF[key[1]]]))
               for key in measured}
    chosen = auto.choose(auto.price(measured, L, *SLOW, kernels), tie=0.1)
    assert chosen.dense == dense_wins
    if not dense_wins:
        assert chosen.seconds == pytest.approx(fraction * dense)


def test_choose_and_ranked_on_hand_made_choices():
    dense = auto.Choice("none", "flat", 10.0)
    hier = auto.Choice("none", "hierarchical", 9.0)
    fp16 = auto.Choice("fp16", "flat", 8.5)
    topk = auto.Choice("topk:0.01", "flat", 2.0)
    assert auto.choose([dense, hier, fp16], tie=0.1) is hier  # 8.5 * 1.1 > 9: a tie, dense wins
    assert auto.choose([dense, fp16], tie=0.1) is fp16
    assert auto.choose([dense, auto.Choice("fp16", "flat", 10.0)], tie=0.0) is dense  # exact tie
    assert auto.ranked([dense, hier, fp16, topk], tie=0.1) == [topk, fp16, hier, dense]


def test_candidates_that_do_not_take_the_bucket_are_not_measured():
    infos = [TensorInfo("bias", (4096,), "float32", 4), TensorInfo("w", (64, 64), "float32", 4)]
    bucket = plan_buckets(infos, 2**30, lambda _: True)[0]
    measured = auto.measure(["none", "powersgd:4", "fp16"], bucket, TorchOps(), torch.zeros(1), 2, 2, False)
    assert set(measured) == {("none", "ring"), ("fp16", "allreduce")}  # PowerSGD takes matrices only; one node
    assert all(t.kernel_s > 0 for key, t in measured.items() if key[0] != "none")


@pytest.mark.parametrize("peers", [2, 4])
def test_the_probe_fit_recovers_latency_and_bandwidth(peers):
    latency, gbit = 80e-6, 0.9
    bandwidth = gbit * 1e9 / 8
    samples = [(b, 2 * (peers - 1) * latency + 2 * (peers - 1) / peers * b / bandwidth) for b in probe.SIZES]
    network = probe.fit(peers, samples)
    assert network.latency_s == pytest.approx(latency, rel=1e-6) and network.gbit == pytest.approx(gbit, rel=1e-6)
    with pytest.raises(ValueError, match="different sizes"):
        probe.fit(peers, [(4096, 1e-3), (4096, 2e-3)])


def test_ranks_that_sit_out_a_probe_make_as_many_horovod_operations():
    """Horovod names unnamed operations by a per-process count: a shadow must match the probe's count."""
    from hvdkit.exchange.simulate import MirrorTransport
    from hvdkit.exchange.strategies import Link

    link, like = Link((0, 1), 2, 0), torch.zeros(1)
    probing, shadowing = MirrorTransport(), MirrorTransport()
    probe.probe(probing, link, TorchOps(), like, "p")
    probe.shadow(shadowing, link, TorchOps(), like, "p")
    assert len(shadowing.requests) == len(probing.requests) == len(probe.SIZES) * (probe.REPEATS + 1)
    assert {r.tensor.numel() for r in shadowing.requests} == {1}
    assert max(r.tensor.numel() for r in probing.requests) == probe.SIZES[-1] // 4


def test_the_auto_spec_parses_round_trips_and_names_bad_values():
    parsed = spec.parse("auto")
    assert parsed.name == "auto" and parsed.options["candidates"] == "none+fp16+int8+topk:0.01+powersgd:4"
    assert spec.parse(str(parsed)) == parsed
    pinned = spec.parse("auto,pin=topk:0.010@hierarchical,candidates=fp16")
    assert pinned.options["pin"] == "topk:0.01@hierarchical" and pinned.options["candidates"] == "none+fp16"
    with pytest.raises(ValueError, match=r"option pin='fp16@ring': route 'ring' is not one of flat, two_phase, "
                                         r"hierarchical"):
        spec.parse("auto,pin=fp16@ring")
    with pytest.raises(ValueError, match=r"option candidates='fp16\+bogus'.*unknown algorithm 'bogus'"):
        spec.parse("auto,candidates=fp16+bogus")
    with pytest.raises(ValueError, match=r"compression 'auto' is a choice among compressors"):
        registry.create("auto", None)
