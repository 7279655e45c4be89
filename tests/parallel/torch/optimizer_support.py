"""Shared pieces of the DistributedOptimizer tests: a small model, per-rank data any rank can
recompute, and a single-process simulation of the same training run."""
import torch

from hvdkit.exchange.buckets import TensorInfo
from hvdkit.exchange.reducer import Reducer
from hvdkit.compression.torch_ops import TorchOps
from hvdkit.compression.dgc import OptimizerMomentum
from hvdkit.compression.horovod_names import resolve
from hvdkit.exchange.simulate import SimulatedWorld

FUSION_MB = 0.002  # ~2 KiB: several buckets for the small model below
LR = 0.05


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4))


def batch(rank, step, seed=7):
    """Rank ``rank``'s data at ``step``: the same on whichever process computes it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 1000 * step + rank)
    return torch.randn(8, 20, generator=g), torch.randn(8, 4, generator=g)


def loss_of(model, rank, step):
    x, y = batch(rank, step)
    return torch.nn.functional.mse_loss(model(x), y)


def train(model, optimizer, rank, steps, start=0):
    """Plain loop: zero_grad, backward, step; returns parameters after every step."""
    history = []
    for step in range(start, start + steps):
        optimizer.zero_grad()
        loss_of(model, rank, step).backward()
        optimizer.step()
        history.append([p.detach().clone() for p in model.parameters()])
    return history


def assert_same_on_every_rank(hvd, tensors):
    """Every rank holds bit-identical tensors (compares against rank 0's)."""
    for i, t in enumerate(tensors):
        root = hvd.broadcast(t.detach().clone(), root_rank=0, name=f"same.{i}")
        assert torch.equal(t, root), f"tensor {i} differs from rank 0's"


def simulate(size, ranks_per_node, spec, hierarchical, steps, fusion_mb=FUSION_MB):
    """The same training run with ``size`` ranks simulated in this process (hvdkit.exchange.simulate):
    parameters after every step. As the optimizer does by default, the buckets are built in the order
    PyTorch's gradient hooks fired in the first step."""
    model = make_model()
    named = list(model.named_parameters())
    ready = []
    for index, (_, p) in enumerate(named):
        p.register_post_accumulate_grad_hook(lambda _, index=index: ready.append(index))
    infos = [TensorInfo(n, tuple(p.shape), "float32", 4) for n, p in named]
    world = SimulatedWorld(size, ranks_per_node)
    reducers = [Reducer(infos, resolve(spec), TorchOps(), world.transport(r),
                        world.links(r, hierarchical), fusion_bytes=int(fusion_mb * 2**20), average=True,
                        name="sim", plan_from_first_step=True) for r in range(size)]
    # The sparsifiers take SGD's momentum over by default (DGC's momentum correction), as the optimizer does.
    moved = [reducer.take_momentum(OptimizerMomentum("torch.optim.SGD", 0.9)) for reducer in reducers][0]
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0 if moved else 0.9)
    history = []
    for step in range(steps):
        grads = []
        for r in range(size):
            model.zero_grad()
            loss_of(model, r, step).backward()
            grads.append([p.grad.clone() for _, p in named])
        order = ready[:len(named)]

        def exchange(rank):
            reducer = reducers[rank]
            reducer.adopt_order(order)
            for b in reducer.buckets:
                reducer.launch(b.index, [grads[rank][s.index] for s in b.slots])
            results, _ = reducer.finish()
            out = [None] * len(named)
            for index, flat in results.items():
                for s in reducer.buckets[index].slots:
                    out[s.index] = flat[s.offset:s.offset + s.numel].view(s.shape)
            return out

        averaged = world.run(exchange)
        for other in averaged[1:]:
            assert all(torch.equal(a, b) for a, b in zip(averaged[0], other)), "simulated ranks disagree"
        for (_, p), g in zip(named, averaged[0]):
            p.grad = g.clone()
        optimizer.step()
        history.append([p.detach().clone() for p in model.parameters()])
    return history
