"""``DistributedOptimizer``: Horovod's call pattern, with hvdkit's compression, buckets and hierarchy.

Like ``horovod.torch.DistributedOptimizer`` it returns an instance of a
subclass of the wrapped optimizer's class (so LR schedulers, ``isinstance``
and checkpoints work), sharing its parameter groups and state. A hook on each
parameter (``register_post_accumulate_grad_hook``) counts gradients in;
when the last gradient of a bucket arrives the bucket is packed and its
exchange starts, overlapping the rest of backward; ``step()`` (or
``synchronize()``) waits only for what is still in flight, then writes the
averaged gradients back into ``.grad``.
"""
import contextlib
import inspect
import itertools
import time
import warnings
import weakref

import horovod.torch as hvd
import torch

from hvdkit.compression.dgc import OptimizerMomentum
from hvdkit.compression.horovod_names import resolve
from hvdkit.compression.torch_ops import TorchOps
from hvdkit.exchange.engine import HorovodTransport
from hvdkit.exchange.options import (DEFAULT_FUSION_MB, check_exchange_arguments, process_set_links,
                                     refuse_horovod_only_arguments)
from hvdkit.exchange.reducer import Reducer, ReducerView
from hvdkit.torch.objects import gatherer
from hvdkit.torch.params import named_trainable, tensor_infos
from hvdkit.torch.sparse import SparseExchange

__all__ = ["DistributedOptimizer", "live_optimizers"]

BUCKET_ORDERS = ("ready", "registration")
_ids = itertools.count()  # numbers optimizers in creation order (same on every rank) for op names
_live = weakref.WeakValueDictionary()  # creation number -> optimizer (hvdkit.torch.join looks at all)


