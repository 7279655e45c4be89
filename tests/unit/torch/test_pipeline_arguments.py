"""The pipeline's layout arithmetic and its argument errors (raised before any rank talks to another)."""
import pytest
import torch
from torch import nn

import hvdkit.torch.pipeline as pp
from hvdkit.torch.pipeline.layout import check_stages


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def model(layers=4):
    return nn.Sequential(*[nn.Linear(2, 2) for _ in range(layers)])


@pytest.mark.parametrize("world,stages", [(4, 2), (8, 4), (6, 3), (4, 1), (4, 4)])
def test_layout_restated(world, stages):
    """Replica r holds ranks r*K .. r*K+K-1; stage s's replicas are s, s+K, ..."""
    for rank in range(world):
        layout = pp.plan(rank, world, stages)
        assert (layout.stage, layout.replica) == (rank % stages, rank // stages)
        assert layout.replicas == world // stages
        assert rank in layout.pipeline_ranks() and rank in layout.replica_ranks()
        assert layout.pipeline_ranks() == [layout.replica * stages + s for s in range(stages)]
        assert layout.replica_ranks() == [r * stages + layout.stage for r in range(world // stages)]
    every_rank_once = sorted(r for replica in range(world // stages) for r in pp.plan(0, world, stages)
                             .pipeline_ranks(replica))
    assert every_rank_once == list(range(world))


def test_replica_sets_to_register():
    assert pp.replica_rank_lists(4, 2) == [[0, 2], [1, 3]]
    assert pp.replica_rank_lists(6, 2) == [[0, 2, 4], [1, 3, 5]]
    assert pp.replica_rank_lists(4, 1) == []  # the global set
    assert pp.replica_rank_lists(4, 4) == []  # one replica: nothing to average


@pytest.mark.parametrize("stages", [3, 0, -2, 1.5, True])
def test_stages_must_divide_the_world(stages):
    with pytest.raises(ValueError, match=r"stages=.* must be a positive integer dividing the world size 4.*"
                                         r"valid: 1, 2, 4"):
        check_stages(stages, 4)


def test_build_refuses_stages_that_do_not_divide_the_world():
    """Outside a launcher the world is one rank: 2 stages cannot be placed."""
    with pytest.raises(ValueError, match="stages=2 must be a positive integer dividing the world size 1"):
        pp.build(model(), sgd, stages=2, microbatches=2)


def test_build_refuses_an_unknown_schedule():
    with pytest.raises(ValueError, match="schedule='zb'; choose one of 'gpipe', '1f1b', 'interleaved'"):
        pp.build(model(), sgd, stages=1, microbatches=2, schedule="zb")


@pytest.mark.parametrize("microbatches", [0, -1, 2.5, None])
def test_build_refuses_a_bad_number_of_microbatches(microbatches):
    with pytest.raises(ValueError, match="microbatches must be a positive integer"):
        pp.build(model(), sgd, stages=1, microbatches=microbatches)


def test_1f1b_needs_a_microbatch_per_stage():
    with pytest.raises(ValueError, match="microbatches=1 < stages=2"):
        pp.build(model(), sgd, stages=2, microbatches=1, schedule="1f1b")


def test_virtual_stages_belong_to_the_interleaved_schedule():
    with pytest.raises(ValueError, match="virtual_stages must be >= 2"):
        pp.build(model(), sgd, stages=1, microbatches=2, schedule="interleaved", virtual_stages=1)
    with pytest.raises(ValueError, match="virtual_stages must be 1, got 2"):
        pp.build(model(), sgd, stages=1, microbatches=2, schedule="gpipe", virtual_stages=2)


def test_interleaved_microbatches_come_in_whole_rounds():
    """PyTorch's interleaved 1F1B runs max(1, M // K) rounds and needs M to be a multiple of them."""
    with pytest.raises(ValueError, match="microbatches=5 must be a multiple of 2 rounds"):
        pp.build(model(), sgd, stages=2, microbatches=5, schedule="interleaved")


def test_build_refuses_an_unknown_split():
    with pytest.raises(ValueError, match="split='flops'; choose one of 'params', 'time'"):
        pp.build(model(), sgd, stages=1, microbatches=2, split="flops")
