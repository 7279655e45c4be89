"""Shard boundaries: contiguous, covering, balanced to one unit, aligned."""
import numpy as np
import pytest

from hvdkit.ps import sharding


@pytest.mark.parametrize("numel,servers,align", [(0, 1, 1), (1, 3, 1), (10, 3, 1), (1001, 4, 1), (1000, 3, 64),
                                                 (7, 7, 1), (5, 8, 1), (100003, 5, 1024)])
def test_bounds_cover_balanced_and_aligned(numel, servers, align):
    edges = sharding.bounds(numel, servers, align)
    assert len(edges) == servers + 1 and edges[0] == 0 and edges[-1] == numel
    sizes = np.diff(edges)
    assert (sizes >= 0).all()
    assert sizes.max() - sizes.min() <= align
    assert all(e % align == 0 for e in edges[:-1])
    # the same cut restated: floor(units/servers) units each, one more for the last units % servers servers
    units = -(-numel // align)
    expected_units = [units // servers + (s >= servers - units % servers) for s in range(servers)]
    assert [min(numel, sum(expected_units[:s + 1]) * align) for s in range(servers)] == edges[1:]


def test_slices_are_views_of_the_flat_vector():
    flat = np.arange(10, dtype=np.float32)
    parts = sharding.slices(flat, sharding.bounds(10, 3))
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    parts[1][0] = -1
    assert flat[3] == -1


@pytest.mark.parametrize("kwargs", [dict(numel=-1, servers=1), dict(numel=3, servers=0),
                                    dict(numel=3, servers=1, align=0), dict(numel=3.0, servers=1)])
def test_bad_arguments_name_the_argument(kwargs):
    name = next(k for k, v in kwargs.items() if not isinstance(v, int) or v < (0 if k == "numel" else 1))
    with pytest.raises(ValueError, match=name):
        sharding.bounds(**kwargs)


def test_slices_refuse_a_wrong_length():
    with pytest.raises(ValueError, match="11 elements"):
        sharding.slices(np.zeros(10, np.float32), [0, 5, 11])
