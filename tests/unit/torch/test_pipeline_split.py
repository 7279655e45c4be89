"""The balanced cut of a model into pipeline stages, against brute force over every cut."""
import itertools
import random

import pytest
import torch
from torch import nn

from hvdkit.torch.pipeline import balanced_bounds, layer_costs, split_sequential


def brute_force_best(costs, parts):
    """The smallest possible largest-stage cost over every cut into ``parts`` non-empty runs."""
    n = len(costs)
    best = None
    for cuts in itertools.combinations(range(1, n), parts - 1):
        bounds = (0, *cuts, n)
        worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))
        best = worst if best is None else min(best, worst)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_the_cut_is_optimal_and_covers_every_layer_once(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    costs = [rng.choice([0, 1, 1, 5, 30, 200]) * rng.randint(1, 4) for _ in range(n)]
    parts = rng.randint(1, n)
    bounds = balanced_bounds(costs, parts)
    assert bounds[0] == 0 and bounds[-1] == n and len(bounds) == parts + 1
    assert all(b > a for a, b in zip(bounds, bounds[1:])), f"an empty stage in {bounds}"
    worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))
    assert worst == brute_force_best(costs, parts), (costs, parts, bounds)


def test_equal_layers_split_evenly():
    assert balanced_bounds([10] * 8, 4) == [0, 2, 4, 6, 8]
    assert balanced_bounds([10] * 8, 1) == [0, 8]
    assert balanced_bounds([1, 1, 1], 3) == [0, 1, 2, 3]


@pytest.mark.parametrize("parts", [0, -1, 2.0, True])
def test_a_bad_number_of_parts_is_refused(parts):
    with pytest.raises(ValueError, match="parts must be a positive integer"):
        balanced_bounds([1, 2], parts)


def test_more_stages_than_layers_is_refused_naming_both():
    with pytest.raises(ValueError, match="cannot cut 3 layers into 4 stages.*at most 3 stages"):
        balanced_bounds([1, 1, 1], 4)


def test_parameter_counts_are_the_default_costs():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert layer_costs(list(model)) == [4 * 8 + 8, 1, 8 * 2 + 2]


def test_timed_costs_are_positive_and_leave_no_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    costs = layer_costs(list(model), by="time", example=torch.randn(32, 64))
    assert len(costs) == 3 and all(isinstance(c, int) and c >= 1 for c in costs)
    assert all(p.grad is None for p in model.parameters())


def test_split_by_time_needs_an_example_and_a_known_criterion():
    layers = [nn.Linear(2, 2)]
    with pytest.raises(ValueError, match="needs an example input"):
        layer_costs(layers, by="time")
    with pytest.raises(ValueError, match="by='flops'; choose one of 'params', 'time'"):
        layer_costs(layers, by="flops")


def test_split_sequential_shares_the_layers_in_order():
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    chunks = split_sequential(model, 2)
    assert [layer for chunk in chunks for layer in chunk] == list(model)
    x = torch.randn(3, 4)
    out = x
    for chunk in chunks:
        out = chunk(out)
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)


def test_only_a_sequential_can_be_cut():
    with pytest.raises(ValueError, match="must be an nn.Sequential.*got Linear"):
        split_sequential(nn.Linear(2, 2), 1)
