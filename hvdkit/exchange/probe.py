"""A link's latency and bandwidth, measured: timed allreduces fitted to the cost model's alpha-beta form.

An allreduce of ``b`` bytes over ``p`` ranks costs ``2(p-1)`` latencies plus
``2(p-1)/p * b`` bytes over the bandwidth (:mod:`hvdkit.exchange.cost`), so
the times of a few sizes lie on a line ``a + slope * b``: its intercept gives
the latency, its slope the bandwidth. Each size runs once to line the ranks
up (the first call waits for the last rank to arrive), then ``repeats``
times; the median counts. Sizes span small messages (latency) to a few MiB
(bandwidth): on a 100 Mbit/s link the largest takes about 0.3 s.
"""
import statistics
import time

from hvdkit.exchange import cost
from hvdkit.exchange.engine import Flight
from hvdkit.exchange.strategies import Request

__all__ = ["SIZES", "fit", "probe", "shadow"]

SIZES = (4 * 2**10, 256 * 2**10, 4 * 2**20)  # bytes of float32 zeros allreduced
REPEATS = 3
_FLOOR_LATENCY_S = 1e-6  # a fit's intercept can come out <= 0 (noise): no link is faster than this
_CEILING_GBIT = 1e4  # nor faster than this (a slope <= 0)


def fit(peers, samples):
    """A :class:`cost.Network` from ``samples`` [(bytes, seconds), ...] of allreduces over ``peers`` ranks
    (least squares of seconds on bytes)."""
    if len(samples) < 2:
        raise ValueError(f"a link fit needs at least 2 sizes, got {samples!r}")
    mean_b = sum(b for b, _ in samples) / len(samples)
    mean_t = sum(t for _, t in samples) / len(samples)
    spread = sum((b - mean_b) ** 2 for b, _ in samples)
    if spread == 0:
        raise ValueError(f"a link fit needs different sizes, got {samples!r}")
    slope = sum((b - mean_b) * (t - mean_t) for b, t in samples) / spread
    intercept = mean_t - slope * mean_b
    latency = max(_FLOOR_LATENCY_S, intercept / max(1, cost.messages("allreduce", peers)))
    gbit = cost.bytes_factor("allreduce", peers) / slope * 8 / 1e9 if slope > 0 else _CEILING_GBIT
    return cost.Network(latency_s=latency, gbit=min(gbit, _CEILING_GBIT))


def probe(transport, link, ops, like, name, sizes=SIZES, repeats=REPEATS):
    """(Network, samples) of ``link``, measured through ``transport`` (every rank of the link calls this
    together); ``like``: a tensor of the framework and device to allocate on; ``name``: unique per probe."""
    samples = _timed(transport, link, ops, like, name, sizes, repeats)
    return fit(link.size, samples), samples


def shadow(transport, link, ops, like, name, sizes=SIZES, repeats=REPEATS):
    """Make as many Horovod operations as :func:`probe` over ``link``, of one float each, measuring nothing.

    Horovod names a user's unnamed operations by a per-process count of operations, so ranks that
    sit out a probe (one node interface is probed at a time) make these instead, keeping the count
    equal on every rank.
    """
    _timed(transport, link, ops, like, name, (4,) * len(sizes), repeats)


def _timed(transport, link, ops, like, name, sizes, repeats):
    """[(bytes, median seconds)] of allreduces of each size in ``sizes`` over ``link``."""
    samples = []
    for index, size in enumerate(sizes):
        tensor = ops.zeros(size // 4, like)
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            Flight(transport, _allreduce(Request("allreduce", tensor, link, f"{name}.{index}.{size}"))).wait()
            times.append(time.perf_counter() - start)
        samples.append((size, statistics.median(times[1:])))
    return samples


def _allreduce(request):
    reduced, = yield [request]
    return reduced
