"""The PyTorch training loop behind ``hvdkit train``.

Every rank builds the same model from the seed, reads its own shard of the
data (:mod:`hvdkit.data.sharding`), and either averages gradients every step
through hvdkit's ``DistributedOptimizer`` (with the chosen compression and
hierarchy) or, with ``--average-every H``, steps locally and averages the
model every H steps (:mod:`hvdkit.averaging`). Loss and test accuracy are
averaged across ranks; rank 0 prints and logs them.

With ``--checkpoint DIR`` every rank saves its state at each epoch's end (and
every ``--checkpoint-every`` steps), and a rerun resumes from the newest save
at the exact sample where it stopped, computing the same bits as a run that
never stopped (:mod:`hvdkit.training.torch_state` says what is saved; the files are
written through ``torch.save``, :mod:`hvdkit.state.torch_codec`).
"""
import time

import torch
import torch.nn.functional as F

from hvdkit import averaging
from hvdkit.data import sharding
from hvdkit.state.torch_codec import CODEC
from hvdkit.training import data as datasets
from hvdkit.training import local_sgd, metrics, resume, torch_models, torch_state
from hvdkit.training.metrics import EpochTotals
from hvdkit.training.resume import Position


def batches(indices, batch_size):
    for start in range(0, len(indices), batch_size):
        yield indices[start:start + batch_size]


def correct(model, x, y):
    """How many of the samples ``x`` the model classifies as ``y`` says."""
    if not len(y):
        return 0
    model.eval()
    with torch.no_grad():
        right = (model(x).argmax(dim=1) == y).sum().item()
    model.train()
    return right


def evaluate(model, x, y, hvd, topology):
    """Test accuracy over the whole test set, each rank scoring its own part."""
    mine = sharding.shard_indices(len(y), topology.rank, topology.size, shuffle=False, remainder="uneven")
    totals = hvd.allreduce(torch.tensor([float(correct(model, x[mine], y[mine])), float(len(mine))],
                                        dtype=torch.float64), op=hvd.Sum, name="hvdkit.cli.train.eval")
    return (totals[0] / totals[1]).item()


def make_optimizer(config, model, hvd, topology):
    """hvdkit's DistributedOptimizer: gradients averaged every step, or (``--average-every H``)
    post-local SGD: ``--average-warmup`` synchronous steps, then local steps with the model
    averaged every H steps."""
    base = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    return hvd.DistributedOptimizer(base, named_parameters=model.named_parameters(),
                                    compression=config.compression, hierarchical=config.hierarchical,
                                    local_sgd=local_sgd.averager(config, hvd, topology))


