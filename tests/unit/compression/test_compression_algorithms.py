"""Every compression algorithm against plain-torch maths, with several ranks simulated in one process.

Each test compresses every rank's input with that rank's own BucketState,
combines payloads as the collectives would (sum when summable, concatenation
in rank order when gathered), decompresses, and checks the result and the
error-feedback state against formulas written out here.
"""
import math

import pytest
import torch

from hvdkit.kernels import torch_ops as kernels
from hvdkit.compression import BucketState, create
from hvdkit.compression.torch_ops import TorchOps

OPS = TorchOps()
RANKS = 3
N = 1000  # not a multiple of any block size used here


def inputs(seed, n=N, ranks=RANKS, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(n, generator=g) for _ in range(ranks)]


def states(compressor, n=N, ranks=RANKS, layout=()):
    result = []
    for r in range(ranks):
        state = BucketState(n, layout, peers=ranks, peer=r, seed=11)
        compressor.prepare(state, torch.zeros(1))
        result.append(state)
    return result


def combine(compressor, payloads):
    """What allreduce (sum) or allgather (concatenation in rank order) would hand every rank."""
    parts = list(zip(*payloads))
    if compressor.summable:
        out = []
        for tensors in parts:
            total = tensors[0].clone()
            for t in tensors[1:]:
                total = (total.float() + t.float()).to(total.dtype)
            out.append(total)
        return tuple(out)
    return tuple(torch.cat(tensors) for tensors in parts)


def exchange(compressor, xs, sts):
    """Every rank's decoded result (all equal) and the payloads of the first round. Each rank compresses
    into an attempt of its state, kept only when the result is finite (as the exchange does)."""
    works = [s.attempt() for s in sts]
    compressed = [compressor.compress(x, w) for x, w in zip(xs, works)]
    first = [p for p, _ in compressed]
    payloads, ctxs = first, [c for _, c in compressed]
    for round_index in range(compressor.rounds):
        reduced = combine(compressor, payloads)
        if round_index + 1 < compressor.rounds:
            nxt = [compressor.next_round(reduced, c) for c in ctxs]
            payloads, ctxs = [p for p, _ in nxt], [c for _, c in nxt]
    results = [compressor.decompress(reduced, c) for c in ctxs]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=0, atol=0, equal_nan=True, msg="ranks decoded differently")
    bad = not bool(torch.isfinite(results[0]).all())
    for s in sts:
        s.settle(bad, OPS.select)
    return results[0], first


def test_none_sums_exactly():
    c = create("none", OPS)
    xs = inputs(0)
    result, _ = exchange(c, xs, states(c))
    assert torch.equal(result, xs[0] + xs[1] + xs[2])


@pytest.mark.parametrize("name,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_casts_sum_the_rounded_values(name, dtype):
    c = create(name, OPS)
    xs = inputs(1)
    result, payloads = exchange(c, xs, states(c))
    if name == "fp16":
        expected = xs[0].half()
        for x in xs[1:]:
            expected = (expected.float() + x.half().float()).half()
        assert payloads[0][0].dtype == torch.float16
        assert torch.equal(result, expected.float())
    else:
        assert payloads[0][0].dtype == torch.int16  # bfloat16 bits: Horovod cannot gather bfloat16
        expected = sum(x.to(dtype).float() for x in xs)
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)
    assert (result - sum(xs)).abs().max() < 3 * 2 ** -7 * max(x.abs().max() for x in xs)


