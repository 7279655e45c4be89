"""``hvdkit.torch.join()`` with hvdkit's DistributedOptimizer: the last rank runs out of data first and joins; the
others go on stepping with it contributing zeros, as Horovod defines join (an average still divides by the
world size), then join too. Gradients are ``c`` for a loss ``(p * c).sum()``, so the numpy reference is the sum
of the active ranks' ``c`` over the world size. Exchanges Horovod cannot complete with a joined rank (gathers,
sparse allgathers, before the first step) are refused by ``join()`` on the rank calling it, never a hang."""
import numpy as np
import pytest
import torch

import hvdkit.torch as hvdkit_torch

pytestmark = [pytest.mark.timeout(90), pytest.mark.joins]  # a hang fails here; the tests want seconds

SHAPES = {"w": (24, 16), "b": (40,)}
STEPS_OF_EARLY = 1  # steps of the last rank, which joins first
STEPS = 3  # steps of the others


@pytest.fixture(autouse=True)
def started(hvd):
    hvdkit_torch.init()
    if hvd.size() == 1:
        pytest.skip("join needs a rank that goes on without the joined one")


def coefficients(rank, step):
    """Rank ``rank``'s gradient of each parameter at ``step``, computable by any rank."""
    rng = np.random.default_rng([rank, step, 17])
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        for name, shape in SHAPES.items():
            self.register_parameter(name, torch.nn.Parameter(torch.zeros(shape)))


def wrap(model, compression):
    return hvdkit_torch.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                             named_parameters=model.named_parameters(), compression=compression,
                                             fusion_mb=0.001)


def step(model, optimizer, rank, index):
    optimizer.zero_grad()
    c = coefficients(rank, index)
    sum((p * torch.from_numpy(c[name])).sum() for name, p in model.named_parameters()).backward()
    optimizer.step()
    return {name: p.grad.detach().numpy().copy() for name, p in model.named_parameters()}


def expected(active, index, size):
    """Horovod's average with joined ranks contributing zeros: the active ranks' sum over the world size."""
    return {name: sum(coefficients(r, index)[name].astype(np.float64) for r in active) / size for name in SHAPES}


def run_with_join(hvd, compression):
    """Every rank steps, the last one fewer times; returns (per-step results of this rank, join's value)."""
    rank, size = hvd.rank(), hvd.size()
    model = Model()
    optimizer = wrap(model, compression)
    steps = STEPS_OF_EARLY if rank == size - 1 else STEPS
    results = [step(model, optimizer, rank, index) for index in range(steps)]
    last = hvdkit_torch.join()
    return model, optimizer, results, last


def check_last(hvd, last):
    """join() returns the same rank everywhere, and not the one that joined first."""
    assert last != hvd.size() - 1
    assert hvd.allgather_object(last, name="test_join.last") == [last] * hvd.size()


@pytest.mark.parametrize("compression,tolerance", [("none", 1e-6), ("fp16", 2e-3)])
def test_dense_exchange_averages_a_joined_ranks_zeros(hvd, compression, tolerance):
    rank, size = hvd.rank(), hvd.size()
    model, optimizer, results, last = run_with_join(hvd, compression)
    check_last(hvd, last)
    for index, got in enumerate(results):
        active = range(size) if index < STEPS_OF_EARLY else range(size - 1)
        want = expected(active, index, size)
        for name in SHAPES:
            np.testing.assert_allclose(got[name], want[name], rtol=tolerance, atol=tolerance,
                                       err_msg=f"{compression} step {index} {name}")
    got = step(model, optimizer, rank, STEPS)  # after join every rank steps again: the full average
    want = expected(range(size), STEPS, size)
    for name in SHAPES:
        np.testing.assert_allclose(got[name], want[name], rtol=tolerance, atol=tolerance)


