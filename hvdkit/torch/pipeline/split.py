"""Cutting an ``nn.Sequential`` into contiguous, balanced stages.

A pipeline runs at the pace of its slowest stage, so the cut minimises the largest stage's cost:
the classic linear-partition problem, solved exactly by binary search on that bound over integer
costs (parameter counts, or measured microseconds). Costs come from the layers' parameter counts
(``by="params"``, free) or their measured forward+backward time on an example batch (``by="time"``,
better when parameter-free layers such as convolutions over large activations dominate).
"""
import time

import torch
from torch import nn

__all__ = ["SPLIT_BY", "balanced_bounds", "layer_costs", "split_sequential"]

SPLIT_BY = ("params", "time")


def _fits(costs, parts, limit):
    """Whether ``costs`` cut greedily into runs of total <= ``limit`` need at most ``parts`` runs."""
    runs, total = 1, 0
    for cost in costs:
        if total + cost > limit:
            runs, total = runs + 1, 0
        total += cost
    return runs <= parts


def balanced_bounds(costs, parts):
    """Start indices (plus ``len(costs)`` at the end) of ``parts`` non-empty contiguous runs of ``costs``
    whose largest sum is as small as possible. Ties leave later runs the lighter ones."""
    costs = [int(c) for c in costs]
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"parts must be a positive integer, got {parts!r}")
    if parts > len(costs):
        raise ValueError(f"cannot cut {len(costs)} layers into {parts} stages: a stage needs at least one layer "
                         f"(use at most {len(costs)} stages, or a model with more layers)")
    if any(c < 0 for c in costs):
        raise ValueError(f"layer costs must be >= 0, got {costs}")
    low, high = max(costs), sum(costs)
    while low < high:
        middle = (low + high) // 2
        if _fits(costs, parts, middle):
            high = middle
        else:
            low = middle + 1
    return _cut(costs, parts, low)


def _cut(costs, parts, limit):
    """Greedy runs of total <= ``limit``, then split further (from the end) until there are ``parts``."""
    bounds, total = [0], 0
    for i, cost in enumerate(costs):
        if total + cost > limit:
            bounds.append(i)
            total = 0
        total += cost
    bounds.append(len(costs))
    while len(bounds) - 1 < parts:  # fewer runs than parts: cut the last multi-layer run before its last layer
        for k in range(len(bounds) - 1, 0, -1):
            if bounds[k] - bounds[k - 1] > 1:
                bounds.insert(k, bounds[k] - 1)
                break
    return bounds


def layer_costs(layers, by="params", example=None, repeat=3):
    """One integer cost per layer: its trainable parameter count (``by="params"``, at least 1 so that
    parameter-free layers still spread), or its median forward+backward time in microseconds on
    ``example`` (``by="time"``; the example flows through the layers in order)."""
    if by not in SPLIT_BY:
        raise ValueError(f"split by={by!r}; choose one of {', '.join(map(repr, SPLIT_BY))}")
    if by == "params":
        return [max(1, sum(p.numel() for p in layer.parameters() if p.requires_grad)) for layer in layers]
    if example is None:
        raise ValueError("split by='time' needs an example input batch to time the layers on")
    costs, x = [], example
    for layer in layers:
        times = []
        for _ in range(repeat):
            inp = x.detach().requires_grad_(x.is_floating_point())
            started = time.perf_counter()
            out = layer(inp)
            out.float().sum().backward()
            times.append(time.perf_counter() - started)
        costs.append(max(1, int(sorted(times)[len(times) // 2] * 1e6)))
        for p in layer.parameters():
            p.grad = None  # the timing's gradients are not training's
        with torch.no_grad():
            x = layer(x)
    return costs


def split_sequential(model, parts, by="params", example=None):
    """``model`` (an ``nn.Sequential``) cut into ``parts`` ``nn.Sequential`` chunks of balanced cost, sharing
    its layers (and so its parameters)."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"the model must be an nn.Sequential to be cut into stages, got {type(model).__name__}; "
                         f"pass a list of stage modules instead")
    layers = list(model)
    bounds = balanced_bounds(layer_costs(layers, by, example), parts)
    return [nn.Sequential(*layers[a:b]) for a, b in zip(bounds, bounds[1:])]