@pytest.mark.parametrize("name,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_cast_error_feedback_keeps_the_rounding_error_exactly(name, dtype):
    c = create(f"{name},ef=1", OPS)
    xs = inputs(2)
    sts = states(c)
    old = [s.residual.clone() for s in sts]
    exchange(c, xs, sts)
    for x, s, o in zip(xs, sts, old):
        sent = (x + o).to(dtype).float()
        assert torch.equal(sent + s.residual, x + o)


def test_fp16_saturates_instead_of_overflowing_and_feeds_back_the_excess():
    c = create("fp16,ef=1", OPS)
    x = torch.tensor([1e6, -1e6, 1.0])
    st = states(c, n=3, ranks=1)[0]
    (half,), _ = c.compress(x, st)
    assert torch.equal(half.float(), torch.tensor([65504.0, -65504.0, 1.0]))
    assert torch.equal(st.residual, torch.tensor([1e6 - 65504.0, -1e6 + 65504.0, 0.0]))


@pytest.mark.parametrize("block,stochastic", [(1024, False), (64, False), (100, True)])
def test_int8_sums_every_ranks_dequantized_payload(block, stochastic):
    c = create(f"int8:{block},ef=1,stochastic={int(stochastic)}", OPS)
    xs = inputs(3)
    sts = states(c)
    result, payloads = exchange(c, xs, sts)
    decoded = [kernels.dequantize_int8(q, s, block) for q, s in payloads]
    assert torch.equal(result, decoded[0] + decoded[1] + decoded[2])
    for x, d, st, (q, s) in zip(xs, decoded, sts, payloads):
        assert q.dtype == torch.int8 and s.numel() == math.ceil(N / block)
        step = s.repeat_interleave(block)[:N]
        assert bool(((x - d).abs() <= step * (1.0 if stochastic else 0.5) + 1e-7).all())
        torch.testing.assert_close(st.residual, x - d, rtol=0, atol=1e-6)


def test_int8_stochastic_rounding_differs_between_ranks_and_steps():
    c = create("int8:128,stochastic=1", OPS)
    x = torch.linspace(-1, 1, N)
    sts = states(c)
    q0 = c.compress(x, sts[0])[0][0]
    q1 = c.compress(x, sts[1])[0][0]
    sts[0].steps += 1
    q0_next = c.compress(x, sts[0])[0][0]
    assert not torch.equal(q0, q1) and not torch.equal(q0, q0_next)


@pytest.mark.parametrize("approx", [False, True])
def test_topk_sends_the_largest_and_keeps_the_rest(approx):
    ratio = 0.05
    c = create(f"topk:{ratio},approx={int(approx)}", OPS)
    k = math.ceil(ratio * N)
    xs = inputs(4)
    sts = states(c)
    old = [s.residual.clone() for s in sts]
    result, payloads = exchange(c, xs, sts)
    expected = torch.zeros(N)
    for x, o, st, (idx, val) in zip(xs, old, sts, payloads):
        cvec = x + o
        count = idx.numel()
        assert (count == k) if not approx else (kernels.topk_approx_floor(k) <= count <= k)
        assert torch.equal(val, cvec[idx.long()])
        kept = cvec.clone()
        kept[idx.long()] = 0
        assert torch.equal(st.residual, kept)
        threshold = cvec.abs().sort(descending=True).values[k - 1]
        assert bool((val.abs() >= threshold).all())
        expected.index_add_(0, idx.long(), val)
    assert torch.equal(result, expected)


def test_topk_error_feedback_eventually_sends_everything():
    c = create("topk:0.01", OPS)
    x = torch.randn(N, generator=torch.Generator().manual_seed(5))
    st = states(c, ranks=1)[0]
    sent = torch.zeros(N)
    for _ in range(20):
        result, _ = exchange(c, [x], [st])
        sent += result
    torch.testing.assert_close(sent + st.residual, 20 * x, rtol=1e-5, atol=1e-4)


def test_randomk_picks_the_same_positions_on_every_rank_and_sums_values():
    c = create("randomk:0.1", OPS)
    xs = inputs(6)
    sts = states(c)
    old = [s.residual.clone() for s in sts]
    result, payloads = exchange(c, xs, sts)
    k = math.ceil(0.1 * N)
    assert all(p[0].numel() == k for p in payloads)
    nonzero = torch.nonzero(result).flatten()
    assert nonzero.numel() <= k
    positions = torch.nonzero(sts[0].residual == 0).flatten()
    assert positions.numel() == k
    for st in sts[1:]:
        assert torch.equal(torch.nonzero(st.residual == 0).flatten(), positions)
    expected = torch.zeros(N)
    for x, o in zip(xs, old):
        cvec = x + o
        expected[positions] += cvec[positions]
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)
    for x, o, st in zip(xs, old, sts):
        mask = torch.ones(N, dtype=torch.bool)
        mask[positions] = False
        assert torch.equal(st.residual[mask], (x + o)[mask])


