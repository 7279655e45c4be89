"""What each optimizer step sent: bytes, compression ratio, time in kernels.

A ``StatsMeter`` collects during one step (the exchange code calls ``sent``
and ``timed``); ``finish`` turns it into an immutable ``StepStats``. Wire
bytes are estimates of what this rank transmits under Horovod's ring
algorithms for a group of p ranks and b payload bytes: allreduce 2(p-1)/p*b,
reduce-scatter (p-1)/p*b, allgather (p-1)*b, alltoall (p-1)/p*b (b: the whole
send buffer, one p-th to each rank).

Wire bytes are split by link class, inside a node and between nodes
(:func:`hvdkit.exchange.cost.cross_node_fraction`), because the link between
nodes is the slow one: a dense hierarchical exchange hands more bytes to
collectives than the flat ring (its node stages), yet sends fewer between
nodes. ``dense_cross_node_bytes`` is what Horovod's flat dense ring would have
sent between nodes for the same buckets: the baseline of ``cross_node_ratio``.
"""
import dataclasses
import time

from hvdkit.exchange.cost import cross_node_fraction

__all__ = ["StepStats", "StatsMeter", "wire_bytes"]


def wire_bytes(kind, nbytes, peers):
    """Bytes this rank sends for one collective of ``kind`` over ``peers`` ranks."""
    if peers <= 1:
        return 0
    factor = {"allreduce": 2 * (peers - 1) / peers, "allgather": peers - 1, "reducescatter": (peers - 1) / peers,
              "alltoall": (peers - 1) / peers}[kind]
    return int(round(factor * nbytes))


@dataclasses.dataclass(frozen=True)
class StepStats:
    """One optimizer step, as seen by this rank."""

    step: int  # optimizer steps synchronised before this one
    buckets: int  # buckets exchanged
    dense_bytes: int  # bytes of the packed gradient buckets exchanged (what dense allreduce would move)
    bytes_sent: int  # payload bytes this rank handed to collectives (all stages, compressed and dense)
    wire_bytes: int  # estimated bytes this rank transmitted (ring algorithms; see module docstring)
    compressed_dense_bytes: int  # dense bytes of the buckets that went through a compressor
    compressed_bytes: int  # payload bytes those buckets cost instead
    kernel_ms: float  # time in compress / decompress (error feedback included)
    pack_ms: float  # time packing gradients into buckets and unpacking results
    wait_ms: float  # time synchronize() blocked on communication still in flight
    skipped: bool  # the reduced gradients were not finite (see the optimizer's ``nonfinite``)
    exchange_ms: float = 0.0  # from the first bucket's launch to the last bucket's result
    host_syncs: int = 0  # device values the step read on the host (the non-finite flag: 0 or 1)
    routes: tuple = ()  # ((route, buckets), ...): how the buckets travelled, e.g. ("flat/two_phase", 3)
    cross_node_bytes: int = 0  # of wire_bytes, those estimated to leave this rank's node
    dense_cross_node_bytes: int = 0  # what the flat dense ring allreduce would send between nodes

    @property
    def intra_node_bytes(self):
        """Of wire_bytes, those estimated to stay inside this rank's node."""
        return self.wire_bytes - self.cross_node_bytes

    @property
    def cross_node_ratio(self):
        """The flat dense ring's bytes between nodes per byte this step sent there (1.0 on one node)."""
        return self.dense_cross_node_bytes / self.cross_node_bytes if self.cross_node_bytes else 1.0

    @property
    def hidden_fraction(self):
        """The part of the exchange that overlapped computation (backward) instead of blocking the step."""
        return 1.0 - self.wait_ms / self.exchange_ms if self.exchange_ms > 0 else 0.0

    @property
    def compression_ratio(self):
        """Dense bytes replaced per payload byte, over the compressed buckets (1.0 when none were)."""
        return self.compressed_dense_bytes / self.compressed_bytes if self.compressed_bytes else 1.0

    def as_dict(self):
        return dict(dataclasses.asdict(self), compression_ratio=self.compression_ratio,
                    hidden_fraction=self.hidden_fraction, routes=dict(self.routes),
                    intra_node_bytes=self.intra_node_bytes, cross_node_ratio=self.cross_node_ratio)


