"""Fused pack / unpack and scaled casts against hvdkit.kernels.torch_reference."""
import pytest
import torch

from hvdkit.kernels import torch_ops as ops
from hvdkit.kernels import torch_reference as ref
from test_ops_support import (DEVICES, SIZES, SMALL_SIZES, assert_bitwise_equal, every_isa,  # noqa: F401
                              num_threads, random_vector, resnet_tensors)

FLOATS = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("source", FLOATS)
@pytest.mark.parametrize("target", FLOATS)
def test_cast_matches_reference(device, n, source, target):
    # Scaled by 64, some values leave the float16 range and must saturate.
    x = random_vector(n, seed=n, device=device, scale=1000.0, dtype=source)
    y, nonfinite = ops.cast(x, target, scale=64.0)
    expected, expected_nonfinite = ref.cast(x, target, scale=64.0)
    assert_bitwise_equal(y, expected)
    assert nonfinite.device == x.device and not nonfinite.item() and not expected_nonfinite.item()


@pytest.mark.parametrize("n", SMALL_SIZES)
@pytest.mark.parametrize("target", FLOATS)
def test_cast_matches_reference_on_every_isa(every_isa, n, target):
    x = random_vector(n, seed=3, scale=3e4)
    assert_bitwise_equal(ops.cast(x, target, scale=3.0)[0], ref.cast(x, target, scale=3.0)[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("target", [torch.float16, torch.bfloat16])
def test_cast_saturates_finite_and_flags_nonfinite(device, target):
    limit = torch.finfo(target).max
    x = torch.tensor([3.4e38, -3.4e38, 1.0, float("nan"), float("inf"), -float("inf")] * 3, device=device)
    y, nonfinite = ops.cast(x, target)
    assert nonfinite.item()
    assert y[:3].tolist() == [limit, -limit, 1.0]
    assert torch.isnan(y[3]) and y[4].item() == float("inf") and y[5].item() == -float("inf")
    _, finite_flag = ops.cast(x[:3], target)
    assert not finite_flag.item()


@pytest.mark.parametrize("device", DEVICES)
def test_cast_flags_overflow_of_the_scaled_value(device):
    _, nonfinite = ops.cast(torch.full((5,), 1e30, device=device), torch.float32, scale=1e10)
    assert nonfinite.item()


def test_float16_conversions_are_exact_on_every_isa(every_isa):
    # Every float16 value, and for each the float32 values at, just below and just
    # above the midpoint to its neighbour (round-half-to-even and subnormals).
    halves = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    assert_bitwise_equal(ops.cast(halves, torch.float32)[0], halves.float())
    finite = halves[torch.isfinite(halves)].float().sort().values
    midpoints = (finite[:-1].double() + finite[1:].double()) / 2
    near = torch.cat([midpoints.float(), torch.nextafter(midpoints.float(), torch.tensor(-1e9)),
                      torch.nextafter(midpoints.float(), torch.tensor(1e9)), finite])
    assert_bitwise_equal(ops.cast(near, torch.float16)[0], ref.cast(near, torch.float16)[0])
    assert_bitwise_equal(ops.cast(near, torch.bfloat16)[0], ref.cast(near, torch.bfloat16)[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flat_dtype", FLOATS)
@pytest.mark.parametrize("scale", [1.0, 0.125, 3.0])
def test_pack_resnet_list_matches_reference(device, flat_dtype, scale):
    tensors = resnet_tensors(device)
    assert len(tensors) >= 150
    assert_bitwise_equal(ops.pack(tensors, flat_dtype, scale), ref.pack(tensors, flat_dtype, scale))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flat_dtype", FLOATS)
@pytest.mark.parametrize("tensor_dtype", FLOATS)
@pytest.mark.parametrize("accumulate", [False, True])
def test_unpack_matches_reference(device, flat_dtype, tensor_dtype, accumulate):
    tensors = resnet_tensors(device, tensor_dtype)
    flat = random_vector(sum(t.numel() for t in tensors), seed=1, device=device, dtype=flat_dtype)
    expected = [t.clone() for t in tensors]
    ops.unpack(flat, tensors, scale=0.5, accumulate=accumulate)
    ref.unpack(flat, expected, scale=0.5, accumulate=accumulate)
    for got, want in zip(tensors, expected):
        assert_bitwise_equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_pack_mixes_sizes_and_dtypes(device):
    tensors = [random_vector(n, seed=n, device=device, dtype=dtype)
               for n, dtype in zip(SIZES, [torch.float16, torch.float32, torch.bfloat16, torch.float32, torch.float16])]
    for flat_dtype in FLOATS:
        assert_bitwise_equal(ops.pack(tensors, flat_dtype), ref.pack(tensors, flat_dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [1.0, 0.25, 8.0])
def test_pack_unpack_round_trip_is_bit_exact(device, scale):
    originals = resnet_tensors(device)
    copies = [torch.empty_like(t) for t in originals]
    ops.unpack(ops.pack(originals, scale=scale), copies, scale=1.0 / scale)
    for got, want in zip(copies, originals):
        assert_bitwise_equal(got, want)
    halves = [t.half() for t in originals]
    copies = [torch.empty_like(t) for t in halves]
    ops.unpack(ops.pack(halves, torch.float32), copies)
    for got, want in zip(copies, halves):
        assert_bitwise_equal(got, want)


def test_pack_unpack_on_every_isa(every_isa):
    tensors = [random_vector(n, seed=n, scale=100.0) for n in SMALL_SIZES]
    for flat_dtype in FLOATS:
        flat = ops.pack(tensors, flat_dtype, scale=2.0)
        assert_bitwise_equal(flat, ref.pack(tensors, flat_dtype, scale=2.0))
        got = [t.clone() for t in tensors]
        want = [t.clone() for t in tensors]
        ops.unpack(flat, got, scale=0.5, accumulate=True)
        ref.unpack(flat, want, scale=0.5, accumulate=True)
        for a, b in zip(got, want):
            assert_bitwise_equal(a, b)


def test_pack_is_the_same_with_more_threads():
    tensors = resnet_tensors(width_divisor=2)
    with num_threads(1):
        one = ops.pack(tensors, torch.float16)
    with num_threads(2):
        two = ops.pack(tensors, torch.float16)
    assert_bitwise_equal(two, one)


def test_pack_of_no_tensors_is_empty():
    assert ops.pack([], torch.float16).shape == (0,)
    ops.unpack(torch.empty(0), [])


@pytest.mark.parametrize("device", DEVICES)
def test_pack_and_cast_write_into_out(device):
    tensors = resnet_tensors(device)
    out = torch.empty(sum(t.numel() for t in tensors), dtype=torch.bfloat16, device=device)
    assert ops.pack(tensors, scale=2.0, out=out) is out
    assert_bitwise_equal(out, ref.pack(tensors, torch.bfloat16, 2.0))
    x = random_vector(1023, seed=1, device=device, scale=1e5)
    y = torch.empty(1023, dtype=torch.float16, device=device)
    result, nonfinite = ops.cast(x, torch.float16, out=y)
    assert result is y and not nonfinite.item()
    assert_bitwise_equal(y, ref.cast(x, torch.float16)[0])
