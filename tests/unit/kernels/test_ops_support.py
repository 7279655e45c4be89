"""Inputs and helpers shared by the tests of hvdkit.ops (this file holds no tests).

Tests run every op on each device the kernels support here, and the CPU ops on
each instruction set this CPU runs (scalar, AVX2, AVX-512), since each has its
own inner loops.
"""
import contextlib

import pytest
import torch

from hvdkit.kernels import torch_ops as ops
from hvdkit.kernels import torch_reference as ref

SIZES = [0, 1, 7, 1023, 2**20 + 3]
SMALL_SIZES = [0, 1, 7, 1023, 4099]  # for loops over every instruction set
DEVICES = ["cpu"] + (["cuda"] if ops.backends()["cuda"] else [])
CPU_ISAS = ops.backends()["cpu_isas"]

_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@contextlib.contextmanager
def cpu_isa(name):
    previous = ops.set_cpu_isa(name)
    try:
        yield
    finally:
        ops.set_cpu_isa(previous)


@contextlib.contextmanager
def num_threads(count):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(params=CPU_ISAS)
def every_isa(request):
    """Runs the test once per CPU instruction set."""
    with cpu_isa(request.param):
        yield request.param


def random_vector(n, seed, device="cpu", scale=1.0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=generator) * scale).to(dtype).to(device)


def resnet_tensors(device="cpu", dtype=torch.float32, width_divisor=8, seed=0):
    """A ResNet-50-shaped list of 161 gradients (narrower by width_divisor)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(dtype).to(device)
            for shape in ref.resnet50_shapes(width_divisor)]


def assert_bitwise_equal(actual, expected):
    """Same dtype, shape and bits; NaNs only need to be NaN in both (payloads
    of a NaN are not part of any op's contract)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    actual, expected = actual.cpu(), expected.cpu()
    if actual.is_floating_point():
        nan = torch.isnan(actual)
        assert torch.equal(nan, torch.isnan(expected)), "NaN positions differ"
        view = _INT_VIEW[actual.dtype]
        differ = (actual.view(view) != expected.view(view)) & ~nan
        assert not differ.any(), (
            f"{int(differ.sum())} values differ, first at {int(differ.nonzero()[0])}: "
            f"{actual[differ][:4].tolist()} vs {expected[differ][:4].tolist()}")
    else:
        assert torch.equal(actual, expected)