class StatsMeter:
    """Running totals for the step in progress."""

    __slots__ = ("buckets", "dense_bytes", "bytes_sent", "wire_bytes", "compressed_dense_bytes",
                 "compressed_bytes", "kernel_s", "pack_s", "wait_s", "routes", "host_syncs", "started", "ended",
                 "cross_node_bytes", "dense_cross_node_bytes")

    def __init__(self):
        self.buckets = 0  # buckets launched
        self.dense_bytes = 0  # bytes of those buckets packed
        self.bytes_sent = 0  # payload bytes handed to collectives
        self.wire_bytes = 0  # estimated bytes on the wire
        self.compressed_dense_bytes = 0  # dense bytes that went through a compressor
        self.compressed_bytes = 0  # their payload bytes
        self.kernel_s = 0.0  # seconds in compressor calls
        self.pack_s = 0.0  # seconds packing / unpacking
        self.wait_s = 0.0  # seconds blocked on communication
        self.routes = {}  # route name -> buckets that took it
        self.host_syncs = 0  # device flags read on the host
        self.started = None  # perf_counter() at the first bucket's launch
        self.ended = None  # perf_counter() when the last bucket's result arrived
        self.cross_node_bytes = 0.0  # estimated wire bytes that left the node
        self.dense_cross_node_bytes = 0.0  # the flat dense ring's, for the same buckets

    def bucket(self, nbytes, world=None):
        """A bucket of ``nbytes`` launched; ``world``: the exchange's world Link (for the baseline)."""
        if self.started is None:
            self.started = time.perf_counter()
        self.buckets += 1
        self.dense_bytes += nbytes
        if world is not None:
            ring = wire_bytes("allreduce", nbytes, world.size)
            self.dense_cross_node_bytes += ring * cross_node_fraction("allreduce", world.size, world.per_node)

    def route(self, name):
        self.routes[name] = self.routes.get(name, 0) + 1

    def sent(self, kind, nbytes, peers, compressed=False, per_node=None):
        """A collective of ``kind`` over ``peers`` ranks (``per_node`` of them to a node; None: one node)."""
        self.bytes_sent += nbytes
        wire = wire_bytes(kind, nbytes, peers)
        self.wire_bytes += wire
        self.cross_node_bytes += wire * cross_node_fraction(kind, peers, per_node)
        if compressed:
            self.compressed_bytes += nbytes

    def compressed_input(self, nbytes):
        self.compressed_dense_bytes += nbytes

    def timed(self, field, fn, *args):
        """``fn(*args)``, adding its duration to ``field`` ("kernel_s", "pack_s" or "wait_s")."""
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            setattr(self, field, getattr(self, field) + time.perf_counter() - start)

    def finish(self, step, skipped):
        return StepStats(step=step, buckets=self.buckets, dense_bytes=self.dense_bytes, bytes_sent=self.bytes_sent,
                         wire_bytes=self.wire_bytes, compressed_dense_bytes=self.compressed_dense_bytes,
                         compressed_bytes=self.compressed_bytes, kernel_ms=1e3 * self.kernel_s,
                         pack_ms=1e3 * self.pack_s, wait_ms=1e3 * self.wait_s, skipped=skipped,
                         host_syncs=self.host_syncs,
                         exchange_ms=0.0 if self.started is None else 1e3 * (
                             (self.ended or time.perf_counter()) - self.started),
                         routes=tuple(sorted(self.routes.items())),
                         cross_node_bytes=int(round(self.cross_node_bytes)),
                         dense_cross_node_bytes=int(round(self.dense_cross_node_bytes)))
