"""``hvdkit train --pipeline-stages K``: the torch loop with the model cut into a pipeline.

The job's ``-np`` ranks form ``-np / K`` replicas of a K-stage pipeline (:mod:`hvdkit.torch.pipeline`:
PyTorch's schedules between stages, hvdkit's DistributedOptimizer among a stage's replicas). The data
is sharded by replica, and ``--batch-size`` samples per replica per step are cut into
``--microbatches``. The loss lives on the last stage and the samples enter on the first, so each rank
adds to the epoch's totals what it holds, scaled so that :func:`metrics.epoch_record`'s average over
all ranks is the average over replicas. Test accuracy is computed on the whole model, gathered on every
rank at each epoch's end. Checkpoints hold each rank's own stage (parameters, momentum, exchange state)
in its own file.
"""
import time

import torch

from hvdkit.data import sharding
from hvdkit.state.torch_codec import CODEC
from hvdkit.training import data as datasets
from hvdkit.training import metrics, resume, torch_models, torch_state
from hvdkit.training.metrics import EpochTotals
from hvdkit.training.resume import Position
from hvdkit.training.torch_loop import batches, epoch_record, evaluate


def build(config, dataset):
    import hvdkit.torch.pipeline as pp

    model = torch_models.build(config.model, dataset.input_shape, dataset.num_classes)
    return pp.build(model, lambda params: torch.optim.SGD(params, lr=config.lr, momentum=config.momentum),
                    stages=config.pipeline_stages, microbatches=config.microbatches, schedule=config.schedule,
                    compression=config.compression)


def whole_model(config, dataset, pipe, hvd):
    """The model with every stage's current parameters (gathered from all ranks), for evaluation."""
    import hvdkit.torch.pipeline as pp

    states = hvd.allgather_object({i: m.state_dict() for i, m in zip(pipe.chunks, pipe.modules)},
                                  name="hvdkit.cli.train.pipeline.gather")
    model = torch_models.build(config.model, dataset.input_shape, dataset.num_classes)
    chunks = pp.split_sequential(model, pipe.num_chunks)  # the same cut: by parameter count, deterministic
    for state in states:
        for index, chunk_state in state.items():
            chunks[index].load_state_dict(chunk_state)
    return model


def save(config, position, pipe, totals, hvd, topology):
    """Collective: every rank writes its own stage's state (nothing of it is shared between stages)."""
    shared, local = torch_state.capture(config, pipe.modules, pipe.optimizer, position,
                                        None if totals is None else totals.to_dict(), topology.size)
    for key in ("parameters", "optimizer"):
        local[key] = shared.pop(key)
    resume.save(config, position, shared, local, CODEC, hvd, topology)


def check_chunks(shared, config):
    """Each rank's file holds its model chunks: one under gpipe and 1f1b, two under interleaved and
    zero-bubble, so a resume may change --schedule only within one of those kinds (the pipelining
    order is not in the state). --microbatches may change: each micro-batch's loss is divided by their
    number, so a step's gradient, and so everything saved, is the same for any (the models a pipeline
    takes, mlp and cnn, have no batch statistics)."""
    import hvdkit.torch.pipeline as pp

    before, now = resume.saved_value(shared["config"], config, "schedule"), config.schedule
    per_rank = {name: pp.stage.DEFAULT_VIRTUAL_STAGES if several else 1 for name, (_, several) in pp.SCHEDULES.items()}
    if per_rank.get(before) != per_rank[now]:
        resume.refuse_change(config.checkpoint, "schedule", before, now,
                             f" ({per_rank.get(before)} model chunk(s) per rank against {per_rank[now]})")


def restore(config, pipe, hvd, topology):
    found = resume.load(config, CODEC, hvd, topology)
    if found is None:
        return None
    resume.check_saved(found[0], config)  # the flags first: --pipeline-stages before the chunks per rank
    check_chunks(found[0], config)
    position, totals = torch_state.restore(*found, config, pipe.modules, pipe.optimizer)
    return position, (None if totals is None else EpochTotals.from_dict(totals))


