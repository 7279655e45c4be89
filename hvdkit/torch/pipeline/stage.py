"""One rank's part of a pipelined, data-parallel model: ``build`` returns its :class:`Pipeline`.

The engine is PyTorch's (``torch.distributed.pipelining``): a ``PipelineStage`` per model chunk this
rank holds and one of its schedules over the replica's pipeline group. hvdkit adds the layout
(:mod:`.layout`), the cut (:mod:`.split`), the process groups (:mod:`.group`), and the data
parallelism: the chunk's gradients are averaged among the stage's replicas by hvdkit's
``DistributedOptimizer`` on that stage's Horovod process set (compressed if asked).

The loss scaling across micro-batches is explicit: ``loss_fn`` (a mean over a micro-batch's samples)
is divided by the number of micro-batches, and the schedule does no scaling of its own
(``scale_grads=False``), so each step's gradient is that of the mean loss over the replica's whole
batch, and after the replicas' average, over the global batch. The optimizer counts the M
micro-batches' backward passes (``backward_passes_per_step=M``), so a bucket's exchange starts as
soon as its gradients are final, overlapping the rest of the pipeline's drain.
"""
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed import pipelining

from hvdkit import topology as topology_module
from hvdkit.runtime import launcher, rank_status
from hvdkit.torch.pipeline import group as groups
from hvdkit.torch.pipeline import layout as layouts
from hvdkit.torch.pipeline import split as splits

__all__ = ["SCHEDULES", "Pipeline", "build", "init"]

# Schedule name -> (PyTorch class, whether it takes several stages per rank)
SCHEDULES = {
    "gpipe": (pipelining.ScheduleGPipe, False),
    "1f1b": (pipelining.Schedule1F1B, False),
    "interleaved": (pipelining.ScheduleInterleaved1F1B, True),
    # ZB1P of Qi et al. (arXiv 2401.10241) on the interleaved layout: the backward is split into the input
    # gradient (on the critical path) and the weight gradient (filling the bubble). Its weight passes write
    # ``.grad`` directly, past the post-accumulate hooks, so except for the model's first chunk the
    # replicas' exchange of a chunk's gradients starts at optimizer.step() instead of during the drain.
    "zero-bubble": (pipelining.ScheduleInterleavedZeroBubble, True),
}
SPLIT_BACKWARD = {"zero-bubble"}  # schedules whose chunks compute input and weight gradients in separate passes
DEFAULT_VIRTUAL_STAGES = 2  # model chunks per rank under the multi-chunk schedules (interleaved, zero-bubble)


class _RequiresGrad(nn.Module):
    """A chunk whose output requires grad although nothing before it is trained (e.g. a first chunk of
    ``nn.Flatten()``). PyTorch's split backward (torch 2.13) finds a chunk's weights through the graph of
    its received input, and takes the weights of a chunk whose input does not require grad directly only
    on the first chunk: the next chunk, receiving a tensor without grad, would get no weight gradients
    at all. Marking the activation makes that chunk's backward find them (at the cost of one unused
    input gradient sent back)."""

    def __init__(self, chunk):
        super().__init__()
        self.chunk = chunk

    def forward(self, *args):
        out = self.chunk(*args)
        if isinstance(out, torch.Tensor) and out.is_floating_point() and not out.requires_grad:
            out = out.detach().requires_grad_()
        return out


def _engine_modules(chunks, schedule):
    """The modules PyTorch's stages run: the chunks, with those before the first trained parameter wrapped
    in :class:`_RequiresGrad` under a split-backward schedule (the chunks themselves, and so checkpoints,
    are unchanged)."""
    if schedule not in SPLIT_BACKWARD:
        return list(chunks)
    trained = [any(p.requires_grad for p in chunk.parameters()) for chunk in chunks]
    first = trained.index(True) if any(trained) else len(chunks)
    return [_RequiresGrad(chunk) if i < first else chunk for i, chunk in enumerate(chunks)]