class _DistributedOptimizer(ReducerView):
    """Mixed in front of the wrapped optimizer's class (see ``DistributedOptimizer``)."""

    def _hvdkit_setup(self, named_parameters, spec, fusion_mb, hierarchical, backward_passes_per_step, op,
                      nonfinite, sparse_as_dense, local_sgd, bucket_order, loss_scaler, process_set, predivide,
                      groups):
        named = named_trainable(self.param_groups, named_parameters)
        self._params = [p for _, p in named]  # registration order
        self._names = [name for name, _ in named]
        self._parameter_names = {p: name for name, p in named}  # Horovod's attribute, which its scripts read
        self._index = {id(p): i for i, p in enumerate(self._params)}
        self.backward_passes_per_step = backward_passes_per_step
        self.op = op
        self.sparse_as_dense = sparse_as_dense
        number = next(_ids)
        name = f"o{number}"
        _live[number] = self
        links = _links(hierarchical, process_set)
        self.process_set = links.world.process_set
        transport = HorovodTransport(hvd, None if self.process_set is hvd.global_process_set
                                     else _alone if links.world.size == 1
                                     else gatherer(self.process_set, f"hvdkit.{name}"))
        self._reducer = Reducer(tensor_infos(named), spec, TorchOps(), transport, links,
                                fusion_bytes=int(fusion_mb * 2**20), average=op == hvd.Average, nonfinite=nonfinite,
                                name=name, plan_from_first_step=bucket_order == "ready", predivide=predivide,
                                groups=groups)
        self._weight_decay = self._move_momentum(local_sgd is not None)
        self._ready = []  # parameter indices in the order their gradients became ready (first step only)
        self._pauses = []  # per entry of _ready: seconds backward computed before it (first step only)
        self._hook_left = None  # when the last gradient hook returned (first step only)
        self._sparse_seen = set()  # parameters whose gradient was sparse in the first step
        self._densified = {}  # parameter index -> sparse_dim of a gradient densified this step (sparse_as_dense)
        self._sparse = SparseExchange(f"hvdkit.{name}", op == hvd.Average, self.process_set)
        self.loss_scaler = loss_scaler  # a GradScaler whose scale error feedback follows
        self._step_begun = False  # the first gradient of this step arrived (the loss scale was taken)
        self._delay = [backward_passes_per_step] * len(self._params)  # backward passes left per parameter
        self._missing = [len(b.slots) for b in self._reducer.buckets]  # parameters still to finish per bucket
        self._synchronized = False  # synchronize() ran since the last step()
        self._should_synchronize = True  # False inside skip_synchronize()
        self._skip_update = False  # the last synchronize() found non-finite gradients (policy "skip")
        self.local_sgd = local_sgd  # PeriodicAverager: after its warm-up, step locally and average the model
        self._state_init = False  # inside _local_step(): a state-initialising step, not a training step
        hooks = [p.register_post_accumulate_grad_hook(_hook(weakref.ref(self))) for p in self._params]
        weakref.finalize(self, _remove, hooks)  # a dropped optimizer stops counting gradients

    def _move_momentum(self, local_sgd):
        """DGC's momentum correction (``hvdkit.compression.dgc``): when the exchange takes SGD's momentum,
        the wrapped SGD runs with momentum 0 and no weight decay; the decay is added to each gradient
        before the exchange (returned, else 0), so it goes through the momentum as it did in SGD."""
        if not self._reducer.take_momentum(_sgd_momentum(self), local_sgd):
            return 0.0
        decay = self.param_groups[0]["weight_decay"]
        for group in self.param_groups:
            group.update(momentum=0.0, nesterov=False, weight_decay=0.0)
        return decay

    # --- introspection (compression, buckets, last_step_stats: ReducerView) ------------------
    @property
    def local_phase(self):
        """True once post-local SGD has left its warm-up: gradients stay local, the model is averaged."""
        return self.local_sgd is not None and not self.local_sgd.in_warmup

    # --- gradients in ----------------------------------------------------------
    def _begin_step(self):
        """Once per step, before its first launch: tell the exchange the loss scale of these gradients."""
        if not self._step_begun:
            self._step_begun = True
            scale = getattr(self.loss_scaler, "_scale", None)  # None until the scaler's first scale()
            if scale is not None:
                self._reducer.set_loss_scale(scale.detach().clone())

    def _grad_ready(self, p):
        if self.local_phase:
            return
        if self._reducer.planning:  # time backward between hooks, not the hooks (their first one checks ranks)
            arrived = time.perf_counter()
            try:
                return self._grad_arrived(p, arrived - self._hook_left if self._hook_left is not None else 0.0)
            finally:
                self._hook_left = time.perf_counter()
        return self._grad_arrived(p)

    def _grad_arrived(self, p, pause=0.0):
        self._begin_step()
        index = self._index[id(p)]
        if self._delay[index] <= 0:
            raise AssertionError(
                f"Gradients were computed more than backward_passes_per_step times before call to step() "
                f"(parameter {self._names[index]!r}). Increase backward_passes_per_step to accumulate gradients "
                f"locally.")
        self._delay[index] -= 1
        if self._delay[index] == 0:
            if self._reducer.planning:  # the first step: launched in synchronize(), once the order is known
                if not self._ready:
                    self._reducer.check_ranks()  # mismatched models fail here, inside backward, as a launch would
                if p.grad is not None and p.grad.is_sparse and not self.sparse_as_dense:
                    self._sparse_seen.add(index)
                else:
                    self._grad(index)
                self._ready.append(index)
                self._pauses.append(pause)
                return
            if index in self._reducer.excluded:
                self._sparse.launch(index, p)
                self._reducer.poll()
                return
            bucket = self._reducer.bucket_of[index]
            self._missing[bucket] -= 1
            if self._missing[bucket] == 0:
                self._launch(bucket)
        self._reducer.poll()

    def _grad(self, index):
        p = self._params[index]
        if p.grad is None:  # unused in this backward; other ranks may have used it (as Horovod does)
            p.grad = p.detach().new_zeros(p.shape)
        if p.grad.is_sparse:
            if self._reducer.links.world.size == 1:  # nothing to exchange: it stays as it is
                return p.grad
            if not self.sparse_as_dense:
                raise ValueError(f"parameter {self._names[index]!r} has a sparse gradient, but was dense in the "
                                 f"first step (or bucket_order='registration' planned it dense); pass "
                                 f"sparse_as_dense=True to exchange it densely")
            self._densified[index] = p.grad.sparse_dim()
            p.grad = p.grad.to_dense()
        return p.grad

    def _launch(self, bucket):
        slots = self._reducer.buckets[bucket].slots
        tensors = [self._grad(slot.index) for slot in slots]
        if self._weight_decay:  # in the gradients' units: times the loss scale, kept on the device
            scale = self._reducer.loss_scale
            for slot, grad in zip(slots, tensors):
                p = self._params[slot.index].detach()
                grad.add_(p, alpha=self._weight_decay) if scale is None else grad.add_(p * (scale * self._weight_decay))
        self._reducer.launch(bucket, tensors)

    def _bucket_grads(self, bucket):
        return [self._params[slot.index].grad for slot in self._reducer.buckets[bucket].slots]

    # --- Horovod's optimizer interface ------------------------------------------
    def synchronize(self):
        """Finish every bucket's exchange and write the averaged gradients into ``.grad``."""
        reducer = self._reducer
        self._begin_step()
        if reducer.planning:
            if self._sparse_seen and reducer.momentum:
                names = ", ".join(self._names[i] for i in sorted(self._sparse_seen))
                raise ValueError(f"compression {str(reducer.spec)!r} took over SGD's momentum (DGC's momentum "
                                 f"correction), which sparse gradients ({names}) would skip; pass "
                                 f"sparse_as_dense=True, or add mc=0 to the compression spec")
            reducer.adopt_order(self._ready, sorted(self._sparse_seen), self._pauses)
            self._missing = [len(b.slots) for b in reducer.buckets]
        for index in reducer.excluded:
            if index not in self._sparse.flights:
                self._sparse.launch(index, self._params[index])
        for bucket in range(len(reducer.buckets)):
            if not reducer.launched(bucket):
                self._launch(bucket)
        try:
            _, finite = reducer.finish(self._bucket_grads)
            self._sparse.finish(self._params)
            for index, sparse_dim in self._densified.items():  # sparse again, as Horovod hands it back
                self._params[index].grad = self._params[index].grad.to_sparse(sparse_dim)
        finally:
            self._densified = {}
            self._ready, self._pauses, self._hook_left, self._step_begun = [], [], None, False
            self._delay = [self.backward_passes_per_step] * len(self._params)
            self._missing = [len(b.slots) for b in reducer.buckets]
        self._skip_update = not finite and reducer.nonfinite == "skip"
        self._synchronized = True

    @contextlib.contextmanager
    def skip_synchronize(self):
        """``step()`` inside this block does not synchronize (call ``synchronize()`` yourself first)."""
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure=None):
        if self.local_sgd is None or self._state_init:
            return self._synchronized_step(closure)
        result = super().step(closure) if self.local_phase else self._synchronized_step(closure)
        self.local_sgd.step(self._params)
        return result

    def _synchronized_step(self, closure):
        if self._should_synchronize:
            if self._synchronized:
                warnings.warn("optimizer.step() called without optimizer.skip_synchronize() context after "
                              "optimizer.synchronize(); the gradients are exchanged twice. Use "
                              "optimizer.skip_synchronize() if you call optimizer.synchronize() in your code.")
            self.synchronize()
        self._synchronized = False
        if self._skip_update:
            self._skip_update = False
            return None
        return super().step(closure)

    def zero_grad(self, set_to_none=True):
        if (self._reducer.flights or self._sparse.flights
                or any(d != self.backward_passes_per_step for d in self._delay)):
            raise AssertionError("optimizer.zero_grad() was called after loss.backward() but before "
                                 "optimizer.step() or optimizer.synchronize(); that would race with the gradient "
                                 "exchange in flight.")
        return super().zero_grad(set_to_none=set_to_none)

    def set_backward_passes_per_step(self, passes):
        if passes <= 0:
            raise ValueError(f"backward_passes_per_step must be > 0, got {passes}")
        self.backward_passes_per_step = passes
        self._delay = [passes] * len(self._params)

    @contextlib.contextmanager
    def _local_step(self):
        """``step()`` runs only the wrapped optimizer (broadcast_optimizer_state initialising state)."""
        saved = self._should_synchronize, self._skip_update
        self._should_synchronize, self._skip_update, self._state_init = False, False, True
        try:
            yield
        finally:
            self._should_synchronize, self._skip_update = saved
            self._state_init = False

    # --- checkpoints ------------------------------------------------------------
    def state_dict(self):
        """The wrapped optimizer's state dict plus ``"hvdkit"``: this rank's error-feedback residuals,
        PowerSGD factors and step count (residuals differ between ranks: save them per rank)."""
        state = super().state_dict()
        state["hvdkit"] = self._reducer.state_dict()
        if self.local_sgd is not None:
            state["hvdkit_local_sgd"] = self.local_sgd.state_dict()
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        saved = state_dict.pop("hvdkit", None)
        saved_local_sgd = state_dict.pop("hvdkit_local_sgd", None)
        if saved_local_sgd is not None and self.local_sgd is not None:
            self.local_sgd.load_state_dict(saved_local_sgd)
        self._delay = [self.backward_passes_per_step] * len(self._params)
        self._missing = [len(b.slots) for b in self._reducer.buckets]
        super().load_state_dict(state_dict)
        if saved is not None:
            self._reducer.load_state_dict(saved)

    # --- elastic training (hvdkit.torch.elastic) ----------------------------------------
    def world_changed(self, keep_residuals):
        """Exchange over the ranks Horovod has now, after an elastic reset restarted it with others.

        The bucket plan, step count and PowerSGD factors carry over; error-feedback residuals only when
        ``keep_residuals``: they hold this rank's unsent gradient already divided by the old world size,
        and the share of a rank that left is gone. Flat exchange only: Horovod's restart drops the node
        process sets, and ``_links`` falls back to the world when hvdkit's topology was not initialised."""
        self._reducer = self._reducer.for_world(_links(False), keep_residuals, average=self.op == hvd.Average)
        self._delay = [self.backward_passes_per_step] * len(self._params)
        self._missing = [len(b.slots) for b in self._reducer.buckets]
        self._synchronized = False


