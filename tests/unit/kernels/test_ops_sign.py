"""One-bit scaled sign with error feedback, and its many-rank decode."""
import pytest
import torch

from hvdkit.kernels import torch_ops as ops
from hvdkit.kernels import torch_reference as ref
from test_ops_support import (DEVICES, SIZES, SMALL_SIZES, assert_bitwise_equal, every_isa,  # noqa: F401
                              num_threads, random_vector)


def check_against_reference(x, residual, block):
    """Bits exact; scales exact on CPU (the summation order is specified) and
    within float32 rounding of it on CUDA; residual exactly c - scale * sign(c)
    for the kernel's own scales."""
    c = x + residual
    expected_residual = residual.clone()
    expected_bits, expected_scales = ref.sign_ef(x, expected_residual, block)
    bits, scales = ops.sign_ef(x, residual, block)
    assert_bitwise_equal(bits, expected_bits)
    if x.device.type == "cpu":
        assert_bitwise_equal(scales, expected_scales)
        assert_bitwise_equal(residual, expected_residual)
    else:
        torch.testing.assert_close(scales, expected_scales, rtol=1e-5, atol=0.0)
    per_element = scales.repeat_interleave(block)[:c.numel()]
    assert_bitwise_equal(residual, c - torch.where(c >= 0, per_element, -per_element))
    return bits, scales


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("block", [8, 24, 1024])
def test_sign_ef_matches_reference(device, n, block):
    x = random_vector(n, seed=n, device=device)
    residual = random_vector(n, seed=n + 1, device=device, scale=0.3)
    check_against_reference(x, residual, block)


@pytest.mark.parametrize("n", SMALL_SIZES)
def test_sign_ef_on_every_isa(every_isa, n):
    check_against_reference(random_vector(n, seed=1), random_vector(n, seed=2), 40)


@pytest.mark.parametrize("device", DEVICES)
def test_error_feedback_invariant(device):
    # decoded + new residual == c up to the single rounding of c - scale * sign:
    # at most half an ulp of the new residual (checked in float64).
    x = random_vector(100_003, seed=3, device=device)
    residual = random_vector(100_003, seed=4, device=device, scale=0.5)
    c = (x + residual).double()
    bits, scales = ops.sign_ef(x, residual, 512)
    decoded = ops.sign_decode(bits, scales, x.numel(), 512).double()
    new_residual = residual.double()
    half_ulp = (torch.nextafter(residual.abs(), torch.tensor(float("inf"), device=device)) - residual.abs()).double() / 2
    assert bool(((decoded + new_residual - c).abs() <= half_ulp).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("ranks", [1, 3])
@pytest.mark.parametrize("accumulate", [False, True])
def test_sign_decode_matches_reference(device, n, ranks, accumulate):
    generator = torch.Generator().manual_seed(n)
    bits = torch.randint(0, 256, (ranks, -(-n // 8)), generator=generator, dtype=torch.uint8).to(device)
    scales = torch.rand(ranks, -(-n // 64), generator=generator).to(device)
    out = random_vector(n, seed=5, device=device)
    expected = out.clone()
    ops.sign_decode(bits, scales, n, 64, out=out, accumulate=accumulate)
    ref.sign_decode(bits, scales, n, 64, out=expected, accumulate=accumulate)
    assert_bitwise_equal(out, expected)


def test_sign_decode_on_every_isa(every_isa):
    generator = torch.Generator().manual_seed(6)
    bits = torch.randint(0, 256, (4, 513), generator=generator, dtype=torch.uint8)
    scales = torch.rand(4, 40, generator=generator)
    assert_bitwise_equal(ops.sign_decode(bits, scales, 4099, 104), ref.sign_decode(bits, scales, 4099, 104))


@pytest.mark.parametrize("device", DEVICES)
def test_decode_of_gathered_ranks_sums_each_ranks_reference(device):
    # Four simulated ranks encode their own gradients; the payloads, gathered
    # as 1-D concatenations (what allgather returns), decode in one call.
    n, block, ranks = 50_001, 256, 4
    payloads = []
    for r in range(ranks):
        x = random_vector(n, seed=10 + r, device=device)
        residual = random_vector(n, seed=20 + r, device=device, scale=0.1)
        payloads.append(ops.sign_ef(x, residual, block))
    bits = torch.cat([b for b, _ in payloads])
    scales = torch.cat([s for _, s in payloads])
    total = ops.sign_decode(bits, scales, n, block)
    expected = torch.zeros(n, device=device)
    for b, s in payloads:
        expected = expected + ref.sign_decode(b, s, n, block)
    assert_bitwise_equal(total, expected)


def test_sign_ef_is_the_same_with_more_threads():
    x, residual = random_vector(1_000_003, seed=7), random_vector(1_000_003, seed=8)
    other = residual.clone()
    with num_threads(1):
        one = ops.sign_ef(x, residual, 1024)
    with num_threads(2):
        two = ops.sign_ef(x, other, 1024)
    assert_bitwise_equal(two[0], one[0])
    assert_bitwise_equal(two[1], one[1])
    assert_bitwise_equal(other, residual)
