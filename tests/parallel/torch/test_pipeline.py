"""Pipeline parallelism (``hvdkit.torch.pipeline``) trains exactly as one process does.

Every rank builds the same 8-layer model and cuts it by hand into the chunks a layout needs; the
pipeline (PyTorch's schedules over gloo, stage replicas averaged by hvdkit on Horovod process sets)
trains a few steps of SGD with momentum on slices of a global batch, and each rank's chunks must
equal the same layers of one plain-torch model trained on the whole global batch. Layouts by world
size: 1 rank, one stage (the pipeline machinery with nothing to pipe); 2 ranks, 2 stages; 4 ranks
(2 emulated nodes), 2 stages x 2 replicas.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hvdkit.torch.pipeline as pp

pytestmark = [pytest.mark.timeout(120), pytest.mark.uneven_ops]

SCHEDULES = tuple(pp.SCHEDULES)  # gpipe, 1f1b, interleaved, zero-bubble
STEPS = 3
GLOBAL_BATCH = 16
MICROBATCHES = 4
LR, MOMENTUM = 0.1, 0.9
LAYERS = 8  # divides into 1, 2, 4 and 8 chunks


def world_size():
    from hvdkit.runtime.launcher import launcher_world_size

    return launcher_world_size()


def stage_count(size):
    """2 stages wherever 2 divides the world, else 1 (a world of one)."""
    return 2 if size % 2 == 0 else 1


@pytest.fixture(scope="module", autouse=True)
def horovod_with_stage_sets():
    """Horovod started with the replica process sets of every stage count used here (in the full parallel
    matrix an earlier file has started it; its node sets are then the replica sets of the 2 x 2 layout)."""
    size = world_size()
    pp.init(1, stage_count(size))


def make_layers():
    torch.manual_seed(0)
    widths = [6, 16, 16, 16, 16]
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    layers[-1] = nn.Linear(16, 3)  # logits: 4 Linear/Tanh pairs with the last Tanh replaced
    assert len(layers) == LAYERS
    return layers


def by_hand(layers, count):
    per = LAYERS // count
    return [nn.Sequential(*layers[i * per:(i + 1) * per]) for i in range(count)]


def flatten_first(layers, count):
    """A first chunk without parameters (a Flatten: a no-op on these inputs, as in hvdkit train's mlp), then
    the layers in ``count - 1`` chunks."""
    bounds = [round(LAYERS * k / (count - 1)) for k in range(count)]
    return [nn.Sequential(nn.Flatten())] + [nn.Sequential(*layers[a:b]) for a, b in zip(bounds, bounds[1:])]


def global_batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 6, generator=g), torch.randint(0, 3, (GLOBAL_BATCH,), generator=g))
            for _ in range(STEPS)]


def single_process(replica, replicas):
    """Plain torch on the whole global batch: the trained layers, and the loss of ``replica``'s slice of each
    step's batch before that step's update."""
    model = nn.Sequential(*make_layers())
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    n = GLOBAL_BATCH // replicas
    slice_losses = []
    for x, y in global_batches():
        with torch.no_grad():
            slice_losses.append(F.cross_entropy(model(x[replica * n:(replica + 1) * n]),
                                                y[replica * n:(replica + 1) * n]).item())
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return list(model), slice_losses


def train_pipeline(schedule, stages, compression="none", cut=by_hand):
    virtual = 2 if pp.SCHEDULES[schedule][1] else 1  # the multi-chunk schedules: 2 chunks per rank
    pipe = pp.build(cut(make_layers(), stages * virtual),
                    lambda params: torch.optim.SGD(params, lr=LR, momentum=MOMENTUM),
                    stages=stages, microbatches=MICROBATCHES, schedule=schedule, compression=compression)
    n = GLOBAL_BATCH // pipe.layout.replicas
    r = pipe.layout.replica
    losses = [pipe.step(x[r * n:(r + 1) * n], y[r * n:(r + 1) * n]) for x, y in global_batches()]
    return pipe, losses


def expected_chunks(pipe, layers, cut=by_hand):
    chunks = cut(layers, pipe.num_chunks)
    return [chunks[i] for i in pipe.chunks]


def assert_replicas_identical(pipe):
    """Every replica of this rank's stage holds bit-identical parameters."""
    import horovod.torch as hvd

    flat = torch.cat([p.detach().reshape(-1) for p in pipe.modules.parameters()])
    everyone = hvd.allgather_object((pipe.layout.stage, flat), name="test.pipeline.replicas")
    mine = [v for stage, v in everyone if stage == pipe.layout.stage]
    assert len(mine) == pipe.layout.replicas
    for other in mine:
        assert torch.equal(other, flat), "replicas of one stage drifted apart"


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_pipeline_equals_single_process_training(schedule):
    assert_trains_as_one_process(schedule, by_hand)


@pytest.mark.parametrize("schedule", [name for name, (_, several) in pp.SCHEDULES.items() if several])
def test_the_chunk_after_a_parameterless_first_chunk_trains(schedule):
    """PyTorch's zero-bubble weight pass gives no weight gradients to a chunk whose received input does not
    require grad (after a first chunk without parameters); hvdkit marks that activation."""
    assert_trains_as_one_process(schedule, flatten_first)


def assert_trains_as_one_process(schedule, cut):
    stages = stage_count(world_size())
    pipe, losses = train_pipeline(schedule, stages, cut=cut)
    layers, slice_losses = single_process(pipe.layout.replica, pipe.layout.replicas)
    initial = expected_chunks(pipe, make_layers(), cut)
    for got, want, start in zip(pipe.modules, expected_chunks(pipe, layers, cut), initial):
        for p, q, p0 in zip(got.parameters(), want.parameters(), start.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
            assert (p - p0).abs().max() > 1e-3, "the parameters did not move"
    if pipe.is_last:  # the mean loss of this replica's batch, as one process computes it
        assert losses[0] is not None
        torch.testing.assert_close(torch.stack(losses), torch.tensor(slice_losses), rtol=1e-5, atol=1e-6)
    else:
        assert losses == [None] * STEPS
    assert_replicas_identical(pipe)


def test_compressed_replicas_stay_identical():
    size = world_size()
    if size < 2:
        pytest.skip("compression on the data-parallel dimension needs >= 2 replicas of a stage (>= 2 ranks)")
    stages = 2 if size % 4 == 0 else 1  # 2 stages x 2 replicas at np 4; 1 stage x 2 replicas at np 2
    pipe, _ = train_pipeline("1f1b", stages, compression="fp16")
    assert pipe.layout.replicas >= 2
    stats = pipe.optimizer.last_step_stats
    assert 0 < stats.bytes_sent < stats.dense_bytes, "fp16 should send half the dense bytes"
    assert_replicas_identical(pipe)
    layers, _ = single_process(pipe.layout.replica, pipe.layout.replicas)
    for got, want in zip(pipe.modules, expected_chunks(pipe, layers)):
        for p, q in zip(got.parameters(), want.parameters()):  # fp16 rounds the gradients: 2^-11 relative
            torch.testing.assert_close(p, q, rtol=1e-2, atol=1e-3)


def test_replicas_start_from_the_first_replica():
    """Replicas built from different seeds start from the first replica's parameters."""
    size = world_size()
    if size < 2:
        pytest.skip("a world of one has one replica: nothing to broadcast")
    stages = 2 if size % 4 == 0 else 1
    import horovod.torch as hvd

    torch.manual_seed(100 + hvd.rank())
    pipe = pp.build(nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)]), lambda ps: torch.optim.SGD(ps, lr=0.1),
                    stages=stages, microbatches=2, schedule="gpipe")
    torch.manual_seed(100 + pipe.layout.replica_ranks()[0])
    first = pp.split_sequential(nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)]), stages)[pipe.layout.stage]
    for p, q in zip(pipe.modules.parameters(), first.parameters()):
        assert torch.equal(p, q)