def _hook(optimizer_ref):
    """The per-parameter hook; holds the optimizer weakly so that replacing it frees it."""
    def grad_ready(p):
        optimizer = optimizer_ref()
        if optimizer is not None:
            optimizer._grad_ready(p)
    return grad_ready


def _remove(handles):
    for handle in handles:
        handle.remove()


def live_optimizers():
    """This process's hvdkit optimizers that are still referenced, in creation order (the same on every rank)."""
    return [optimizer for _, optimizer in sorted(_live.items())]


def _sgd_momentum(optimizer):
    """The wrapped optimizer's momentum, as the compression sees it (``dgc.OptimizerMomentum``)."""
    wrapped = type(optimizer).__bases__[-1]  # the user's optimizer class behind _DistributedOptimizer
    kind = f"{wrapped.__module__}.{wrapped.__name__}"
    if not isinstance(optimizer, torch.optim.SGD):
        return OptimizerMomentum(kind, why_not=f"the wrapped optimizer is {kind}, not torch.optim.SGD")
    settings = {(g["momentum"], g["nesterov"], g["dampening"], g["weight_decay"]) for g in optimizer.param_groups}
    if len(settings) > 1:
        return OptimizerMomentum(kind, why_not=f"its parameter groups differ in momentum, nesterov, dampening or "
                                               f"weight_decay {sorted(settings)}")
    momentum, nesterov, dampening, _ = settings.pop()
    if dampening:
        return OptimizerMomentum(kind, why_not=f"its dampening is {dampening!r}; DGC's momentum has none")
    return OptimizerMomentum("torch.optim.SGD", momentum, nesterov)