class Pipeline:
    """This rank's stage: its model chunks, PyTorch's schedule over them, and the optimizer that
    averages their gradients among the stage's replicas. ``step(inputs, target)`` trains one batch."""

    __slots__ = ("layout", "modules", "chunks", "num_chunks", "microbatches", "stages", "schedule", "optimizer",
                 "process_set", "is_first", "is_last")

    def __init__(self, layout, modules, chunks, num_chunks, microbatches, stages, schedule, optimizer, process_set):
        self.layout = layout  # PipelineLayout: this rank's stage and replica
        self.modules = modules  # nn.ModuleList of this rank's chunks (state_dict: the stage's checkpoint)
        self.chunks = chunks  # their indices in the model's cut (one, or V under interleaving)
        self.num_chunks = num_chunks  # chunks in the whole model (stages x virtual stages)
        self.microbatches = microbatches
        self.stages = stages  # PyTorch's PipelineStage per chunk (what the schedule runs, e.g. to time it)
        self.schedule = schedule  # PyTorch's schedule object
        self.optimizer = optimizer  # hvdkit DistributedOptimizer over this stage's replicas
        self.process_set = process_set  # the Horovod process set of this stage's replicas
        self.is_first = chunks[0] == 0  # this rank feeds the inputs
        self.is_last = chunks[-1] == num_chunks - 1  # this rank computes the loss

    def _check_batch(self, name, tensor):
        if tensor is None:
            raise ValueError(f"{self.layout.describe()} holds the model's "
                             f"{'first' if name == 'inputs' else 'last'} chunk: step() needs {name}")
        if tensor.shape[0] % self.microbatches:
            raise ValueError(f"a batch of {tensor.shape[0]} samples does not split into {self.microbatches} "
                             f"equal micro-batches: use a batch size that is a multiple of {self.microbatches}")

    def step(self, inputs=None, target=None):
        """Forward and backward of one batch through the pipeline, the replicas' average, the update.

        ``inputs`` are read on the first stage, ``target`` on the last (other ranks may pass them or
        None). Returns the mean loss over this replica's batch on the last stage, None elsewhere."""
        losses = [] if self.is_last else None
        args = ()
        if self.is_first:
            self._check_batch("inputs", inputs)
            args = (inputs,)
        if self.is_last:
            self._check_batch("target", target)
        self.optimizer.zero_grad()
        self.schedule.step(*args, target=target if self.is_last else None, losses=losses)
        self.optimizer.step()
        return torch.stack([loss.detach() for loss in losses]).sum() if self.is_last else None

    def describe(self):
        return f"{self.layout.describe()}, model chunks {list(self.chunks)} of {self.num_chunks}"


