"""Top-k on sparse input (embedding buckets, early steps, ef=0) and the sparse
decode, checked against a few lines of numpy rather than hvdkit's references.

The payload always holds exactly k pairs; zeros are never selected, and the
slots left free hold the pad (index 0, value -0.0), a bitwise no-op for
scatter-add that leaves the residual alone. The decode adds duplicates in
payload order, the same on CPU and CUDA, and flags bad indices without a host
read when asked to poison. CUDA variants run where a GPU and hvdkit's CUDA
kernels are present (benchmarks/gpu_check.sh), and say why they skip elsewhere.
"""
import numpy as np
import pytest
import torch

from hvdkit.kernels import torch_ops as ops

CUDA = ops.backends()["cuda"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not CUDA, reason="no CUDA device here, or hvdkit was built without its CUDA kernels "
                     "(these run on a GPU machine through benchmarks/gpu_check.sh)"))]
PAD_BITS = np.uint32(0x80000000)  # -0.0


def sparse_input(n, nonzero, seed, negative_zero_at_0=True):
    """(x, residual) as float32 numpy arrays: `nonzero` random non-zero entries of
    c = x + residual with distinct magnitudes, +0.0 elsewhere, except c[0] = -0.0
    (-0.0 + -0.0) so that a kernel writing residual[0] for a pad is caught bit for bit."""
    rng = np.random.default_rng(seed)
    x = np.zeros(n, np.float32)
    residual = np.zeros(n, np.float32)
    where = rng.choice(np.arange(1, n), size=nonzero, replace=False)
    magnitudes = rng.permutation(np.arange(1, nonzero + 1, dtype=np.float32)) * np.float32(0.25)
    signs = np.where(rng.random(nonzero) < 0.5, np.float32(-1), np.float32(1))
    x[where] = magnitudes * signs * np.float32(0.75)
    residual[where] = magnitudes * signs * np.float32(0.25)
    if negative_zero_at_0:
        x[0] = residual[0] = np.float32(-0.0)
    return x, residual


def bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def run(x, residual, k, approx, device):
    """topk_ef on `device`; returns numpy (c, indices, values, new residual)."""
    c = x + residual
    xt, rt = torch.from_numpy(x).to(device), torch.from_numpy(residual).to(device)
    indices, values = ops.topk_ef(xt, rt, k, approx=approx)
    return c, indices.cpu().numpy(), values.cpu().numpy(), rt.cpu().numpy()


def check_payload(c, k, indices, values, kept):
    """What holds in both modes; returns the selected indices (pads dropped)."""
    assert indices.dtype == np.int32 and values.dtype == np.float32
    assert len(indices) == k and len(values) == k, "the payload must hold exactly k pairs"
    pad = bits(values) == PAD_BITS
    assert not indices[pad].any(), "pads are (0, -0.0)"
    chosen = indices[~pad]
    assert len(np.unique(chosen)) == len(chosen), "an index was selected twice"
    assert np.all(c[chosen] != 0), "a zero was selected"
    np.testing.assert_array_equal(bits(values[~pad]), bits(c[chosen]))
    # Decoded in payload order (pads included) + kept == c, bit for bit; where
    # nothing was selected the residual is c itself (residual[0] = -0.0 too).
    decoded = np.zeros_like(c)
    for i, v in zip(indices, values):
        decoded[i] += v
    np.testing.assert_array_equal(bits(decoded[chosen] + kept[chosen]), bits(c[chosen]))
    untouched = np.ones(len(c), bool)
    untouched[chosen] = False
    np.testing.assert_array_equal(bits(kept[untouched]), bits(c[untouched]))
    assert not kept[chosen].any()
    if 0 not in chosen and len(c):
        assert bits(kept[:1])[0] == bits(c[:1])[0], "padding touched residual[0]"
    return chosen


def numpy_topk(c, k):
    """Indices of the min(k, nonzero) largest |c| (magnitudes are distinct here)."""
    nonzero = np.flatnonzero(c)
    return nonzero[np.argsort(-np.abs(c[nonzero]), kind="stable")][:k]