def test_randomk_positions_change_from_step_to_step():
    c = create("randomk:0.05", OPS)
    st = states(c, ranks=1)[0]
    x = torch.ones(N)
    c.compress(x, st)
    first = torch.nonzero(st.residual == 0).flatten()
    st.steps += 1
    st.residual.zero_()
    c.compress(x, st)
    assert not torch.equal(first, torch.nonzero(st.residual == 0).flatten())


@pytest.mark.parametrize("block", [1024, 64])
def test_onebit_decodes_scaled_signs_and_keeps_the_error(block):
    c = create(f"onebit,block={block}", OPS)
    xs = inputs(7)
    sts = states(c)
    old = [s.residual.clone() for s in sts]
    result, payloads = exchange(c, xs, sts)
    expected = torch.zeros(N)
    for x, o, st in zip(xs, old, sts):
        cvec = x + o
        blocks = cvec.split(block)
        scales = torch.stack([b.abs().mean() for b in blocks])
        decoded = torch.where(cvec >= 0, 1.0, -1.0) * scales.repeat_interleave(block)[:N]
        torch.testing.assert_close(decoded + st.residual, cvec, rtol=0, atol=1e-6)
        expected += decoded
    torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-6)
    assert payloads[0][0].dtype == torch.uint8 and payloads[0][0].numel() == math.ceil(N / 8)


def rank_one_layout():
    return ((0, (40, 25)), (1000, (10, 30)))


def test_powersgd_recovers_a_low_rank_sum_exactly():
    layout = rank_one_layout()
    n = 1000 + 300
    c = create("powersgd:1", OPS)
    g = torch.Generator().manual_seed(8)
    u1, v1, u2, v2 = (torch.randn(k, generator=g) for k in (40, 25, 10, 30))
    xs = [torch.cat([(a * torch.outer(u1, v1)).flatten(), (b * torch.outer(u2, v2)).flatten()])
          for a, b in ((1.0, 0.5), (2.0, -1.0), (-0.5, 3.0))]
    sts = states(c, n=n, layout=layout)
    result, payloads = exchange(c, xs, sts)
    torch.testing.assert_close(result, sum(xs), rtol=1e-4, atol=1e-4)
    assert payloads[0][0].numel() == 40 + 10  # P: rows x rank per matrix
    for st in sts[1:]:
        assert torch.equal(st.memory, sts[0].memory)  # warm-start Q identical everywhere


def test_powersgd_error_feedback_splits_the_global_error_between_ranks():
    layout = ((0, (20, 50)),)
    c = create("powersgd:2", OPS)
    xs = inputs(9)
    sts = states(c, layout=layout)
    result, _ = exchange(c, xs, sts)
    for x, st in zip(xs, sts):
        torch.testing.assert_close(st.residual, x - result / RANKS, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sum(st.residual for st in sts), sum(xs) - result, rtol=1e-4, atol=1e-4)


def test_powersgd_approximation_improves_with_warm_start():
    layout = ((0, (20, 50)),)
    c = create("powersgd:2,ef=0", OPS)
    x = torch.randn(N, generator=torch.Generator().manual_seed(10))
    st = states(c, ranks=1, layout=layout)[0]
    errors = [(exchange(c, [x], [st])[0] - x).norm().item() for _ in range(5)]
    assert errors[-1] < errors[0]


@pytest.mark.parametrize("shape,accepted", [((1000,), False), ((10, 10), False), ((64, 64), True),
                                            ((8, 3, 3, 3), False), ((64, 3, 3, 3), True)])
def test_powersgd_compresses_only_matrices_that_shrink(shape, accepted):
    assert create("powersgd:4", OPS).accepts(shape) is accepted


