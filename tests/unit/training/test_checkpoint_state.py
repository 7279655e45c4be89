"""What ``hvdkit train`` (torch) puts in a checkpoint and how it comes back: shared state once,
per-rank state per rank, RNG streams resumed, changed flags named; plus the resume checks of the
sampler and the local-SGD averager, and the ``--checkpoint-every`` flag."""
import random

import numpy as np
import pytest
import torch

from hvdkit import averaging
from hvdkit.state.checkpoint import CheckpointError
from hvdkit.errors import UsageError
from hvdkit.training import config as train_config
from hvdkit.training import torch_state
from hvdkit.training.resume import Position


class FakeDistributedOptimizer(torch.optim.SGD):
    """The part of hvdkit's DistributedOptimizer contract torch_state uses: ``local_phase`` and a
    state dict carrying this rank's exchange state under ``"hvdkit"``."""

    def __init__(self, params, local_phase=False):
        super().__init__(params, lr=0.1, momentum=0.9)
        self.local_phase = local_phase
        self.exchange = {"steps": 0, "residual": None}

    def state_dict(self):
        state = super().state_dict()
        state["hvdkit"] = self.exchange
        return state

    def load_state_dict(self, state):
        state = dict(state)
        self.exchange = state.pop("hvdkit")
        super().load_state_dict(state)


