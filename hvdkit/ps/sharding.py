"""Balanced byte ranges of the flattened parameter vector, one per server.

Shards are contiguous, so a worker sends each server one slice of its flat
buffer (a zero-copy view) and the servers never need to know the model's
layout. Sizes differ by at most one ``align``-element unit (the extra
units go to the last servers, whose last unit may be partial): the
busiest server carries at most one unit more bytes than the idlest.
"""
import numpy as np

__all__ = ["bounds", "slices"]


def bounds(numel, servers, align=1):
    """[0, b1, ..., numel]: ``servers`` contiguous ranges of ``numel`` elements, balanced to within
    ``align`` elements (boundaries on multiples of ``align``, e.g. a compressor's block)."""
    for name, value, low in (("numel", numel, 0), ("servers", servers, 1), ("align", align, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    units = -(-numel // align)
    base, extra = divmod(units, servers)
    edges = [0]
    for s in range(servers):
        edges.append(min(numel, edges[-1] + (base + (s >= servers - extra)) * align))
    return edges


def slices(flat, edges):
    """Views of ``flat`` between consecutive ``edges``."""
    if flat.ndim != 1 or flat.shape[0] != edges[-1]:
        raise ValueError(f"expected a flat vector of {edges[-1]} elements, got shape {flat.shape}")
    return [flat[lo:hi] for lo, hi in zip(edges, edges[1:])]