def test_powersgd_keeps_q_and_residual_when_the_result_is_not_finite():
    layout = ((0, (20, 50)),)
    c = create("powersgd:1", OPS)
    sts = states(c, layout=layout)
    exchange(c, inputs(11), sts)
    saved = [(s.memory.clone(), s.residual.clone()) for s in sts]
    xs = inputs(12)
    xs[1][3] = float("nan")
    result, _ = exchange(c, xs, sts)
    assert not bool(torch.isfinite(result).all())
    for st, (q, residual) in zip(sts, saved):
        assert torch.equal(st.memory, q) and torch.equal(st.residual, residual)


def test_powersgd_rejects_a_non_contiguous_layout():
    c = create("powersgd:1", OPS)
    st = BucketState(1000, ((0, (10, 10)), (200, (10, 10))))
    with pytest.raises(ValueError, match="contiguous"):
        c.prepare(st, torch.zeros(1))


EF_SPECS = ["topk:0.1", "topk:0.1,approx=1", "onebit,block=64", "int8,ef=1", "fp16,ef=1", "bf16,ef=1",
            "randomk:0.1", "powersgd:1"]


def one_rank_exchange(compressor, x, state):
    """Every round of one rank's exchange (its own payload is the reduced one)."""
    payload, ctx = compressor.compress(x, state)
    for _ in range(compressor.rounds - 1):
        payload, ctx = compressor.next_round(payload, ctx)
    return compressor.decompress(payload, ctx)


@pytest.mark.parametrize("spec", EF_SPECS)
def test_an_attempt_leaves_the_committed_state_alone_until_settled(spec):
    c = create(spec, OPS)
    st = states(c, ranks=1, layout=((0, (20, 50)),))[0]
    st.residual += 1.0
    before = st.residual.clone()
    memory = None if st.memory is None else st.memory.clone()
    x = torch.linspace(-3, 3, N)
    work = st.attempt()
    one_rank_exchange(c, x, work)
    assert torch.equal(st.residual, before), "the exchange wrote into the committed residual"
    st.settle(True, OPS.select)  # the step's result was not finite: nothing changes
    assert torch.equal(st.residual, before)
    assert memory is None or torch.equal(st.memory, memory)
    work = st.attempt()
    one_rank_exchange(c, x, work)
    candidate = work.residual.clone()
    st.settle(False, OPS.select)
    assert torch.equal(st.residual, candidate)
    assert not torch.equal(candidate, before)


@pytest.mark.parametrize("bad", [True, False])
def test_a_device_flag_settles_like_a_host_one(bad):
    c = create("topk:0.1", OPS)
    st, twin = states(c, ranks=2)
    for state in (st, twin):
        state.residual += 0.5
        c.compress(torch.linspace(-1, 1, N), state.attempt())
    st.settle(bad, OPS.select)
    twin.settle(torch.tensor(bad), OPS.select)
    assert torch.equal(st.residual, twin.residual)
    assert torch.equal(st.residual, torch.full((N,), 0.5)) is bad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int16])
def test_poisoned_payloads_decode_to_nan(dtype):
    x = torch.zeros(5, dtype=dtype)
    poisoned = OPS.poison(x)
    assert torch.equal(x, torch.zeros(5, dtype=dtype))  # the original is untouched
    decoded = poisoned.view(torch.bfloat16).float() if dtype == torch.int16 else poisoned.float()
    assert math.isnan(decoded[0].item())


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_orthogonalize_gives_orthonormal_columns(rank):
    m = torch.randn(30, rank, generator=torch.Generator().manual_seed(rank))
    q = OPS.orthogonalize(m)
    torch.testing.assert_close(q.t() @ q, torch.eye(rank), rtol=0, atol=1e-5)
    # Same column space: projecting m onto q recovers it.
    torch.testing.assert_close(q @ (q.t() @ m), m, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("values,finite", [([1.0, 2.0], True), ([3e38, 3e38], True), ([1.0, float("nan")], False),
                                           ([float("inf"), -float("inf")], False), ([], True)])
def test_all_finite_is_exact_even_when_the_sum_overflows(values, finite):
    assert OPS.all_finite(torch.tensor(values, dtype=torch.float32)) is finite
