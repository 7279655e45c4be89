"""Top-k with error feedback (exact and approximate) and scatter-add decode."""
import pytest
import torch

from hvdkit.kernels import torch_ops as ops
from hvdkit.kernels import torch_reference as ref
from test_ops_support import DEVICES, SIZES, assert_bitwise_equal, every_isa, num_threads, random_vector  # noqa: F401


NEGATIVE_ZERO_BITS = -2**31  # -0.0 seen as int32


def selected_mask(indices, values):
    """Which of the k pairs are real selections; the others must be the pad (0, -0.0)."""
    pad = values.view(torch.int32) == NEGATIVE_ZERO_BITS
    assert not bool(indices[pad].any()), "a pad has an index other than 0"
    return ~pad


def run_topk(x, residual, k, approx):
    """Runs topk_ef and checks what holds for both modes; returns (c, indices, values) of the
    selected entries (pads dropped)."""
    c = x + residual
    indices, values = ops.topk_ef(x, residual, k, approx)
    assert indices.dtype == torch.int32 and values.dtype == torch.float32
    assert indices.numel() == k and values.numel() == k, "the payload must hold exactly k pairs"
    selected = selected_mask(indices, values)
    # Decoded as the exchange does it (pads add -0.0) + what was kept == c, bit for bit.
    decoded = torch.zeros_like(c)
    ops.scatter_add(indices, values, decoded)
    assert_bitwise_equal(decoded + residual, c)
    indices, values = indices[selected], values[selected]
    assert indices.unique().numel() == indices.numel(), "indices repeat"
    assert_bitwise_equal(values, c[indices.long()])
    assert not bool((values == 0).any()), "a zero was selected"
    assert bool((residual[indices.long()] == 0).all())
    if x.numel() and not bool((indices == 0).any()):
        assert_bitwise_equal(residual[:1], c[:1])  # padding leaves residual[0] alone
    return c, indices, values


def check_exact(x, residual, k):
    expected_residual = residual.clone()
    _, expected_values = ref.topk_ef(x, expected_residual, k)
    c, indices, values = run_topk(x, residual, k, approx=False)
    assert indices.numel() == min(k, int((c != 0).sum()))
    # The same multiset of magnitudes as torch.topk (ties may pick other indices).
    expected_values = expected_values[expected_values != 0]
    assert_bitwise_equal(values.abs().sort().values, expected_values.abs().sort().values.to(values.device))


def check_approx(x, residual, k):
    c, indices, _ = run_topk(x, residual, k, approx=True)
    nonzero = int((c != 0).sum())
    assert min(ops.topk_approx_floor(k), nonzero) <= indices.numel() <= k
    if x.device.type == "cpu" and 0 < indices.numel() < c.numel():
        unselected = torch.ones_like(c, dtype=torch.bool)
        unselected[indices.long()] = False
        keys = c.abs().view(torch.int32)  # orders |c| with NaN above Inf, as torch.topk does
        assert keys[indices.long()].min() >= keys[unselected].max()
    return indices.numel()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.3, 1.0])
@pytest.mark.parametrize("approx", [False, True])
def test_topk_on_random_gradients(device, n, fraction, approx):
    k = int(n * fraction) if fraction < 1 else n
    x = random_vector(n, seed=n, device=device)
    residual = random_vector(n, seed=n + 1, device=device, scale=0.2)
    (check_approx if approx else check_exact)(x, residual, k)


@pytest.mark.parametrize("approx", [False, True])
def test_topk_on_every_isa(every_isa, approx):
    for n, k in [(1023, 10), (300_001, 3000)]:
        x, residual = random_vector(n, seed=k), random_vector(n, seed=1)
        (check_approx if approx else check_exact)(x, residual, k)


def layered_gradient(device):
    """Layers whose scales differ by orders of magnitude, as in a fused bucket."""
    parts = [random_vector(n, seed=i, scale=10.0 ** (i % 5 - 2)) for i, n in enumerate([5000, 200_000, 300, 90_000] * 3)]
    return torch.cat(parts).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("approx", [False, True])
def test_topk_on_hard_inputs(device, approx):
    check = check_approx if approx else check_exact
    n = 200_000
    zeros = torch.zeros(n, device=device)
    layered = layered_gradient(device)
    check(layered, torch.zeros_like(layered), 5_000)
    check(torch.ones(n, device=device), zeros.clone(), 2_000)  # every magnitude ties
    sparse = torch.zeros(n, device=device)
    sparse[::1000] = 1.0 + torch.arange(200, device=device, dtype=torch.float32)
    check(sparse, zeros.clone(), 2_000)  # fewer non-zeros than k
    with_nan = random_vector(n, seed=2, device=device)
    with_nan[[5, 77_777]] = float("nan")
    with_nan[9] = float("inf")
    check(with_nan, zeros.clone(), 1_000)


def test_exact_topk_takes_nan_and_inf_first():
    x = random_vector(100_000, seed=3)
    x[[11, 99_000]] = float("nan")
    x[500] = -float("inf")
    indices, _ = ops.topk_ef(x, torch.zeros_like(x), 3)
    assert sorted(indices.tolist()) == [11, 500, 99_000]


def test_approx_count_is_close_to_k_on_gradients():
    counts = [check_approx(random_vector(1_000_000, seed=s), torch.zeros(1_000_000), 10_000) for s in range(5)]
    assert min(counts) >= 9_000


def test_topk_is_the_same_with_more_threads():
    x, residual = random_vector(2_000_003, seed=4), random_vector(2_000_003, seed=5)
    other = residual.clone()
    with num_threads(1):
        one = ops.topk_ef(x, residual, 20_000)
    with num_threads(2):
        two = ops.topk_ef(x, other, 20_000)
    assert_bitwise_equal(other, residual)
    assert torch.equal(one[0].sort().values, two[0].sort().values)


@pytest.mark.parametrize("device", DEVICES)
def test_scatter_add_of_many_ranks_matches_reference(device):
    n, ranks, k = 300_001, 4, 3_000
    pairs = []
    for r in range(ranks):
        x = random_vector(n, seed=30 + r, device=device)
        pairs.append(ops.topk_ef(x, torch.zeros_like(x), k))
    indices = torch.cat([i for i, _ in pairs])
    values = torch.cat([v for _, v in pairs])
    out = random_vector(n, seed=6, device=device)
    expected = out.clone()
    ops.scatter_add(indices, values, out)
    ref.scatter_add(indices, values, expected)
    assert_bitwise_equal(out, expected)  # in input order on CPU and CUDA alike


@pytest.mark.parametrize("device", DEVICES)
def test_scatter_add_rejects_out_of_range_without_writing(device):
    out = torch.zeros(10, device=device)
    for bad in (10, -1):
        with pytest.raises(ValueError, match="indices"):
            ops.scatter_add(torch.tensor([1, bad, 2], dtype=torch.int32, device=device),
                            torch.ones(3, device=device), out)
    assert not out.any()


def test_scatter_add_with_duplicates_and_threads():
    generator = torch.Generator().manual_seed(7)
    indices = torch.randint(0, 1000, (500_000,), generator=generator, dtype=torch.int32)
    values = torch.randn(500_000, generator=generator)
    expected = ref.scatter_add(indices, values, torch.zeros(1000))
    with num_threads(2):
        assert_bitwise_equal(ops.scatter_add(indices, values, torch.zeros(1000)), expected)
