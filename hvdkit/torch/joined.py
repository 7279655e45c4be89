"""``hvd.join()`` for hvdkit's optimizers: a rank that runs out of data joins, the others step on.

Horovod answers a joined rank's allreduces with zeros, in the global process
set only, and fails its allgathers, alltoalls and broadcasts. So ``join``
first asks every live hvdkit optimizer of this process whether its exchange
can go on that way (``refusal``) and raises naming each one that cannot,
before joining, instead of leaving the other ranks to fail or hang.
"""
import gc

import horovod.torch as hvd

from hvdkit.torch.distributed_optimizer import live_optimizers

__all__ = ["join", "refusal"]


def join(device=-1):
    """Horovod's ``hvd.join()`` for hvdkit's optimizers: this rank has run out of data; the others' steps go on,
    this rank contributing zeros (an average still divides by the world size, as Horovod's does). Blocks until
    every rank has joined and returns the rank that joined last (broadcast the model from it, as with Horovod).

    Before joining, raises ValueError if one of this process's optimizers exchanges in a way Horovod cannot
    complete with a joined rank (it would fail or hang the others). Once all have joined, every optimizer takes
    the step counts and compressor memory (random-k's seeds, PowerSGD's Q) of the last rank to join: it took part
    in every exchange, the others missed those after they joined."""
    refusals = _refusals()
    if refusals:
        gc.collect()  # an optimizer the script dropped may live on in a reference cycle: it takes no part
        refusals = _refusals()
    if refusals:
        raise ValueError("hvdkit.torch.join(): hvdkit's DistributedOptimizer cannot go on without this rank: "
                         + "; ".join(refusals))
    last = hvd.join(device)
    exchanging = [o for o in live_optimizers() if o._reducer.links.world.size > 1]
    shared = hvd.broadcast_object({o._reducer.name: _state(o) for o in exchanging}, root_rank=last,
                                  name="hvdkit.join")
    if hvd.rank() != last:
        for optimizer in exchanging:
            if optimizer._reducer.name in shared:
                _adopt(optimizer, shared[optimizer._reducer.name])
    return last


def _refusals():
    return [f"optimizer {o._reducer.name}: {why}" for o in live_optimizers() if (why := refusal(o)) is not None]


def refusal(optimizer):
    """Why ``optimizer``'s ranks could not go on stepping after this rank joins (None: they can).

    Horovod answers a joined rank's allreduces with zeros, in the global process set only, and fails
    its allgathers, alltoalls and broadcasts: hvdkit's exchanges must be allreduces over that set."""
    reducer = optimizer._reducer
    if reducer.links.world.size == 1:
        return None  # it exchanges with no one (a world of one, or a rank outside its process set)
    spec = reducer.spec
    if getattr(optimizer.process_set, "process_set_id", 0) != 0:
        return ("process_set=: Horovod's join covers the global process set only; use the global process "
                "set to join")
    if reducer.links.intra is not None:
        return ("hierarchical=True: its node and cross-node process sets are outside Horovod's join (global "
                "set only); use hierarchical=False to join")
    if not reducer.compressor.summable:
        return (f"compression={spec.head!r} gathers payloads (allgather, or alltoall in two phases), "
                f"which Horovod does not run while a rank has joined; use compression none, fp16, randomk or "
                f"powersgd to join")
    if getattr(reducer, "momentum", None):
        return (f"compression={spec.head!r} took over SGD's momentum (DGC's momentum correction), which "
                f"a joined rank would stop applying to its own velocity; add mc=0 to the spec to join")
    if optimizer.local_sgd is not None:
        return ("local_sgd= averages the parameters, and a joined rank's zeros would be averaged into them; "
                "use local_sgd=None to join")
    if reducer.excluded:
        names = ", ".join(optimizer._names[i] for i in sorted(reducer.excluded))
        return (f"the sparse gradients of {names} travel as Horovod allgathers, which it does not run while a "
                f"rank has joined; pass sparse_as_dense=True to join")
    if reducer.planning or not reducer._checked:
        return ("join() before this optimizer's first step: the ranks compare their models and bucket order "
                "in it (allgathers, which Horovod does not run while a rank has joined); step once first")
    if reducer.flights or optimizer._sparse.flights or any(d != optimizer.backward_passes_per_step for d in optimizer._delay):
        return "join() between backward() and step(): call it after optimizer.step()"
    return None


def _state(optimizer):
    """What the ranks must hold alike between steps, on the CPU: the exchange's step count and, per bucket
    state, the compressor's step count (random-k's seeds) and memory (PowerSGD's Q)."""
    states = {key: (state.steps, None if state.memory is None else state.memory.detach().cpu())
              for key, state in optimizer._reducer.states.items()}
    return {"steps": optimizer._reducer.steps, "states": states}


def _adopt(optimizer, shared):
    """Take the last rank's ``_state`` (it took part in every exchange)."""
    reducer = optimizer._reducer
    reducer.steps = shared["steps"]
    for (index, route), (steps, memory) in shared["states"].items():
        bucket = reducer.buckets[index]
        state = reducer._state(bucket, route)
        state.steps = steps
        if memory is None:
            state.memory = None
        elif state.memory is not None and state.memory.shape == memory.shape:
            state.memory.copy_(memory)
        else:
            state.memory = memory.to(optimizer._params[bucket.slots[0].index].device)