def train_epoch(epoch, first_step, totals, config, pipe, x, y, rank, after_each):
    layout = pipe.layout
    indices = sharding.shard_indices(len(y), layout.replica, layout.replicas, epoch=epoch, seed=config.seed,
                                     remainder="pad", start=first_step * config.batch_size)
    steps = len(indices) // config.batch_size  # whole batches only: a batch must split into micro-batches
    indices = indices[:steps * config.batch_size]
    model_bytes = sum(p.numel() * p.element_size() for p in pipe.modules.parameters())
    progress = metrics.progress(batches(indices, config.batch_size), steps, rank, f"epoch {epoch}")
    for step, batch in enumerate(progress, first_step + 1):
        started = time.perf_counter()
        loss = pipe.step(x[batch], y[batch])
        traffic = metrics.step_traffic(None, pipe.optimizer.last_step_stats, model_bytes)
        totals.add_step(len(batch) if pipe.is_first else 0, time.perf_counter() - started, traffic,
                        loss=loss.item() * layout.stages if pipe.is_last else 0.0)
        after_each(step)


def steps_per_epoch(config, train_samples, pipe):
    shard = sharding.shard_size(train_samples, pipe.layout.replica, pipe.layout.replicas, remainder="pad")
    return shard // config.batch_size


def train(config, after_step=None):
    """Train this rank's stage (see ``hvdkit.training.torch_loop.train`` for ``after_step``)."""
    import hvdkit.torch as hvd

    torch_state.seed_everything(config.seed)
    dataset = datasets.load(config.dataset, config.seed)
    pipe = build(config, dataset)
    topology = hvd.topology()
    x_train, y_train = torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)
    x_test, y_test = torch.from_numpy(dataset.x_test), torch.from_numpy(dataset.y_test)
    resumed = restore(config, pipe, hvd, topology)
    position, resumed_totals = (Position(), None) if resumed is None else resumed
    writer = metrics.MetricsWriter(config.log_dir, "torch") if topology.rank == 0 else None
    if topology.rank == 0:
        print(f"hvdkit train: {config.model} on {config.dataset} ({dataset.describe()}), {topology.size} ranks: "
              f"{pipe.layout.replicas} replica(s) of a {pipe.layout.stages}-stage pipeline ({config.schedule}, "
              f"{config.microbatches} micro-batches of {config.batch_size // config.microbatches}), "
              f"compression {config.compression}", flush=True)
        if resumed is not None:
            print(f"hvdkit train: resuming from {config.checkpoint} at step {position.global_step} "
                  f"(epoch {position.epoch}, step {position.step})", flush=True)
    per_epoch = steps_per_epoch(config, len(y_train), pipe)
    notify = after_step or (lambda _: None)

    def after_each(step):
        position.step = step
        position.global_step += 1
        if step < per_epoch:
            if config.checkpoint_every and position.global_step % config.checkpoint_every == 0:
                save(config, position, pipe, totals, hvd, topology)
            notify(position.global_step)

    notify(position.global_step)
    record = None
    for epoch in range(position.epoch, config.epochs):
        totals = EpochTotals() if resumed_totals is None else resumed_totals
        resumed_totals = None
        train_epoch(epoch, position.step, totals, config, pipe, x_train, y_train, topology.rank, after_each)
        accuracy = evaluate(whole_model(config, dataset, pipe, hvd), x_test, y_test, hvd, topology)
        record = epoch_record(epoch, totals, accuracy, hvd, topology)
        position = Position(epoch + 1, 0, position.global_step)
        if config.checkpoint:
            save(config, position, pipe, None, hvd, topology)
        if writer is not None:
            writer.write(record)
            print(metrics.format_epoch(record), flush=True)
        notify(position.global_step)
    if writer is not None:
        metrics.finish(writer, record)
    return 0