def test_a_batch_that_does_not_split_is_refused_on_every_rank():
    stages = stage_count(world_size())
    pipe, _ = train_pipeline("gpipe", stages)
    with pytest.raises(ValueError, match="does not split into 4 equal micro-batches"):
        pipe.step(torch.randn(6, 6), torch.zeros(6, dtype=torch.long))


def test_a_timed_split_is_the_same_on_every_rank():
    """Each rank times the layers itself; the cut follows rank 0's times, so the stages fit together."""
    import horovod.torch as hvd

    stages = stage_count(world_size())
    torch.manual_seed(0)
    widths = [4, 64, 4, 64, 4, 64]
    pipe = pp.build(nn.Sequential(*[nn.Linear(a, b) for a, b in zip(widths, widths[1:])]),
                    lambda ps: torch.optim.SGD(ps, lr=0.1), stages=stages, microbatches=2, schedule="gpipe",
                    loss_fn=lambda out, y: (out - y).pow(2).mean(), split="time", example=torch.randn(8, 4))
    layers = {(pipe.layout.replica, pipe.layout.stage): len(pipe.modules[0])}
    everyone = {}
    for part in hvd.allgather_object(layers, name="test.pipeline.timed"):
        everyone.update(part)
    for replica in range(pipe.layout.replicas):
        assert sum(everyone[(replica, s)] for s in range(stages)) == len(widths) - 1
    loss = pipe.step(torch.randn(8, 4), torch.randn(8, 64))
    assert (loss is not None) == pipe.is_last