def test_randomk_takes_the_last_ranks_seeds_after_join(hvd):
    """Random-k's positions follow a per-bucket step count; the rank that joined early missed steps, so
    without join() handing on the last rank's counts the ranks would send values at different positions."""
    rank, size = hvd.rank(), hvd.size()
    model, optimizer, results, last = run_with_join(hvd, "randomk:0.25,ef=0,min_numel=0")
    check_last(hvd, last)
    after = {index: step(model, optimizer, rank, index) for index in (STEPS, STEPS + 1)}  # every rank again
    for index, got in [*enumerate(results), *after.items()]:
        active = range(size) if index < STEPS_OF_EARLY or index >= STEPS else range(size - 1)
        want = expected(active, index, size)
        sent = 0
        for name in SHAPES:
            kept = got[name] != 0
            sent += int(kept.sum())
            np.testing.assert_allclose(got[name][kept], want[name][kept], rtol=1e-5, atol=1e-6,
                                       err_msg=f"step {index} {name}")
        assert sent > 0
    everyone = hvd.allgather_object([g.tobytes() for got in after.values() for g in got.values()],
                                    name="test_join.randomk")
    assert all(other == everyone[0] for other in everyone), "after join the ranks applied different gradients"


def test_powersgd_projects_the_active_ranks_sum(hvd):
    """PowerSGD's two allreduce rounds with a joined rank's zeros give P P^T M for M the active ranks' sum
    (P: orthonormal, rank <= 2); after join every rank holds the last rank's Q and step counts."""
    rank, size = hvd.rank(), hvd.size()
    spec = "powersgd:2,ef=0,start_iter=0,min_compression_rate=1"
    model, optimizer, results, last = run_with_join(hvd, spec)
    check_last(hvd, last)
    for index, got in enumerate(results):
        active = range(size) if index < STEPS_OF_EARLY else range(size - 1)
        m = expected(active, index, size)["w"]
        u, s, _ = np.linalg.svd(got["w"].astype(np.float64))
        basis = u[:, :int((s > 1e-6 * s[0]).sum())]
        assert basis.shape[1] <= 2
        np.testing.assert_allclose(got["w"], basis @ basis.T @ m, rtol=1e-4, atol=1e-5, err_msg=f"step {index}")
    reducer = optimizer._reducer
    state = {key: (s.steps, None if s.memory is None else s.memory.numpy().tobytes())
             for key, s in reducer.states.items()}
    everyone = hvd.allgather_object((reducer.steps, state), name="test_join.powersgd")
    assert all(other == everyone[0] for other in everyone)


@pytest.mark.parametrize("compression", ["topk:0.1", "onebit", "int8", "bf16"])
def test_gathered_compression_is_refused(hvd, compression):
    """Horovod fails allgathers and alltoalls while a rank has joined: join() refuses before joining, on
    every rank here (each calls it after the same steps), naming the compression and what works."""
    rank = hvd.rank()
    model = Model()
    optimizer = wrap(model, compression)
    step(model, optimizer, rank, 0)
    with pytest.raises(ValueError) as info:
        hvdkit_torch.join()
    message = str(info.value)
    assert f"compression='{compression}" in message and "compression none, fp16" in message, message
    del info, optimizer
    step_after = wrap(model, "none")  # nothing was joined: the ranks still exchange as before
    got = step(model, step_after, rank, 1)
    want = expected(range(hvd.size()), 1, hvd.size())
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6, atol=1e-6)


def test_join_before_the_first_step_is_refused(hvd):
    model = Model()
    optimizer = wrap(model, "none")
    with pytest.raises(ValueError, match="before this optimizer's first step.*step once first"):
        hvdkit_torch.join()
    del optimizer


def test_sparse_gradients_are_refused(hvd):
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    optimizer = hvdkit_torch.DistributedOptimizer(torch.optim.SGD(embedding.parameters(), lr=0.1),
                                                  named_parameters=embedding.named_parameters())
    optimizer.zero_grad()
    embedding(torch.tensor([1, 2])).sum().backward()
    optimizer.step()
    with pytest.raises(ValueError, match="sparse gradients of weight .*sparse_as_dense=True"):
        hvdkit_torch.join()
    del optimizer
