"""Which rank runs which stage of which replica: the pure arithmetic of a ``stages x replicas`` job.

Ranks of one replica are contiguous: replica ``r`` holds ranks ``r*K ... r*K+K-1``, stage ``s`` on
rank ``r*K+s``. With nodes of ``L`` ranks and ``K`` dividing ``L`` (or ``L`` dividing ``K``), consecutive
stages share a node, so the activations that cross every micro-batch stay inside it, and only the
stage replicas' gradient averages (once per step) cross nodes. Stage ``s``'s replicas are ranks
``s, s+K, s+2K, ...``: the Horovod process set its DistributedOptimizer averages over.
"""
import dataclasses

__all__ = ["PipelineLayout", "plan", "replica_rank_lists"]


def _divisors(n):
    return [k for k in range(1, n + 1) if n % k == 0]


def check_stages(stages, world_size):
    """``stages`` as an int that divides ``world_size``; a ValueError naming the valid values."""
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1 or world_size % stages:
        raise ValueError(f"stages={stages!r} must be a positive integer dividing the world size {world_size} "
                         f"(each replica of the pipeline takes one rank per stage); valid: "
                         f"{', '.join(map(str, _divisors(world_size)))}")
    return stages


@dataclasses.dataclass(frozen=True)
class PipelineLayout:
    """This rank's place in the pipeline x data-parallel grid; the same arithmetic on every rank."""

    rank: int  # global rank
    stages: int  # K: ranks in one pipeline
    replicas: int  # R: copies of the pipeline, averaging gradients stage by stage

    @property
    def stage(self):
        return self.rank % self.stages

    @property
    def replica(self):
        return self.rank // self.stages

    def pipeline_ranks(self, replica=None):
        """Global ranks of ``replica``'s stages, in stage order (this rank's replica by default)."""
        replica = self.replica if replica is None else replica
        return list(range(replica * self.stages, (replica + 1) * self.stages))

    def replica_ranks(self, stage=None):
        """Global ranks holding ``stage`` (this rank's by default), one per replica."""
        stage = self.stage if stage is None else stage
        return list(range(stage, self.stages * self.replicas, self.stages))

    def describe(self):
        return f"pipeline stage {self.stage} of {self.stages}, replica {self.replica} of {self.replicas}"


def plan(rank, world_size, stages):
    """The PipelineLayout of ``rank`` in a job of ``world_size`` ranks cut into ``stages``."""
    check_stages(stages, world_size)
    return PipelineLayout(rank, stages, world_size // stages)


def replica_rank_lists(world_size, stages):
    """The rank lists to register as Horovod process sets: one per stage when it has several replicas but
    not all ranks (one stage: Horovod's global set; one replica: a one-rank set, which sends nothing and
    needs no registration)."""
    check_stages(stages, world_size)
    if stages == 1 or stages == world_size:
        return []
    return [list(range(s, world_size, stages)) for s in range(stages)]
