"""Random-k with a shared seed against hvdkit.kernels.torch_reference."""
import pytest
import torch

from hvdkit.kernels import torch_ops as ops
from hvdkit.kernels import torch_reference as ref
from test_ops_support import DEVICES, SIZES, assert_bitwise_equal, random_vector


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("fraction", [0.0, 0.01, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_randomk_matches_reference(device, n, fraction, dtype):
    k = int(n * fraction) if fraction < 1 else n
    x = random_vector(n, seed=n, device=device, dtype=dtype)
    indices, values = ops.randomk(x, k, seed=2**64 - 5)
    expected_indices, expected_values = ref.randomk(x, k, seed=2**64 - 5)
    assert_bitwise_equal(indices, expected_indices)
    assert_bitwise_equal(values, expected_values)
    assert indices.numel() == k
    assert bool((indices[1:] > indices[:-1]).all()), "indices must be distinct and sorted"
    if k == n:
        assert torch.equal(indices.cpu(), torch.arange(n, dtype=torch.int32))


@pytest.mark.parametrize("device", DEVICES)
def test_every_rank_draws_the_same_indices(device):
    # Different gradients, same seed: same indices, so values can be allreduced.
    first = ops.randomk(random_vector(50_000, seed=1, device=device), 500, seed=11)[0]
    second = ops.randomk(random_vector(50_000, seed=2, device=device), 500, seed=11)[0]
    assert torch.equal(first, second)
    assert not torch.equal(first, ops.randomk(random_vector(50_000, seed=1, device=device), 500, seed=12)[0])


def test_each_element_is_picked_about_k_over_n_of_the_time():
    n, k, draws = 1000, 100, 400
    counts = torch.zeros(n)
    for seed in range(draws):
        counts[ops.randomk(torch.zeros(n), k, seed)[0].long()] += 1
    # Binomial(400, 0.1): mean 40, sd 6; over 1000 elements stay within ~5 sd.
    assert abs(counts.mean().item() - draws * k / n) < 1e-9
    assert counts.min().item() >= 10 and counts.max().item() <= 70
