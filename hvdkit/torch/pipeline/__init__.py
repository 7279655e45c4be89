"""Pipeline model parallelism inside a Horovod job, with data parallelism across stage replicas.

A job of ``K x R`` ranks runs R copies of a K-stage pipeline. PyTorch's ``torch.distributed.pipelining``
moves the micro-batches between stages (GPipe, 1F1B, interleaved 1F1B, interleaved zero bubble) over a
gloo group that hvdkit starts from the launcher's ranks; each stage's R replicas average their gradients
through hvdkit's ``DistributedOptimizer`` on that stage's Horovod process set::

    import hvdkit.torch.pipeline as pp
    pipe = pp.build(nn.Sequential(...), lambda params: torch.optim.SGD(params, lr=0.1),
                    stages=2, microbatches=4, schedule="1f1b")
    loss = pipe.step(x, y)  # this replica's batch; the loss on the last stage, None elsewhere
"""
from hvdkit.torch.pipeline.layout import PipelineLayout, plan, replica_rank_lists
from hvdkit.torch.pipeline.split import SPLIT_BY, balanced_bounds, layer_costs, split_sequential
from hvdkit.torch.pipeline.stage import SCHEDULES, Pipeline, build, init

__all__ = ["SCHEDULES", "SPLIT_BY", "Pipeline", "PipelineLayout", "balanced_bounds", "build", "init", "layer_costs",
           "plan", "replica_rank_lists", "split_sequential"]
