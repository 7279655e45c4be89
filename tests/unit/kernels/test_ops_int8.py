"""Blockwise absmax int8 quantize / dequantize against hvdkit.kernels.torch_reference."""
import math

import pytest
import torch

from hvdkit.kernels import torch_ops as ops
from hvdkit.kernels import torch_reference as ref
from test_ops_support import (DEVICES, SIZES, SMALL_SIZES, assert_bitwise_equal, every_isa,  # noqa: F401
                              random_vector)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("block", [1, 7, 128, 384, 1024, 2048])  # CUDA: warp kernel for 128 * 2^i
@pytest.mark.parametrize("stochastic", [False, True])
def test_quantize_matches_reference(device, n, block, stochastic):
    x = random_vector(n, seed=n + block, device=device, scale=5.0)
    q, scales = ops.quantize_int8(x, block, stochastic, seed=42)
    expected_q, expected_scales = ref.quantize_int8(x, block, stochastic, seed=42)
    assert_bitwise_equal(q, expected_q)
    assert_bitwise_equal(scales, expected_scales)


@pytest.mark.parametrize("n", SMALL_SIZES)
@pytest.mark.parametrize("stochastic", [False, True])
def test_quantize_matches_reference_on_every_isa(every_isa, n, stochastic):
    x = random_vector(n, seed=9, scale=0.01)
    q, scales = ops.quantize_int8(x, 100, stochastic, seed=-7)
    expected_q, expected_scales = ref.quantize_int8(x, 100, stochastic, seed=-7)
    assert_bitwise_equal(q, expected_q)
    assert_bitwise_equal(scales, expected_scales)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("accumulate", [False, True])
def test_dequantize_matches_reference(device, n, accumulate):
    q, scales = ops.quantize_int8(random_vector(n, seed=2, device=device), 256)
    out = random_vector(n, seed=3, device=device)
    expected = out.clone()
    ops.dequantize_int8(q, scales, 256, out=out, accumulate=accumulate)
    ref.dequantize_int8(q, scales, 256, out=expected, accumulate=accumulate)
    assert_bitwise_equal(out, expected)


def test_dequantize_on_every_isa(every_isa):
    q, scales = ops.quantize_int8(random_vector(4099, seed=4), 33)
    assert_bitwise_equal(ops.dequantize_int8(q, scales, 33), ref.dequantize_int8(q, scales, 33))


@pytest.mark.parametrize("device", DEVICES)
def test_round_trip_error_is_within_half_a_step(device):
    x = random_vector(100_003, seed=5, device=device)
    q, scales = ops.quantize_int8(x, 512)
    error = (ops.dequantize_int8(q, scales, 512) - x).abs()
    step = scales.repeat_interleave(512)[:x.numel()]
    assert bool((error <= step * 0.5001).all())
    assert q.abs().max().item() == 127


@pytest.mark.parametrize("device", DEVICES)
def test_stochastic_rounding_is_unbiased_and_seeded(device):
    x = random_vector(4096, seed=6, device=device)
    mean = sum(ops.dequantize_int8(*ops.quantize_int8(x, 4096, True, seed), 4096) for seed in range(200)) / 200
    _, scales = ops.quantize_int8(x, 4096)
    # Each draw is off by < one step; the mean of 200 by ~step / sqrt(12 * 200).
    assert (mean - x).abs().max().item() < scales.item() * 0.25
    assert (mean - x).abs().mean().item() < scales.item() * 0.04
    same = ops.quantize_int8(x, 4096, True, seed=1)[0]
    assert torch.equal(same, ops.quantize_int8(x, 4096, True, seed=1)[0])
    assert not torch.equal(same, ops.quantize_int8(x, 4096, True, seed=2)[0])


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_block_decodes_to_nan_alone(device):
    x = random_vector(40, seed=7, device=device)
    x[3] = math.inf
    x[25] = math.nan
    q, scales = ops.quantize_int8(x, 10)
    assert torch.isnan(scales[[0, 2]]).all() and torch.isfinite(scales[[1, 3]]).all()
    assert (q[:10] == 0).all() and (q[20:30] == 0).all()
    decoded = ops.dequantize_int8(q, scales, 10)
    assert torch.isnan(decoded[:10]).all() and torch.isfinite(decoded[10:20]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_tiny_and_zero_blocks_code_to_zero(device):
    x = torch.tensor([1e-40, -3e-41, 0.0, 0.0, 0.0, 0.0], device=device)
    q, scales = ops.quantize_int8(x, 2)
    assert (q == 0).all() and torch.isfinite(scales).all()
    assert (ops.dequantize_int8(q, scales, 2) == 0).all()