def build(local_phase=False, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    return model, FakeDistributedOptimizer(model.parameters(), local_phase)


def train_a_step(model, optimizer):
    optimizer.zero_grad()
    model(torch.randn(8, 4)).square().sum().backward()
    optimizer.step()
    optimizer.exchange = {"steps": optimizer.exchange["steps"] + 1, "residual": torch.randn(5)}


def bits(tensor):
    return tensor.reshape(-1).view(torch.uint8)


def test_shared_and_per_rank_state_round_trip_bit_for_bit():
    config = train_config.TrainConfig(checkpoint="ckpt")
    model, optimizer = build()
    train_a_step(model, optimizer)
    position = Position(epoch=1, step=3, global_step=26)
    shared, local = torch_state.capture(config, model, optimizer, position, {"loss_sum": 1.5}, world_size=2)
    assert set(shared) == {"format", "position", "world_size", "config", "parameters", "optimizer"}
    assert set(local) == {"exchange", "rng", "totals", "buffers"}
    assert set(local["buffers"]) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert "hvdkit" not in shared["optimizer"]  # residuals differ per rank: never in the shared file
    shared, local = _through_torch_save(shared), _through_torch_save(local)
    after_capture = (torch.rand(4), np.random.rand(4), random.random())

    other_model, other_optimizer = build(seed=1)
    restored, totals = torch_state.restore(shared, local, config, other_model, other_optimizer)
    assert restored == position and totals == {"loss_sum": 1.5}
    assert (torch.equal(bits(torch.rand(4)), bits(after_capture[0])) and np.array_equal(np.random.rand(4), after_capture[1])
            and random.random() == after_capture[2])  # every RNG stream continues where it was saved
    for (name, a), b in zip(model.state_dict().items(), other_model.state_dict().values()):
        assert torch.equal(bits(a), bits(b)), name
    momentum = [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    restored_momentum = [other_optimizer.state[p]["momentum_buffer"] for p in other_model.parameters()]
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(momentum, restored_momentum))
    assert torch.equal(other_optimizer.exchange["residual"], optimizer.exchange["residual"])


def test_local_steps_put_parameters_and_momentum_in_each_ranks_file():
    model, optimizer = build(local_phase=True)
    train_a_step(model, optimizer)
    shared, local = torch_state.capture(train_config.TrainConfig(), model, optimizer, Position(),
                                        None, world_size=2)
    assert "parameters" not in shared and "optimizer" not in shared
    assert set(local["parameters"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    other_model, other_optimizer = build(local_phase=True, seed=1)
    torch_state.restore(shared, local, train_config.TrainConfig(), other_model, other_optimizer)
    assert torch.equal(other_model[0].weight, model[0].weight)


@pytest.mark.parametrize("flag, value, message", [
    ("batch_size", 64, "was saved with --batch-size 32, this run has --batch-size 64"),
    ("compression", "topk:0.01", "was saved with --compression none, this run has --compression topk:0.01"),
    ("average_every", 4, "was saved with --average-every None, this run has --average-every 4"),
    ("lr", 0.1, "was saved with --lr 0.05, this run has --lr 0.1"),
    ("pipeline_stages", 2, "was saved with --pipeline-stages 1, this run has --pipeline-stages 2"),
])
def test_a_changed_flag_is_refused_by_name(flag, value, message):
    model, optimizer = build()
    shared, local = torch_state.capture(train_config.TrainConfig(checkpoint="ckpt"), model, optimizer,
                                        Position(), None, world_size=2)
    changed = train_config.TrainConfig(checkpoint="ckpt", **{flag: value})
    with pytest.raises(CheckpointError, match=f"checkpoint in 'ckpt' {message}: resume with the same value"):
        torch_state.restore(shared, local, changed, *build())


def test_a_checkpoint_older_than_a_flag_holds_its_default():
    """Checkpoints written before --pipeline-stages existed lack the key: that run had 1 stage."""
    model, optimizer = build()
    shared, local = torch_state.capture(train_config.TrainConfig(checkpoint="ckpt"), model, optimizer,
                                        Position(epoch=1, global_step=5), None, world_size=2)
    del shared["config"]["pipeline_stages"]
    position, _ = torch_state.restore(shared, local, train_config.TrainConfig(checkpoint="ckpt"), *build())
    assert position == Position(epoch=1, global_step=5)
    with pytest.raises(CheckpointError, match="was saved with --pipeline-stages 1, this run has --pipeline-stages 4"):
        torch_state.restore(shared, local, train_config.TrainConfig(checkpoint="ckpt", pipeline_stages=4), *build())


@pytest.mark.parametrize("saved, resumed, refused", [
    ({"schedule": "gpipe", "microbatches": 4}, {"schedule": "1f1b", "microbatches": 8}, None),
    ({"schedule": "interleaved"}, {"schedule": "zero-bubble", "microbatches": 2}, None),
    ({"schedule": "gpipe"}, {"schedule": "interleaved"},
     r"saved with --schedule gpipe, this run has --schedule interleaved \(1 model chunk\(s\) per rank against 2\)"),
    ({"schedule": "zero-bubble"}, {"schedule": "1f1b"}, r"\(2 model chunk\(s\) per rank against 1\)"),
])
def test_a_pipeline_resumes_under_another_schedule_of_the_same_chunks_per_rank(saved, resumed, refused):
    """--microbatches and --schedule leave a step's gradient as it was; the chunks each rank's file
    holds (1 under gpipe and 1f1b, 2 under interleaved and zero-bubble) must stay."""
    from hvdkit.training import pipeline_loop

    config = train_config.TrainConfig(checkpoint="ckpt", pipeline_stages=2, **saved)
    shared = {"config": dict(vars(config))}
    again = train_config.TrainConfig(checkpoint="ckpt", pipeline_stages=2, **resumed)
    if refused is None:
        pipeline_loop.check_chunks(shared, again)
    else:
        with pytest.raises(CheckpointError, match=refused):
            pipeline_loop.check_chunks(shared, again)


def test_more_epochs_may_be_added_on_resume():
    model, optimizer = build()
    shared, local = torch_state.capture(train_config.TrainConfig(epochs=2), model, optimizer,
                                        Position(epoch=2), None, world_size=2)
    position, _ = torch_state.restore(shared, local, train_config.TrainConfig(epochs=4), *build())
    assert position.epoch == 2


def test_another_model_or_format_is_refused():
    model, optimizer = build()
    config = train_config.TrainConfig(checkpoint="ckpt")
    shared, local = torch_state.capture(config, model, optimizer, Position(), None, world_size=2)
    wider = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5))
    with pytest.raises(CheckpointError, match="(?s)checkpoint in 'ckpt' does not fit this model: .*size mismatch for 0.weight"):
        torch_state.restore(shared, local, config, wider, FakeDistributedOptimizer(wider.parameters()))
    with pytest.raises(CheckpointError, match="has format 0; this hvdkit reads format 1"):
        torch_state.restore(dict(shared, format=0), local, config, *build())


def test_a_checkpoint_of_the_other_framework_is_refused_by_name():
    model, optimizer = build()
    saved = train_config.TrainConfig(checkpoint="ckpt", framework="tensorflow")
    shared, local = torch_state.capture(saved, model, optimizer, Position(), None, world_size=2)
    with pytest.raises(CheckpointError, match="checkpoint in 'ckpt' was written by hvdkit train --framework "
                                              "tensorflow, this run has --framework torch"):
        torch_state.restore(shared, local, train_config.TrainConfig(checkpoint="ckpt"), *build())


def _through_torch_save(payload):
    import io

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


# ---- the sampler and the averager refuse a position saved for another run -----------------------
def test_sampler_refuses_a_position_saved_for_another_world_size():
    from hvdkit.data.torch_sampler import ShardedSampler

    saved = ShardedSampler(range(40), num_replicas=2, rank=1, seed=3).state_dict(consumed=6)
    with pytest.raises(ValueError, match=r"num_replicas=2 differs from this sampler's num_replicas=4"):
        ShardedSampler(range(40), num_replicas=4, rank=1, seed=3).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"shuffle=True differs from this sampler's shuffle=False"):
        ShardedSampler(range(40), num_replicas=2, rank=1, seed=3, shuffle=False).load_state_dict(saved)


