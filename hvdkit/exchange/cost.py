"""What an exchange costs: an alpha-beta model of Horovod's collectives, and the choices made from it.

Each collective over ``p`` ranks is modelled as its ring (or pairwise)
algorithm: ``messages * latency + bytes / bandwidth``, with the bytes one rank
sends (received bytes are the same for these symmetric algorithms):

========== ========== ==========================
collective messages  bytes sent per rank
========== ========== ==========================
allreduce  2(p-1)     2(p-1)/p * b
reducescatter  p-1    (p-1)/p * b
allgather  p-1        (p-1) * b   (b: each rank's part)
alltoall   p-1        (p-1)/p * b (b: the whole send buffer)
========== ========== ==========================

The model ignores contention and computation; it is what the Reducer uses to
pick between an allgather and the two-phase exchange for a gathered
compressor (:func:`prefer_two_phase`), and what the scale benchmark builds on.
"""
import dataclasses

__all__ = ["DEFAULT_NETWORK", "Network", "bytes_factor", "collective_seconds", "cross_node_fraction", "messages",
           "payload_bytes", "prefer_two_phase"]


@dataclasses.dataclass(frozen=True)
class Network:
    """One link class: per-message latency and bandwidth."""

    latency_s: float = 50e-6  # a small message's one-way time through Horovod (TCP, tens of us)
    gbit: float = 10.0  # link bandwidth, Gbit/s

    @property
    def bytes_per_s(self):
        return self.gbit * 1e9 / 8


# A 10 Gbit/s Ethernet cluster: what the automatic choices assume when nothing better is known.
DEFAULT_NETWORK = Network()

_MESSAGES = {"allreduce": lambda p: 2 * (p - 1), "reducescatter": lambda p: p - 1, "allgather": lambda p: p - 1,
             "alltoall": lambda p: p - 1}
_BYTES = {"allreduce": lambda p: 2 * (p - 1) / p, "reducescatter": lambda p: (p - 1) / p,
          "allgather": lambda p: p - 1, "alltoall": lambda p: (p - 1) / p}


def messages(kind, peers):
    """Messages one rank sends, one after another, in a collective of ``kind`` over ``peers`` ranks."""
    return _MESSAGES[kind](peers) if peers > 1 else 0


def bytes_factor(kind, peers):
    """Bytes one rank sends per byte of its input (the table above)."""
    return _BYTES[kind](peers) if peers > 1 else 0.0


def cross_node_fraction(kind, peers, per_node):
    """The part of a rank's sent bytes that leaves its node, in a collective over ``peers`` ranks placed
    ``per_node`` to a node (consecutive, as Horovod's rings order them; None: all on one node). A ring
    crosses at one link of every ``per_node`` (its per-link volume passes every node's interface); an
    alltoall sends (p - per_node)/(p - 1) of its bytes off the node."""
    if per_node is None or per_node >= peers or peers <= 1:
        return 0.0
    if kind == "alltoall":
        return (peers - per_node) / (peers - 1)
    return 1.0 / per_node


def collective_seconds(kind, nbytes, peers, network=DEFAULT_NETWORK):
    """Modelled time of one collective of ``kind`` over ``peers`` ranks with ``nbytes`` per rank."""
    return messages(kind, peers) * network.latency_s + bytes_factor(kind, peers) * nbytes / network.bytes_per_s


def payload_bytes(compressor, numel):
    """Bytes of one rank's payload of ``numel`` elements for a gathered compressor."""
    return sum(length * size for length, size in zip(compressor.part_lengths(numel), compressor.part_itemsizes))


def prefer_two_phase(compressor, numel, peers, network=DEFAULT_NETWORK):
    """Whether the two-phase exchange beats an allgather for this compressor, bucket size and group.

    The spec option ``two_phase`` decides when it is ``0`` or ``1``; with ``auto`` (the default) the
    model does: an allgather sends (p-1) payloads in p-1 messages, the two-phase exchange about two
    in 2(p-1), so the allgather wins at 2 ranks and for payloads too small to pay the extra latency.
    """
    if compressor.chunk_grain is None:
        return False
    forced = compressor.spec.options.get("two_phase", "auto")
    if forced != "auto":
        return forced == "1"
    if peers < 3:
        return False
    whole = payload_bytes(compressor, numel)
    gather = collective_seconds("allgather", whole, peers, network)
    two = (collective_seconds("alltoall", whole, peers, network)
           + collective_seconds("allgather", whole / peers, peers, network))
    return two < gather