def _alone(obj):
    """allgather_object of a rank that exchanges with no one (outside its optimizer's process set)."""
    return [obj]


def _links(hierarchical, process_set=None):
    return process_set_links(hvd, process_set, hierarchical, "hvdkit.torch.init()")


def _constructor_kwargs(optimizer):
    """The wrapped optimizer's defaults that its class's __init__ accepts (to rebuild it faithfully)."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    return {k: v for k, v in optimizer.defaults.items() if k in accepted}


def DistributedOptimizer(optimizer, named_parameters=None, compression="none", backward_passes_per_step=1,
                         op=hvd.Average, gradient_predivide_factor=1.0, num_groups=0, groups=None,
                         sparse_as_dense=False, process_set=None, *, fusion_mb=DEFAULT_FUSION_MB,
                         hierarchical=False, nonfinite="skip", local_sgd=None, bucket_order="ready",
                         loss_scaler=None):
    """Wrap ``optimizer`` so that ``step()`` applies gradients averaged (or summed) over all ranks.

    The first arguments are ``horovod.torch.DistributedOptimizer``'s, in its order. hvdkit adds:

    * ``compression``: a spec string (``"none"``, ``"fp16"``, ``"bf16"``, ``"int8"``, ``"topk:0.01"``,
      ``"randomk:0.01"``, ``"onebit"``, ``"powersgd:4"``, with options such as ``warmup=100``,
      ``min_numel=1024``, ``ef=1``), a ``hvdkit.compression.Spec``, or ``hvd.Compression.none/fp16/...``
      (Horovod's own ``Compression.none/fp16`` are accepted too);
    * ``fusion_mb``: bucket size cap in MiB (0: one bucket per parameter);
    * ``hierarchical``: ``True`` averages inside each node, exchanges (compressed) between nodes and
      shares the result inside the node; ``"auto"`` does so only across real (not emulated) nodes;
    * ``nonfinite``: ``"skip"`` (default: warn and skip the update on every rank), ``"raise"``
      (FloatingPointError), or ``"pass"`` (hand non-finite gradients on, e.g. to AMP's GradScaler).
      Error-feedback state never takes in a non-finite value.
    * ``local_sgd``: a ``hvdkit.averaging.PeriodicAverager`` for post-local SGD: its ``warmup_steps``
      are ordinary synchronous steps, after which each rank steps on its own gradients and the averager
      averages the parameters on its schedule (e.g. every 8 steps, or ``{1: "node", 8: "world"}``).
    * ``bucket_order``: ``"ready"`` (default) builds the buckets in the order the first step's gradients
      became ready (as DDP rebuilds its buckets; rank 0's order on every rank; that step's buckets leave
      when backward has finished), so from then on communication starts as early as backward allows;
      ``"registration"`` keeps the reverse registration order.
    * ``loss_scaler``: the ``torch.amp.GradScaler`` scaling this job's loss. Error-feedback residuals then
      follow its scale (multiplied by new / old when it grows or backs off), read on the device; without it,
      a changing scale would misweight what compression carries from step to step. Use
      ``nonfinite="pass"`` with it, and Horovod's pattern: ``scaler.scale(loss).backward()``,
      ``optimizer.synchronize()``, ``scaler.unscale_(optimizer)``, ``with optimizer.skip_synchronize():
      scaler.step(optimizer)``, ``scaler.update()``.

    ``op=hvd.Adasum`` is delegated to Horovod's own optimizer (``compression`` none or fp16, and
    ``backward_passes_per_step``); another hvdkit option away from its default is a ValueError naming it.
    ``hvdkit.torch.join()`` (Horovod's ``join``) refuses, before joining, exchanges it cannot complete.
    ``gradient_predivide_factor`` splits the average as Horovod's does (1/factor before the sum, factor/size
    after; by default hvdkit divides by the world size before summing, so fp16 sums cannot overflow).
    ``process_set``: the exchange runs among that registered set's ranks (flat; ``hierarchical=True`` needs
    the global set). Sparse gradients (``nn.Embedding(sparse=True)``) seen in the first step are exchanged
    sparsely, as Horovod does, unless ``sparse_as_dense=True``.
    ``groups`` (or ``num_groups``), as Horovod defines them, replace ``fusion_mb``: an integer splits the
    parameters into that many groups in registration order, a list of parameter lists groups those (every
    other parameter alone); each group is one bucket (one per dtype and compressed or not).
    """
    if backward_passes_per_step <= 0:
        raise ValueError(f"backward_passes_per_step must be > 0, got {backward_passes_per_step}")
    if op not in (hvd.Average, hvd.Sum, hvd.Adasum):
        raise ValueError(f"op must be hvd.Average, hvd.Sum or hvd.Adasum, got {op!r}")
    _check_predivide(gradient_predivide_factor, op)
    if num_groups:
        if groups is not None:
            raise ValueError(f"pass groups or num_groups, not both (got groups={groups!r}, num_groups={num_groups!r})")
        groups = num_groups  # Horovod's older name for an integer groups
    refuse_horovod_only_arguments(hvd, "DistributedOptimizer", 1.0, None, 0, process_set,
                                  process_sets_supported=True)
    if named_parameters is not None:
        named_parameters = list(named_parameters)  # read twice: for the groups and by the optimizer
    groups = _index_groups([p for _, p in named_trainable(optimizer.param_groups, named_parameters)], groups)
    check_exchange_arguments(hierarchical, fusion_mb, nonfinite)
    if loss_scaler is not None and not hasattr(loss_scaler, "get_scale"):
        raise ValueError(f"loss_scaler must be a torch.amp.GradScaler, got {loss_scaler!r}")
    if bucket_order not in BUCKET_ORDERS:
        raise ValueError(f"bucket_order must be one of {', '.join(map(repr, BUCKET_ORDERS))}, got {bucket_order!r}")
    spec = resolve(compression)
    if local_sgd is not None and not hasattr(local_sgd, "in_warmup"):
        raise ValueError(f"local_sgd must be a hvdkit.averaging.PeriodicAverager, got {local_sgd!r}")
    if op == hvd.Adasum:
        return _horovod_adasum(optimizer, named_parameters, spec, backward_passes_per_step, {
            "fusion_mb": fusion_mb, "hierarchical": hierarchical, "groups": groups, "sparse_as_dense": sparse_as_dense,
            "process_set": process_set, "local_sgd": local_sgd, "bucket_order": bucket_order, "nonfinite": nonfinite})
    cls = type(type(optimizer).__name__, (_DistributedOptimizer, type(optimizer)), {"__module__": __name__})
    wrapped = cls.__new__(cls)
    type(optimizer).__init__(wrapped, optimizer.param_groups, **_constructor_kwargs(optimizer))
    wrapped.state.update(optimizer.state)
    wrapped._hvdkit_setup(named_parameters, spec, fusion_mb, hierarchical, backward_passes_per_step, op,
                          nonfinite, sparse_as_dense, local_sgd, bucket_order, loss_scaler, process_set,
                          float(gradient_predivide_factor), groups)
    return wrapped


def _index_groups(params, groups):
    """Horovod's ``groups`` as tuples of parameter indices covering every parameter (None: no groups)."""
    if groups is None:
        return None
    if isinstance(groups, bool) or not isinstance(groups, (int, list)) or (isinstance(groups, int) and groups <= 0):
        raise ValueError(f"groups should be a positive integer or a list of lists of parameters, got {groups!r}")
    count = len(params)
    if isinstance(groups, int):
        size, extra = divmod(count, groups)
        bounds = [i * size + min(i, extra) for i in range(groups + 1)]  # Horovod's split_list
        return tuple(tuple(range(a, b)) for a, b in zip(bounds, bounds[1:]) if b > a)
    index = {id(p): i for i, p in enumerate(params)}
    listed, seen = [], set()
    for group in groups:
        members = []
        for p in group:
            if not isinstance(p, torch.Tensor):
                raise ValueError(f"groups must consist of torch.Tensor, got {type(p).__name__}")
            if id(p) not in index:
                raise ValueError(f"groups holds a tensor of shape {tuple(p.shape)} that is not a trainable parameter "
                                 f"of this optimizer")
            if id(p) in seen:
                raise ValueError("A parameter can only appear once in groups.")
            seen.add(id(p))
            members.append(index[id(p)])
        if members:
            listed.append(tuple(members))
    return tuple(listed) + tuple((i,) for i in range(count) if id(params[i]) not in seen)


