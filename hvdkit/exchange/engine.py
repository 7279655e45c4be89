"""The one async engine: drives exchanges (generators of collective ``Request``s) on a transport.

An exchange (:mod:`hvdkit.exchange.strategies`, :mod:`hvdkit.exchange.collectives`)
is a generator: it yields the requests of its next stage and is sent their
outputs, until it returns its result. A ``Flight`` runs one exchange: an
optimizer starts it when a bucket fills, ``poll()``s it from later gradient
hooks (so multi-stage exchanges move on during backward, and every flight in
progress moves on together) and waits for them all in ``step()``
(``as_completed``: whichever finishes first is handled first). A transport starts
the requests: ``HorovodTransport`` on real ranks
(:mod:`hvdkit.exchange.simulate` has one for many ranks in one process).
A wait polls with ``sched_yield`` across hosts and sleeps between polls on
one host (:func:`as_completed` says why).
"""
import os
import time

__all__ = ["Flight", "HorovodTransport", "as_completed"]

# as_completed: yield-poll this long after any flight moved on (the whole wait where the transport
# spins: across hosts), then sleep this fraction of the time waited so far, at least _MIN_SLEEP_S
# (see as_completed for why).
_SPIN_S = 1e-3
_SLEEP_FRACTION = 0.02
_MIN_SLEEP_S = 20e-6


class HorovodTransport:
    """Runs Requests through a Horovod module: its ``*_async`` ops where it has them (torch),
    the blocking ones otherwise (TensorFlow, whose ops have finished when the call returns).
    ``spin``: whether a wait keeps polling with ``sched_yield`` instead of sleeping (see
    :func:`as_completed`); default: when the job spans several hosts (Horovod's ``cross_size() > 1``)."""

    def __init__(self, hvd, gather_object=None, spin=None):
        self.hvd = hvd
        # allgather_object over the exchange's ranks (a process set); default: Horovod's, over the world
        self._gather_object = gather_object or hvd.allgather_object
        self.spin = _spans_hosts(hvd) if spin is None else bool(spin)

    def start(self, request):
        hvd = self.hvd
        kwargs = {"name": request.name, "process_set": request.link.process_set}
        if request.kind in ("allreduce", "reducescatter"):
            kwargs["op"] = hvd.Sum
        if request.scale != 1.0:
            kwargs["postscale_factor"] = request.scale
        if request.kind == "alltoall":
            kwargs["splits"] = list(request.splits)
        name = request.kind + ("_async_" if request.inplace else "_async")
        function = getattr(hvd, name, None) or getattr(hvd, request.kind + "_async", None)
        if function is None:
            return _Done(_output(request.kind, getattr(hvd, request.kind)(request.tensor, **kwargs)))
        return _Started(request.kind, function(request.tensor, **kwargs))

    def done(self, pending):
        return isinstance(pending, _Done) or self.hvd.poll(pending.handle)

    def result(self, pending):
        if isinstance(pending, _Done):
            return pending.value
        return _output(pending.kind, self.hvd.synchronize(pending.handle))

    def allgather_object(self, obj):
        return self._gather_object(obj)


def _spans_hosts(hvd):
    """Whether Horovod's ranks run on more than one host (emulated nodes on one host do not count)."""
    try:
        return hvd.is_initialized() and hvd.cross_size() > 1
    except (AttributeError, TypeError, ValueError, RuntimeError):  # a Horovod without cross_size, or not started
        return False


def _output(kind, value):
    """A collective's result tensor: Horovod's alltoall with splits also returns the received splits."""
    return value[0] if kind == "alltoall" else value


class _Started:
    """A Horovod async handle and the kind of collective it belongs to."""

    __slots__ = ("kind", "handle")

    def __init__(self, kind, handle):
        self.kind = kind
        self.handle = handle


class _Done:
    """A collective that finished when it was started."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class Flight:
    """One exchange in progress on a transport."""

    __slots__ = ("_transport", "_gen", "_pending", "_done", "_stages", "result")

    def __init__(self, transport, exchange):
        self._transport = transport  # starts and resolves the requests
        self._gen = exchange  # the exchange generator
        self._pending = None  # what the transport returned for the requests the generator waits on
        self._done = False
        self._stages = 0  # stages started so far: wait() restarts its spin when a new one starts
        self.result = None  # the exchange's result, once done
        self._send(None)

    def _send(self, outputs):
        try:
            requests = self._gen.send(outputs)
        except StopIteration as stop:
            self._pending, self._done, self.result = None, True, stop.value
            return
        self._pending = [self._transport.start(r) for r in requests]
        self._stages += 1

    def _stage_done(self):
        return all(self._transport.done(p) for p in self._pending)

    def poll(self):
        """Move on as far as possible without blocking; True when finished."""
        while not self._done and self._stage_done():
            self._send([self._transport.result(p) for p in self._pending])
        return self._done

    def wait(self):
        """Block until finished; return the result (see :func:`as_completed` for how it waits)."""
        for _ in as_completed({None: self}):
            pass
        return self.result


def as_completed(flights):
    """Yield ``(key, flight)`` for each flight of the dict ``flights`` as it finishes.

    Every flight is polled each round, so all of them progress together: a
    later bucket's next stage never waits for an earlier bucket's (which is
    also why it never blocks in ``hvd.synchronize`` on one request: across
    process sets, a rank blocked there while another of its flights could
    start its next stage can wait on a rank that waits on it). For the first
    millisecond after any flight moved on it polls with ``sched_yield``, like
    ``hvd.synchronize``, so short collectives see no extra latency. After that:

    * on one host it sleeps between rounds, each sleep 2 % of the time waited
      so far (at least 20 us), so completion is noticed at most ~2 % late. A
      caller that keeps spinning competes for the CPU with Horovod's
      background thread, which does the work: on the 2-core machine under
      load from other processes, spinning made 16-64 MiB allreduces 2x slower
      (benchmarks/README.md, section "allreduce"), and with 4 ranks as 2
      emulated nodes (the 25.2 M-parameter MLP of benchmarks/cluster.py, same
      job) a step ran at 0.54x of Horovod's optimizer against 0.98x sleeping;
    * across hosts (the transport's ``spin``: Horovod's ``cross_size() > 1``)
      it keeps polling with ``sched_yield``, as Horovod's optimizer waits in
      ``hvd.synchronize``. There Open MPI's TCP transport is progressed by
      Horovod's background thread polling inside MPI, and beside a sleeping
      main thread that thread took 2.2-2.9x the CPU per step (per-thread
      counters) on the emulated 2 nodes x 2 ranks sharing 2 cores, CPU the
      other ranks needed: with the same MLP, same job, a step ran at
      0.79-0.97x of Horovod's optimizer sleeping and 0.85-1.09x spinning
      (10 jobs at 100 Mbit/s, 1 Gbit/s and 10 Gbit/s; 9 in favour of spinning).
    """
    waiting = dict(flights)
    started = time.perf_counter()
    while waiting:
        moved = False
        for key, flight in list(waiting.items()):
            stages = flight._stages
            if flight.poll():
                del waiting[key]
                moved = True
                yield key, flight
            elif flight._stages != stages:
                moved = True
        now = time.perf_counter()
        if moved:
            started = now
            continue
        waited = now - started
        if waited < _SPIN_S or any(getattr(flight._transport, "spin", False) for flight in waiting.values()):
            os.sched_yield()
        else:
            time.sleep(max(_MIN_SLEEP_S, _SLEEP_FRACTION * waited))
