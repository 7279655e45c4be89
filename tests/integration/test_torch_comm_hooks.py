"""hvdkit's PowerSGD and fp16 compression against PyTorch's own DDP communication hooks.

Two gloo processes run DDP with ``powerSGD_hook`` (or ``fp16_compress_hook``) on gradients every process
can recompute (tests/support/ddp_hooks_worker.py); hvdkit's exchange runs the same gradients on two
simulated ranks, starting PowerSGD from the Q that PyTorch's hook draws. The averaged gradients of every
step must agree to float32 rounding (fp16: to the bit). The one deliberate difference (an all-zero column
becomes a unit vector when orthogonalised) does not arise on these gradients.
"""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import paths
from hvdkit.compression.torch_ops import TorchOps
from hvdkit.exchange.buckets import TensorInfo
from hvdkit.exchange.reducer import Reducer
from hvdkit.exchange.simulate import SimulatedWorld

WORKER = str(paths.REPO / "tests" / "support" / "ddp_hooks_worker.py")
SHAPES = [(24, 40), (40,), (40, 16), (16,)]
STEPS = 5
RANKS = 2


def gradients(rank, step):
    rng = np.random.default_rng([rank, step, 5])
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HOOKS = ["powersgd:1", "powersgd:2", "powersgd:4", "fp16"]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Per hook: every step's averaged gradients (concatenated in parameter order) as DDP hands them back,
    and the shapes of the bucket's tensors, in order, when PowerSGD started. One 2-process job runs all."""
    port, out_dir = free_port(), tmp_path_factory.mktemp("ddp")
    outs = [out_dir / f"rank{r}.npz" for r in range(RANKS)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, WORKER, str(r), str(RANKS), str(port), str(STEPS), str(outs[r]),
                               *HOOKS], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(RANKS)]
    for proc in procs:
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, output[-3000:]
    results = [np.load(out) for out in outs]
    runs = {}
    for hook in HOOKS:
        np.testing.assert_array_equal(results[0][f"{hook}.averaged"], results[1][f"{hook}.averaged"])
        order = [tuple(int(d) for d in s.strip("(),").split(",") if d.strip()) for s in results[0][f"{hook}.order"]]
        runs[hook] = results[0][f"{hook}.averaged"], order
    return runs


def pytorch_initial_q(order, matrix_rank):
    """The Q factors powerSGD_hook draws at its first compressed step (PowerSGDState(random_seed=0)), per
    compressed matrix shape."""
    torch.manual_seed(np.random.RandomState(0).randint(1_000_000_000))
    qs = {}
    for shape in order:
        rows, cols = shape[0], int(np.prod(shape[1:]))
        r = min(rows, cols, matrix_rank)
        if len(shape) > 1 and (rows + cols) * r * 2 < rows * cols:
            qs[shape] = torch.randn(1, cols, r)[0]
    return qs


def run_hvdkit(spec, initial_q=None):
    world = SimulatedWorld(RANKS)
    infos = [TensorInfo(f"p{i}", s, "float32", 4) for i, s in enumerate(SHAPES)]

    def body(rank):
        reducer = Reducer(infos, spec, TorchOps(), world.transport(rank), world.links(rank), fusion_bytes=1 << 30,
                          average=True, name="hooks")
        if initial_q is not None:
            for bucket in reducer.buckets:
                if bucket.compressed:
                    state = reducer._state(bucket, "flat")
                    state.memory = torch.cat([initial_q[s.shape].reshape(-1) for s in bucket.slots])
        out = []
        for step in range(STEPS):
            mine = [torch.from_numpy(g) for g in gradients(rank, step)]
            for bucket in reducer.buckets:
                reducer.launch(bucket.index, [mine[s.index] for s in bucket.slots])
            results, finite = reducer.finish()
            assert finite
            by_tensor = {}
            for index, flat in results.items():
                for s in reducer.buckets[index].slots:
                    by_tensor[s.index] = flat[s.offset:s.offset + s.numel].numpy()
            out.append(np.concatenate([by_tensor[i] for i in range(len(SHAPES))]))
        return np.stack(out)

    results = world.run(body)
    np.testing.assert_array_equal(results[0], results[1])
    return results[0]


@pytest.mark.parametrize("matrix_rank", [1, 2, 4])
def test_powersgd_matches_pytorchs_hook(ddp_runs, matrix_rank):
    ddp, order = ddp_runs[f"powersgd:{matrix_rank}"]
    ours = run_hvdkit(f"powersgd:{matrix_rank},start_iter=2", pytorch_initial_q(order, matrix_rank))
    for step in range(STEPS):
        np.testing.assert_allclose(ours[step], ddp[step], rtol=1e-4, atol=1e-5 * np.abs(ddp[step]).max(),
                                   err_msg=f"step {step}")
        assert np.abs(ddp[step]).max() > 0
    dense = np.mean([np.concatenate([g.reshape(-1) for g in gradients(r, STEPS - 1)]) for r in range(RANKS)], 0)
    assert np.abs(ours[-1] - dense).max() > 1e-3  # the compressed steps really were compressed


def test_fp16_matches_pytorchs_fp16_compress_hook(ddp_runs):
    ddp, _ = ddp_runs["fp16"]
    ours = run_hvdkit("fp16")
    np.testing.assert_array_equal(ours, ddp)
    assert np.abs(ours).max() > 0