def _check_arguments(schedule, microbatches, virtual_stages, stages, split):
    if split not in splits.SPLIT_BY:
        raise ValueError(f"split={split!r}; choose one of {', '.join(map(repr, splits.SPLIT_BY))}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; choose one of {', '.join(map(repr, SCHEDULES))}")
    if isinstance(microbatches, bool) or not isinstance(microbatches, int) or microbatches < 1:
        raise ValueError(f"microbatches must be a positive integer, got {microbatches!r}")
    multi_chunk = SCHEDULES[schedule][1]
    if virtual_stages is None:
        virtual_stages = DEFAULT_VIRTUAL_STAGES if multi_chunk else 1
    if isinstance(virtual_stages, bool) or not isinstance(virtual_stages, int) or virtual_stages < 1:
        raise ValueError(f"virtual_stages must be a positive integer, got {virtual_stages!r}")
    if multi_chunk and virtual_stages < 2:
        raise ValueError(f"schedule={schedule!r} runs several model chunks per rank: virtual_stages must be "
                         f">= 2, got {virtual_stages}")
    if not multi_chunk and virtual_stages != 1:
        multi = " or ".join(repr(name) for name, (_, several) in SCHEDULES.items() if several)
        raise ValueError(f"schedule={schedule!r} runs one model chunk per rank: virtual_stages must be 1, got "
                         f"{virtual_stages} (use schedule={multi} for several)")
    if schedule == "1f1b" and microbatches < stages:
        raise ValueError(f"schedule='1f1b' needs at least as many micro-batches as stages: microbatches="
                         f"{microbatches} < stages={stages}")
    rounds = max(1, microbatches // stages)
    if multi_chunk and microbatches % rounds:
        raise ValueError(f"schedule={schedule!r} runs the micro-batches in rounds of about {stages} (the stages): "
                         f"microbatches={microbatches} must be a multiple of {rounds} rounds "
                         f"(e.g. a multiple of {stages})")
    return virtual_stages


def _chunks(model, count, split, example, hvd):
    """The model's ``count`` chunks: as given, or cut from an ``nn.Sequential`` by rank 0's layer costs
    (timed costs differ between ranks, and every rank must cut the same way)."""
    if isinstance(model, (list, tuple, nn.ModuleList)):
        chunks = list(model)
        if len(chunks) != count:
            raise ValueError(f"the model is given as {len(chunks)} chunks, but stages x virtual stages = {count}")
        return chunks
    if not isinstance(model, nn.Sequential):
        return splits.split_sequential(model, count)  # the error naming what is accepted
    layers = list(model)
    costs = splits.layer_costs(layers, split, example)
    if split == "time":
        costs = hvd.broadcast_object(costs, root_rank=0, name="hvdkit.pipeline.costs")
    bounds = splits.balanced_bounds(costs, count)
    return [nn.Sequential(*layers[a:b]) for a, b in zip(bounds, bounds[1:])]


_sets = {}  # rank tuple -> the Horovod ProcessSet registered for it (Horovod registers sets once, at start)


def init(*stage_counts):
    """Start Horovod (through hvdkit's topology) with the stage replicas' process sets of pipelines of each
    of ``stage_counts`` stages. ``build`` calls it for its own count; call it first to build pipelines of
    several different counts in one job. Returns the Topology."""
    import hvdkit.torch as hvd

    size = hvd.size() if hvd.is_initialized() else launcher.launcher_world_size()
    wanted = sorted({tuple(ranks) for k in stage_counts for ranks in layouts.replica_rank_lists(size, k)} - set(_sets))
    if not hvd.is_initialized():
        fresh = {ranks: hvd.ProcessSet(list(ranks)) for ranks in wanted}
        topology = hvd.init(process_sets=list(fresh.values()))
        _sets.update(fresh)
        return topology
    topology = hvd.topology()
    registered = {tuple(ranks) for ranks in topology_module.process_set_ranks(topology.nodes)}  # hvdkit's node sets
    mine = {tuple(sorted(ps.ranks)): ps for ps in (topology.intra_node_set, topology.cross_node_set)
            if ps is not None and ps is not hvd.global_process_set}
    for ranks in wanted:
        if ranks in registered:  # a node set (e.g. the 2 x 2 layout's replicas are the cross-node sets)
            _sets[ranks] = mine.get(ranks)  # None on ranks outside it, which never look it up
        elif os.environ.get("HOROVOD_DYNAMIC_PROCESS_SETS", "0") not in ("", "0"):
            _sets[ranks] = hvd.add_process_set(list(ranks))
        else:
            raise RuntimeError(
                f"hvdkit.torch.pipeline: Horovod is already running without the process set {list(ranks)} of a "
                f"stage's replicas; call hvdkit.torch.pipeline.init({', '.join(map(str, stage_counts))}) instead "
                f"of hvd.init(), or start Horovod with hvd.init(process_sets='dynamic')")
    return topology


def _replica_set(hvd, layout):
    if layout.stages == 1:
        return hvd.global_process_set
    if layout.replicas == 1:
        return hvd.ProcessSet([layout.rank])  # alone: the optimizer sends nothing (no registration needed)
    return _sets[tuple(layout.replica_ranks())]


def build(model, optimizer, *, stages, microbatches, schedule="1f1b", loss_fn=F.cross_entropy, split="params",
          example=None, virtual_stages=None, compression="none", timeout=None, **optimizer_options):
    """This rank's :class:`Pipeline` of a job of ``stages`` x R ranks (R = world size / stages replicas).

    * ``model``: an ``nn.Sequential``, cut into ``stages x virtual_stages`` balanced chunks (``split``:
      ``"params"`` or ``"time"`` on the ``example`` batch), or that many modules, already cut. Every rank
      builds the whole model the same way (same seed); each keeps its chunks.
    * ``optimizer``: ``params -> torch.optim.Optimizer``, called with this rank's chunks' parameters.
    * ``schedule``: ``"gpipe"``, ``"1f1b"``, ``"interleaved"`` or ``"zero-bubble"`` (the last two hold
      ``virtual_stages`` chunks per rank, default 2); ``microbatches``: how many pieces each replica's batch
      is cut into.
    * ``loss_fn(output, target)``: a mean over the micro-batch (divided by ``microbatches`` here).
    * ``compression`` and ``optimizer_options`` (``fusion_mb``, ``nonfinite``, ...) go to hvdkit's
      ``DistributedOptimizer`` on the stage's replicas (flat: ``hierarchical`` is refused there).

    Starts Horovod (with the replicas' process sets) and torch.distributed (gloo) when not yet running.
    """
    import hvdkit.torch as hvd

    virtual_stages = _check_arguments(schedule, microbatches, virtual_stages, stages, split)
    size = hvd.size() if hvd.is_initialized() else launcher.launcher_world_size()
    layouts.check_stages(stages, size)
    init(stages)
    layout = layouts.plan(hvd.rank(), hvd.size(), stages)
    num_chunks = stages * virtual_stages
    all_chunks = _chunks(model, num_chunks, split, example, hvd)
    mine = [layout.stage + v * stages for v in range(virtual_stages)]
    modules = nn.ModuleList(all_chunks[i] for i in mine)
    rank_status.note_role(layout.describe())  # a failure report of hvdkit run names the stage
    groups.init_process_group(hvd, timeout)
    group = groups.pipeline_group(layout)
    engine_modules = _engine_modules(all_chunks, schedule)
    torch_stages = [pipelining.PipelineStage(engine_modules[i], i, num_chunks, torch.device("cpu"), group=group)
                    for i in mine]
    cls, multi = SCHEDULES[schedule]

    def scaled_loss(output, target):
        return loss_fn(output, target) / microbatches

    engine = cls(torch_stages if multi else torch_stages[0], microbatches, loss_fn=scaled_loss, scale_grads=False)
    process_set = _replica_set(hvd, layout)
    named = [(f"chunk{i}.{name}", p) for i, module in zip(mine, modules) for name, p in module.named_parameters()]
    wrapped = hvd.DistributedOptimizer(optimizer([p for _, p in named]), named_parameters=named,
                                       compression=compression, backward_passes_per_step=microbatches,
                                       process_set=process_set, **optimizer_options)
    _broadcast(modules, hvd, process_set, layout)
    return Pipeline(layout, modules, mine, num_chunks, microbatches, torch_stages, engine, wrapped, process_set)


def _broadcast(modules, hvd, process_set, layout):
    """Replicas of a stage start from its first replica's parameters and buffers."""
    if layout.replicas > 1:  # Horovod's broadcast_parameters has no process_set
        root = layout.replica_ranks()[0]
        for name, tensor in modules.state_dict().items():
            hvd.broadcast_(tensor, root, name=f"hvdkit.pipeline.init.{name}", process_set=process_set)

