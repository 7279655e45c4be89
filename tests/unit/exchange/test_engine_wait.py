"""How hvdkit.exchange.engine waits for Horovod: polling with sched_yield across hosts, sleeping between polls
on one host. A fake Horovod module stands in for the real one (no ranks needed)."""
import time

import pytest

from hvdkit.exchange import engine
from hvdkit.exchange.strategies import Link, Request

LINK = Link("global", 2, 0)


class FakeHorovod:
    """Handles that finish ``delay`` seconds after they start."""

    Sum = "sum"

    def __init__(self, cross_size, delay=0.2):
        self._cross, self.delay = cross_size, delay
        self.started = {}

    def is_initialized(self):
        return True

    def cross_size(self):
        return self._cross

    def allreduce_async_(self, tensor, name, process_set, op):
        handle = len(self.started) + 1
        self.started[handle] = (time.perf_counter(), tensor)
        return handle

    def poll(self, handle):
        return time.perf_counter() >= self.started[handle][0] + self.delay

    def synchronize(self, handle):
        assert self.poll(handle), "the engine reads results only once they are ready"
        return self.started[handle][1] + 1

    def allgather_object(self, obj):
        return [obj]


def exchange(value, name, stages=1):
    for _ in range(stages):
        value, = yield [Request("allreduce", value, LINK, f"{name}.{value}", inplace=True)]
    return value


@pytest.mark.parametrize("hosts", [1, 2])
def test_spins_across_hosts_and_sleeps_on_one(hosts, monkeypatch):
    calls = {"sleep": 0, "yield": 0}
    monkeypatch.setattr(engine.time, "sleep", lambda s: calls.__setitem__("sleep", calls["sleep"] + 1))
    monkeypatch.setattr(engine.os, "sched_yield", lambda: calls.__setitem__("yield", calls["yield"] + 1))
    transport = engine.HorovodTransport(FakeHorovod(cross_size=hosts))
    assert transport.spin == (hosts > 1)
    flights = {i: engine.Flight(transport, exchange(10 * i, f"b{i}", stages=i + 1)) for i in range(3)}
    assert sorted(key for key, _ in engine.as_completed(flights)) == [0, 1, 2]
    assert [flights[i].result for i in range(3)] == [1, 12, 23]  # every stage of every flight ran
    assert calls["yield"] > 0
    if hosts > 1:
        assert calls["sleep"] == 0
    else:
        assert calls["sleep"] > 0


def test_spinning_can_be_chosen_and_a_horovod_without_cross_size_counts_as_one_host():
    assert not engine.HorovodTransport(FakeHorovod(cross_size=2), spin=False).spin
    assert engine.HorovodTransport(FakeHorovod(cross_size=1), spin=True).spin

    class Bare(FakeHorovod):
        cross_size = None

    assert not engine.HorovodTransport(Bare(cross_size=2)).spin
    flight = engine.Flight(engine.HorovodTransport(FakeHorovod(cross_size=2, delay=0.01)), exchange(1, "x"))
    assert flight.wait() == 2