def steps_per_epoch(config, train_samples, topology):
    shard = sharding.shard_size(train_samples, topology.rank, topology.size, remainder="pad")
    return -(-shard // config.batch_size)


def train_epoch(epoch, first_step, totals, config, model, optimizer, x, y, hvd, topology, after_each):
    """Steps ``first_step`` onwards of ``epoch``; ``after_each(steps taken this epoch)`` after each."""
    indices = sharding.shard_indices(len(y), topology.rank, topology.size, epoch=epoch, seed=config.seed,
                                     remainder="pad", start=first_step * config.batch_size)
    steps = -(-len(indices) // config.batch_size)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    progress = metrics.progress(batches(indices, config.batch_size), steps, topology.rank, f"epoch {epoch}")
    for step, batch in enumerate(progress, first_step + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[batch]), y[batch])
        loss.backward()
        optimizer.step()
        traffic = metrics.step_traffic(optimizer.local_sgd, optimizer.last_step_stats, model_bytes)
        totals.add_step(len(batch), time.perf_counter() - started, traffic, loss=loss.item())
        after_each(step)
    return totals


def epoch_record(epoch, totals, accuracy, hvd, topology):
    def sum_over_ranks(values):
        return hvd.allreduce(torch.tensor(values, dtype=torch.float64), op=hvd.Sum,
                             name="hvdkit.cli.train.epoch").tolist()

    return metrics.epoch_record(epoch, totals, accuracy, sum_over_ranks, topology.size)


def restore(config, model, optimizer, hvd, topology):
    """Every rank loads its state from the newest checkpoint: (Position, totals of the epoch in
    progress or None), or None when there is no checkpoint to resume from."""
    found = resume.load(config, CODEC, hvd, topology)
    if found is None:
        return None
    position, totals = torch_state.restore(*found, config, model, optimizer)
    return position, (None if totals is None else EpochTotals.from_dict(totals))


def save(config, position, model, optimizer, totals, hvd, topology):
    """Collective: every rank writes its file of the checkpoint at ``position``."""
    shared, local = torch_state.capture(config, model, optimizer, position,
                                        None if totals is None else totals.to_dict(), topology.size)
    resume.save(config, position, shared, local, CODEC, hvd, topology)


def train(config, after_step=None):
    """Train on this rank. ``after_step(global_step)``, when given, is called wherever training could
    resume from (the start, after each step, after each epoch's end), once the checkpoint due there
    is saved; the resume tests stop the job there."""
    if config.pipeline_stages > 1:  # the model cut into stages: its own loop
        from hvdkit.training import pipeline_loop

        return pipeline_loop.train(config, after_step)
    import hvdkit.torch as hvd

    hvd.init()
    from hvdkit import topology as topology_module

    topology = topology_module.current()
    torch_state.seed_everything(config.seed)
    dataset = datasets.load(config.dataset, config.seed)
    x_train, y_train = torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)
    x_test, y_test = torch.from_numpy(dataset.x_test), torch.from_numpy(dataset.y_test)
    model = torch_models.build(config.model, dataset.input_shape, dataset.num_classes)
    optimizer = make_optimizer(config, model, hvd, topology)
    resumed = restore(config, model, optimizer, hvd, topology)
    if resumed is None:
        position, resumed_totals = Position(), None
        hvd.broadcast_state(model, optimizer, root_rank=0)
    else:  # each rank loaded its own state (per-rank in local SGD): check, do not overwrite
        position, resumed_totals = resumed
        hvd.check_model(model)
    writer = metrics.MetricsWriter(config.log_dir, "torch") if topology.rank == 0 else None
    if topology.rank == 0:
        print(f"hvdkit train: {config.model} on {config.dataset} ({dataset.describe()}), "
              f"{topology.size} ranks on {topology.num_nodes} node(s), compression {config.compression}"
              + (f", model averaged every {config.average_every} steps after {config.average_warmup} synchronous"
                 if config.average_every else ""),
              flush=True)
        if resumed is not None:
            print(f"hvdkit train: resuming from {config.checkpoint} at step {position.global_step} "
                  f"(epoch {position.epoch}, step {position.step})", flush=True)
    per_epoch = steps_per_epoch(config, len(y_train), topology)
    notify = after_step or (lambda _: None)

    def after_each(step):
        position.step = step
        position.global_step += 1
        if step < per_epoch:  # the epoch's last step is followed by its end (and that checkpoint)
            if config.checkpoint_every and position.global_step % config.checkpoint_every == 0:
                save(config, position, model, optimizer, totals, hvd, topology)
            notify(position.global_step)

    notify(position.global_step)
    record = None
    for epoch in range(position.epoch, config.epochs):
        totals = EpochTotals() if resumed_totals is None else resumed_totals  # the resumed epoch's so far
        resumed_totals = None
        train_epoch(epoch, position.step, totals, config, model, optimizer, x_train, y_train, hvd, topology,
                    after_each)
        if optimizer.local_phase:  # evaluate one model, the same on every rank
            averaging.average_parameters(list(model.parameters()), "world", hvd, topology)
        accuracy = evaluate(model, x_test, y_test, hvd, topology)
        record = epoch_record(epoch, totals, accuracy, hvd, topology)
        position = Position(epoch + 1, 0, position.global_step)
        if config.checkpoint:
            save(config, position, model, optimizer, None, hvd, topology)
        if writer is not None:
            writer.write(record)
            print(metrics.format_epoch(record), flush=True)
        notify(position.global_step)
    if writer is not None:
        metrics.finish(writer, record)
    return 0
