"""One rank of a 2-process gloo DDP job that exchanges known gradients through PyTorch's own
communication hooks and saves what DDP hands back, for tests/integration/test_torch_comm_hooks.py.

    python ddp_hooks_worker.py RANK WORLD PORT STEPS OUT.npz HOOK[:MATRIX_RANK] ...

One process group serves every hook listed (a fresh DDP model each), so the job starts once.
"""
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel

SHAPES = [(24, 40), (40,), (40, 16), (16,)]


def gradients(rank, step):
    """What rank ``rank``'s backward produces at ``step`` (the test computes the same)."""
    rng = np.random.default_rng([rank, step, 5])
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


class Params(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.params = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(s)) for s in SHAPES])

    def forward(self, data):
        return sum((p * d).sum() for p, d in zip(self.params, data))


def run(rank, hook, matrix_rank, steps):
    """(averaged gradients per step, the bucket's tensor shapes at the first compressed step)."""
    ddp = DistributedDataParallel(Params(), bucket_cap_mb=64)
    order = []
    if hook == "powersgd":
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=matrix_rank,
                                            start_powerSGD_iter=2, min_compression_rate=2, use_error_feedback=True,
                                            warm_start=True, orthogonalization_epsilon=1e-8, random_seed=0)

        def recording_hook(state, bucket):
            if state.iter == state.start_powerSGD_iter and not order:  # after DDP rebuilt its buckets
                order.extend(tuple(t.shape) for t in bucket.gradients())
            return powerSGD_hook.powerSGD_hook(state, bucket)

        ddp.register_comm_hook(state, recording_hook)
    else:
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    averaged = []
    for step in range(steps):
        ddp.zero_grad()
        ddp([torch.from_numpy(g) for g in gradients(rank, step)]).backward()
        averaged.append(np.concatenate([p.grad.numpy().reshape(-1) for p in ddp.module.params]))
    return np.stack(averaged), np.array([str(s) for s in order])


def main(rank, world, port, steps, out, hooks):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = {}
    for spec in hooks:
        hook, _, matrix_rank = spec.partition(":")
        results[f"{spec}.averaged"], results[f"{spec}.order"] = run(rank, hook, int(matrix_rank or 0), steps)
    np.savez(out, **results)
    # Both ranks finish communicating before either tears gloo down; then skip the interpreter's own
    # teardown, where a gloo thread still joinable at exit aborts ("terminate called without an active
    # exception", seen in a fresh-clone test run).
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    r, w, p, s, o, *h = sys.argv[1:]
    main(int(r), int(w), int(p), int(s), o, h)
