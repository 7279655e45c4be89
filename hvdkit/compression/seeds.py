"""Deterministic seeds: the same inputs give the same seed on every rank and in every framework."""

_MASK = (1 << 63) - 1


def mix(*values):
    """A 63-bit seed from non-negative integers (splitmix64 steps; no Python ``hash``, which is salted)."""
    seed = 0x9E3779B97F4A7C15
    for value in values:
        seed = (seed ^ (int(value) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        seed = (seed ^ (seed >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        seed ^= seed >> 31
    return seed & _MASK