# (n, non-zeros, k): 99 % zeros through the sampled path (n >= 65536, k <= n / 8)
# and the radix path (small n, or k > n / 8), k below, at and above the
# non-zero count, k = n, an all-zero input.
CASES = [
    (100_000, 1_000, 500),
    (100_000, 1_000, 1_000),
    (100_000, 1_000, 5_000),
    (4_099, 41, 20),
    (4_099, 41, 300),
    (4_099, 41, 4_099),
    (100_000, 0, 1_000),
    (1_000, 0, 1_000),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, nonzero, k", CASES)
def test_exact_topk_on_sparse_input(device, n, nonzero, k):
    x, residual = sparse_input(n, nonzero, seed=n + nonzero + k)
    c, indices, values, kept = run(x, residual, k, approx=False, device=device)
    chosen = check_payload(c, k, indices, values, kept)
    np.testing.assert_array_equal(np.sort(chosen), np.sort(numpy_topk(c, k)))
    assert len(chosen) == min(k, nonzero)  # every non-zero when k >= nnz


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, nonzero, k", CASES)
def test_approx_topk_on_sparse_input(device, n, nonzero, k):
    x, residual = sparse_input(n, nonzero, seed=n + nonzero + k)
    c, indices, values, kept = run(x, residual, k, approx=True, device=device)
    chosen = check_payload(c, k, indices, values, kept)
    assert min(ops.topk_approx_floor(k), nonzero) <= len(chosen) <= k
    if k >= 2 * nonzero:  # far fewer non-zeros than k: every one of them (the threshold clamps to non-zero)
        np.testing.assert_array_equal(np.sort(chosen), np.flatnonzero(c))
    if device == "cpu" and 0 < len(chosen):  # on CPU no unselected |c| is larger than a selected one
        unselected = np.ones(n, bool)
        unselected[chosen] = False
        assert np.abs(c[chosen]).min() >= np.abs(c[unselected]).max()


@pytest.mark.parametrize("device", DEVICES)
def test_approx_pads_do_not_touch_the_residual_when_dense(device):
    """Dense input: approx usually selects fewer than k; residual[0] (not selected) keeps c[0]."""
    rng = np.random.default_rng(3)
    n, k = 100_000, 1_000
    x = rng.standard_normal(n).astype(np.float32)
    residual = (rng.standard_normal(n) * 0.2).astype(np.float32)
    x[0] = np.float32(1e-3)  # small: never selected
    c, indices, values, kept = run(x, residual, k, approx=True, device=device)
    chosen = check_payload(c, k, indices, values, kept)
    assert 0 not in chosen and bits(kept[:1])[0] == bits(c[:1])[0]


# ---- scatter-add -------------------------------------------------------------------------------


def sequential_sum(indices, values, out):
    out = out.copy()
    for i, v in zip(indices, values):
        out[i] += v
    return out


def rank_payloads(ranks=3, n=1_000, k=400, seed=0):
    """Several ranks' top-k payloads end to end: many indices chosen by every rank,
    values of very different sizes (so the order of the adds shows), and pads."""
    rng = np.random.default_rng(seed)
    indices, values = [], []
    for r in range(ranks):
        chosen = rng.choice(n // 2, size=k - 50, replace=False).astype(np.int32)  # heavy overlap between ranks
        scale = np.float32(10.0) ** rng.integers(-6, 7, size=k - 50).astype(np.float32)
        indices += [chosen, np.zeros(50, np.int32)]
        values += [(rng.standard_normal(k - 50).astype(np.float32) * scale), np.full(50, -0.0, np.float32)]
    out = (np.random.default_rng(seed + 1).standard_normal(n)).astype(np.float32)
    out[0] = np.float32(-0.0)  # pads must leave it -0.0
    return np.concatenate(indices), np.concatenate(values), out


@pytest.mark.parametrize("device", DEVICES)
def test_scatter_add_sums_duplicates_in_payload_order(device):
    indices, values, out = rank_payloads()
    expected = sequential_sum(indices, values, out)
    for _ in range(2):  # the same on every run
        got = torch.from_numpy(out.copy()).to(device)
        ops.scatter_add(torch.from_numpy(indices).to(device), torch.from_numpy(values).to(device), got)
        np.testing.assert_array_equal(bits(got.cpu().numpy()), bits(expected))


@pytest.mark.parametrize("device", DEVICES)
def test_scatter_add_poison_marks_out_without_raising(device):
    out = torch.arange(10, dtype=torch.float32, device=device)
    before = out.clone()
    for bad in (10, -1):
        indices = torch.tensor([1, bad, 2], dtype=torch.int32, device=device)
        result = ops.scatter_add(indices, torch.ones(3, device=device), out, on_invalid="poison")
        assert result is out
        assert bool(torch.isnan(out[0]))
        assert torch.equal(out[1:], before[1:]), "nothing is added from a bad payload"
    empty = torch.zeros(0, device=device)  # nothing to poison, and still no error
    ops.scatter_add(torch.tensor([0], dtype=torch.int32, device=device), torch.ones(1, device=device), empty,
                    on_invalid="poison")


@pytest.mark.parametrize("device", DEVICES)
def test_scatter_add_raise_names_the_valid_range(device):
    out = torch.zeros(10, device=device)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 10\)"):
        ops.scatter_add(torch.tensor([3, 10], dtype=torch.int32, device=device), torch.ones(2, device=device), out,
                        on_invalid="raise")
    assert not out.any()


def test_scatter_add_checks_on_invalid():
    args = (torch.zeros(1, dtype=torch.int32), torch.ones(1), torch.zeros(2))
    with pytest.raises(ValueError, match="on_invalid"):
        ops.scatter_add(*args, on_invalid="ignore")
    with pytest.raises(TypeError, match="on_invalid"):
        ops.scatter_add(*args, on_invalid=True)


@pytest.mark.skipif(not CUDA, reason="no CUDA device here, or hvdkit was built without its CUDA kernels "
                                     "(this runs on a GPU machine through benchmarks/gpu_check.sh)")
def test_cuda_topk_and_poisoned_decode_never_synchronize():
    """Approximate top-k and the poisoning decode read nothing back to the host."""
    x, residual = sparse_input(100_000, 1_000, seed=9)
    x, residual = torch.from_numpy(x).cuda(), torch.from_numpy(residual).cuda()
    out = torch.zeros(100_000, device="cuda")
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for approx in (True, False):
            indices, values = ops.topk_ef(x, residual, 5_000, approx=approx)
            ops.scatter_add(indices, values, out, on_invalid="poison")
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert indices.numel() == 5_000 and bool(torch.isfinite(out).all())