def _check_predivide(factor, op):
    """Horovod's rule: a factor > 0 that splits an average (1/factor before the sum, factor/size after)."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < float("inf"):
        raise ValueError(f"gradient_predivide_factor must be a number > 0, got {factor!r}")
    if factor != 1.0 and op != hvd.Average:
        name = "hvd.Adasum" if op == hvd.Adasum else "hvd.Sum"
        raise ValueError(f"gradient_predivide_factor={factor!r} splits an average: it needs op=hvd.Average, "
                         f"not op={name}")


def _adasum_refusal(spec, options):
    """Why op=hvd.Adasum cannot take these hvdkit options (None: it can). Adasum runs Horovod's own optimizer,
    which adapts each parameter's update on its own: hvdkit's buckets, hierarchy, compressors and checks are not
    in its path. ``options``: the keyword arguments as given; defaults are never refused."""
    why = "Adasum runs Horovod's own optimizer, which"
    if spec.name not in ("none", "fp16"):
        return (f"compression={spec.head!r}: {why} supports compression 'none' or 'fp16' only; "
                f"use op=hvd.Average for {spec.name}")
    extra = {key: value for key, value in spec.options.items() if value != resolve(spec.name).options[key]}
    if extra:
        shown = ",".join(f"{key}={value}" for key, value in sorted(extra.items()))
        return (f"compression={spec.name!r} with {shown}: {why} takes Horovod's {spec.name} without options; "
                f"drop {shown}, or use op=hvd.Average")
    refused = {
        "fusion_mb": (DEFAULT_FUSION_MB, "fuses with HOROVOD_FUSION_THRESHOLD, not hvdkit's buckets; set that "
                                         "variable instead"),
        "hierarchical": (False, "reduces inside each node first by itself (on GPUs); use hierarchical=False, or "
                                "op=hvd.Average for hvdkit's hierarchy"),
        "groups": (None, "exchanges each parameter on its own; drop groups/num_groups, or use op=hvd.Average"),
        "sparse_as_dense": (False, "exchanges dense gradients only; use op=hvd.Average for sparse gradients"),
        "process_set": (None, "runs on the global process set only; drop process_set, or use op=hvd.Average"),
        "local_sgd": (None, "updates every step; use op=hvd.Average with local_sgd"),
        "bucket_order": ("ready", "has no buckets; drop bucket_order"),
    }
    for name, (default, what) in refused.items():
        value = options[name]
        if name == "process_set" and value is hvd.global_process_set:
            continue
        if value is not default and value != default:
            if name == "groups":
                return f"groups/num_groups: {why} {what}"
            shown = repr(value) if isinstance(value, (str, int, float)) else f"<{type(value).__name__}>"
            return f"{name}={shown}: {why} {what}"
    if options["nonfinite"] == "raise":
        return (f"nonfinite='raise': {why} applies non-finite updates as they come (nonfinite='pass'); use "
                f"op=hvd.Average to raise on them")
    return None


def _horovod_adasum(optimizer, named_parameters, spec, backward_passes_per_step, options):
    """``op=hvd.Adasum``: Horovod's own optimizer, after refusing the hvdkit options it would ignore.
    ``nonfinite="skip"`` (the default) and ``loss_scaler`` (no error feedback to rescale) are accepted."""
    why = _adasum_refusal(spec, options)
    if why is not None:
        raise ValueError(f"op=hvd.Adasum with {why}")
    horovod_compression = hvd.Compression.fp16 if spec.name == "fp16" else hvd.Compression.none
    return hvd.DistributedOptimizer(optimizer, named_parameters, horovod_compression, backward_passes_per_step,
                                    op=hvd.Adasum)