def test_averager_state_round_trips_and_refuses_another_schedule():
    averager = averaging.PeriodicAverager(period=4, warmup_steps=2)
    for _ in range(3):
        averager.step([])
    state = averager.state_dict()
    assert state == {"steps": 3, "schedule": [[4, "world"]], "warmup_steps": 2}
    resumed = averaging.PeriodicAverager(period=4, warmup_steps=2)
    resumed.load_state_dict(state)
    assert resumed.steps == 3
    with pytest.raises(ValueError, match=r"saved with schedule=\[\[4, 'world'\]\], this averager has "
                                         r"schedule=\[\[8, 'world'\]\]"):
        averaging.PeriodicAverager(period=8, warmup_steps=2).load_state_dict(state)
    with pytest.raises(ValueError, match=r"saved with warmup_steps=2, this averager has warmup_steps=0"):
        averaging.PeriodicAverager(period=4).load_state_dict(state)
    with pytest.raises(ValueError, match=r"steps must be an integer >= 0, got -1"):
        averaging.PeriodicAverager(period=4).load_state_dict({"steps": -1})


# ---- --checkpoint-every ------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"checkpoint_every": 0, "checkpoint": "DIR"}, "--checkpoint-every must be >= 1, got 0"),
    ({"checkpoint_every": 5}, "--checkpoint-every 5 needs --checkpoint DIR"),
    ({"checkpoint_every": 5, "checkpoint": "DIR", "framework": "tensorflow"},
     "--checkpoint-every: mid-epoch checkpoints are available with --framework torch only"),
])
def test_checkpoint_every_is_checked_before_launch(tmp_path, overrides, message):
    if overrides.get("checkpoint") == "DIR":
        overrides["checkpoint"] = str(tmp_path / "ckpt")
    config = train_config.TrainConfig(log_dir=str(tmp_path / "logs"), **overrides)
    with pytest.raises(UsageError, match=message):
        train_config.validate(config, 2, 1438, environ={})


def test_checkpoint_every_reaches_the_ranks(tmp_path):
    config = train_config.TrainConfig(checkpoint=str(tmp_path), checkpoint_every=7)
    assert train_config.to_argv(config)[-4:] == ["--checkpoint", str(tmp_path), "--checkpoint-every", "7"]
