"""One optimizer's gradient exchange: bucket plan, per-bucket state, launch, wait.

Framework-neutral: the front end (``hvdkit.torch``; later ``hvdkit.tensorflow``)
tells the Reducer when a bucket's gradients are complete (``launch``), lets it
advance exchanges from its hooks (``poll``), and collects the reduced buckets
in ``finish``. The Reducer packs through the framework's ``TensorOps``, picks
the exchange strategy (``hvdkit.exchange.strategies``), the compressor (dense during warm-up
and for buckets of small or unsuitable tensors) and the state of each bucket,
and applies the policy for non-finite results:

* ``"skip"`` (default): every rank sees the same non-finite result (a rank whose
  own gradients are not finite poisons its payload), warns, and the front end
  skips the optimizer update;
* ``"raise"``: ``FloatingPointError`` on every rank, naming the parameters;
* ``"pass"``: the non-finite gradients are handed on (e.g. to AMP's GradScaler,
  which skips the step itself).

In every case error-feedback residuals and PowerSGD's factors keep their last
finite values: compressors work on attempts (``BucketState.attempt``) that
``finish`` settles once the step's global result is known.

No host synchronisation on the way: whether a bucket is finite stays a device
flag (``TensorOps``) that poisons payloads and settles error feedback on the
device; ``finish`` reads the step's one combined flag once (never under
``"pass"``), and ``StepStats.host_syncs`` counts the reads. Each bucket packs
into the same buffer every step, summable payloads are reduced in place, and
decoders write into buffers kept per bucket (``BucketState.buffer``).

The bucket plan starts from reverse registration order. A front end that sees
the order in which gradients become ready (torch's hooks) holds the first
step's buckets back until backward has finished and passes that order to
``adopt_order`` before launching them: every rank takes rank 0's order, so
from the second step on communication starts as early as backward allows,
and every step, the first included, is compressed with the same plan. A
front end that also timed that backward passes the pause before each gradient:
rank 0's long pauses become bucket boundaries (``hvdkit.exchange.buckets``), so
a bucket leaves when backward pauses instead of waiting for a gradient that
the next layer's backward produces much later.
"""
import logging
import time
import warnings

from hvdkit.compression import registry
from hvdkit.compression import spec as _spec
from hvdkit.compression.dgc import MomentumCorrection, momentum_plan
from hvdkit.compression.seeds import mix
from hvdkit.compression.state import BucketState
from hvdkit.exchange import consistency, strategies
from hvdkit.exchange.auto import AutoChoice
from hvdkit.exchange.buckets import BREAK_PAUSE_S, closing_breaks, plan_buckets
from hvdkit.exchange.cost import prefer_two_phase
from hvdkit.exchange.engine import Flight, as_completed
from hvdkit.exchange.options import check_nonfinite
from hvdkit.exchange.stats import StatsMeter

__all__ = ["Reducer", "ReducerView"]

_WHERE = "hvdkit DistributedOptimizer"  # how per-step errors name the optimizer
_log = logging.getLogger(__name__)
STRATEGIES = {"flat": strategies.flat, "two_phase": strategies.two_phase, "sharded": strategies.sharded,
              "matrix_sharded": strategies.matrix_sharded, "replicated": strategies.replicated}


class Reducer:
    """Exchanges the gradients of a fixed list of tensors, bucket by bucket, every step."""

    __slots__ = ("infos", "ops", "transport", "links", "compressor", "dense", "spec", "nonfinite", "name",
                 "prescale", "postscale", "buckets", "bucket_of", "steps", "states", "flights", "meter", "last_stats", "_checked",
                 "fusion_bytes", "changed", "buffers", "attempted", "order", "planning", "loss_scale", "excluded", "groups",
                 "momentum", "auto", "breaks")

    def __init__(self, infos, spec, ops, transport, links, *, fusion_bytes, average, nonfinite="skip", name="opt",
                 plan_from_first_step=False, predivide=1.0, groups=None):
        check_nonfinite(nonfinite)
        self.infos = list(infos)  # exchange.buckets.TensorInfo per tensor, registration order
        self.ops = ops  # the framework's TensorOps
        self.transport = transport  # runs collectives: engine.HorovodTransport, or the simulator's
        self.links = links  # process sets: world, and intra/cross in hierarchical mode
        parsed = spec if isinstance(spec, _spec.Spec) else _spec.parse(spec)
        self.dense = registry.create("none", ops)  # warm-up and buckets of uncompressed tensors
        # compression="auto": the compressor and route of each bucket are chosen (hvdkit.exchange.auto)
        self.auto = AutoChoice(parsed, ops, links, transport, name) if parsed.name == _spec.AUTO.name else None
        # the algorithm for compressible buckets (auto: chosen per bucket, through self.auto)
        self.compressor = self.dense if self.auto is not None else registry.create(parsed, ops)
        self.spec = parsed  # the parsed compression Spec
        self.nonfinite = nonfinite  # policy for non-finite results (see module docstring)
        self.name = name  # prefix of this optimizer's Horovod op names
        # Averages divide before summing (fp16 sums cannot overflow), all of it unless Horovod's
        # gradient_predivide_factor splits it: 1/predivide before, predivide/size after.
        self.prescale = (1.0 / predivide if predivide != 1.0 else 1.0 / links.world.size) if average else 1.0
        self.postscale = predivide / links.world.size if average and predivide != 1.0 else 1.0
        self.fusion_bytes = fusion_bytes  # bucket size cap (must match on every rank)
        self.order = None  # tensor indices in the order the plan takes them (None: reverse registration)
        self.excluded = frozenset()  # tensors the front end exchanges itself (sparse gradients)
        self.breaks = frozenset()  # tensors after a long pause in the first backward (bucket boundaries)
        self.groups = groups  # Horovod's explicit groups (tuples of tensor indices), or None: fusion_bytes
        self._plan(None)
        self.steps = 0  # exchanges finished (optimizer steps synchronised)
        self.states = {}  # (bucket index, strategy name) -> BucketState
        self.flights = {}  # bucket index -> engine.Flight of the step in progress
        self.meter = StatsMeter()  # totals of the step in progress
        self.last_stats = None  # stats.StepStats of the last finished step
        self._checked = False  # ranks compared their models (first launch)
        self.changed = []  # this rank's tensors that changed shape or dtype since the plan, until finish()
        self.buffers = {}  # bucket index -> the flat buffer its tensors are packed into, reused every step
        self.attempted = []  # BucketStates with an attempt in flight, settled in finish()
        self.loss_scale = None  # the loss scale the residuals are in units of (see set_loss_scale)
        self.momentum = None  # (momentum, nesterov) taken over from the optimizer (take_momentum), or None
        # Until adopt_order: the front end records the order of the first step's gradients, launching nothing.
        self.planning = plan_from_first_step and links.world.size > 1
        if links.world.size == 1 and self.compressor.name != "none":
            _log.warning("hvdkit: one rank: gradients are applied as they are, without compression (%s) or "
                         "exchange", self.spec)
        elif self.compressor.advice() and links.world.position == 0:
            _log.warning("hvdkit: %s", self.compressor.advice())

    def _plan(self, order, excluded=(), breaks=()):
        """Bucket plan over the tensors taken in ``order`` (None: reverse registration order), leaving out
        ``excluded``, closing large enough buckets before the tensors in ``breaks``."""
        self.order, self.excluded, self.breaks = order, frozenset(excluded), frozenset(breaks)
        taken = order if order is not None else list(reversed(range(len(self.infos))))
        self.buckets = plan_buckets(self.infos, self.fusion_bytes, self._compressible,
                                    [i for i in taken if i not in self.excluded], self.groups, self.breaks)
        self.bucket_of = {slot.index: b.index for b in self.buckets for slot in b.slots}  # tensor -> bucket
        self.buffers = {}

    def adopt_order(self, ready, excluded=(), pauses=None):
        """Before the first launch: rebuild the buckets in the order ``ready`` (tensor indices, as this rank's
        gradients became ready; missing ones go last), leaving out ``excluded`` (tensors the front end
        exchanges itself: sparse gradients), the same on every rank (rank 0's, through one allgather).
        ``pauses`` (optional, seconds, one per entry of ``ready``): how long backward computed before each
        gradient became ready; those of at least ``BREAK_PAUSE_S`` become breaks of the plan
        (``plan_buckets``). Returns whether the plan changed."""
        if not self.planning:
            return False
        if self.flights or self.states:
            raise RuntimeError("adopt_order() must come before the first bucket is launched")
        self.planning = False
        seen = set(ready)
        mine = list(ready) + [i for i in reversed(range(len(self.infos))) if i not in seen]
        breaks = sorted(i for i, pause in zip(ready, pauses or ()) if pause >= BREAK_PAUSE_S)
        order, excluded, breaks = self.transport.allgather_object((mine, sorted(excluded), breaks))[0]
        if self.groups is None:  # only those that split a bucket: a small model's pauses are the scheduler's
            breaks = closing_breaks(self.infos, self.fusion_bytes, self._compressible,
                                    [i for i in order if i not in set(excluded)], breaks)
        else:
            breaks = []
        if order == list(reversed(range(len(self.infos)))) and not excluded and not breaks:
            return False
        self._plan(order, excluded, breaks)
        return True

    def take_momentum(self, optimizer, local_sgd=False):
        """Deep Gradient Compression's momentum correction (``hvdkit.compression.dgc``): when the spec asks for
        it and ``optimizer`` (a ``dgc.OptimizerMomentum``) is SGD with momentum, every bucket applies that
        momentum before compressing, and the front end must run the optimizer with momentum 0. Returns
        whether it did; raises ValueError when ``mc=1`` cannot apply."""
        plan = momentum_plan(self.spec, optimizer, self.links.world.size, local_sgd)
        if plan is None:
            return False
        self.apply_momentum(plan)
        _log.info("hvdkit: %s: momentum %s%s moved from %s into the compression (DGC's momentum correction)",
                  self.spec, plan[0], " (Nesterov)" if plan[1] else "", optimizer.kind)
        return True

    def apply_momentum(self, plan):
        """Apply ``plan`` = (momentum, nesterov) in front of both compressors (also after an elastic reset)."""
        if self.states:
            raise RuntimeError("momentum correction must be set up before the first exchange")
        self.momentum = tuple(plan)
        self.compressor = MomentumCorrection(self.compressor, *plan, self.spec.options)
        self.dense = MomentumCorrection(self.dense, *plan, self.spec.options)

    def for_world(self, links, keep_residuals, average):
        """This exchange over the ranks of ``links`` (an elastic reset restarted Horovod with others): the bucket
        plan, step counts, PowerSGD factors and momentum correction carry over; error-feedback residuals and
        velocities only when ``keep_residuals``, for they hold this rank's gradients divided by the old world
        size, and the share of a rank that left is gone."""
        saved = self.state_dict()
        if not keep_residuals:
            for bucket_state in saved["buckets"].values():
                bucket_state["residual"] = bucket_state["velocity"] = None
        other = Reducer(self.infos, self.spec, self.ops, self.transport, links, fusion_bytes=self.fusion_bytes,
                        average=average, nonfinite=self.nonfinite, name=self.name)
        if self.momentum:
            other.apply_momentum(self.momentum)
        other.load_state_dict(saved)
        return other

    def set_loss_scale(self, scale):
        """Before a step's first launch, under a loss scaler: the scale its gradients are multiplied by (a
        number or a 0-dim tensor, read on the device). Residuals are kept in the units of the last step's
        scale; when the scale changed (growth, or back-off after an overflow), every residual is multiplied
        by new / old, so error feedback never misweights what it carries over."""
        if self.loss_scale is not None:
            ratio = scale / self.loss_scale
            for state in self.states.values():
                state.rescale(ratio, self.ops)
        self.loss_scale = scale

    def _compressible(self, info):
        if self.auto is not None:  # which compressor may take it is decided per bucket (auto.accepts)
            return info.dtype == "float32" and info.numel >= self.spec.options["min_numel"]
        return (self.compressor.name != "none" and info.dtype == "float32"
                and info.numel >= self.spec.options["min_numel"] and self.compressor.accepts(info.shape))

    def settings(self):
        """What must match on every rank besides the tensors; an error names the first key that differs."""
        spec = self.spec
        return {"the optimizer's name (create DistributedOptimizers in the same order on every rank)": self.name,
                "compression": spec.name if spec.arg is None else f"{spec.name}:{spec.arg!r}",
                **{f"compression option {key}": value for key, value in sorted(spec.options.items())},
                "fusion_mb": round(self.fusion_bytes / 2**20, 6), "hierarchical": self.links.intra is not None,
                "op": "average" if self.prescale != 1.0 else "sum", "prescale": self.prescale, "groups": self.groups,
                "momentum correction (the optimizer's momentum)": self.momentum,
                "buckets": [b.numel for b in self.buckets]}

    def check_ranks(self, where="hvdkit DistributedOptimizer"):
        """Once, before the first collective: every rank must have the same tensors and settings
        (``where`` names the caller in the error)."""
        if not self._checked:
            description = [(i.name, tuple(i.shape), i.dtype) for i in self.infos]
            consistency.require_same(description, self.transport.allgather_object, self.settings(), where=where)
            self._checked = True

    def _route(self, bucket, compressor, mode=None):
        """(route, strategy keyword arguments): "flat" or "two_phase" over the world, or, between nodes,
        "sharded" (with a flat or two-phase cross-node hop) or "replicated" (see hvdkit.exchange.strategies).
        ``mode`` (compression="auto"): "flat" (a gathered payload then takes an allgather), "two_phase" or
        "hierarchical"; None: hierarchical where there are node sets, two-phase as the cost model prefers."""
        links = self.links
        if mode in ("flat", "two_phase"):
            return mode, {}
        if links.intra is None or bucket.numel < links.intra.size:
            if prefer_two_phase(compressor, bucket.numel, links.world.size):
                return "two_phase", {}
            return "flat", {}
        if not compressor.elementwise:
            assignment = strategies.assign_matrices(bucket.layout, links.intra.size)
            if assignment is None:
                return "replicated", {}
            return "matrix_sharded", {"assignment": assignment}
        # The largest share decides for every local rank: all ranks then issue the same Horovod ops.
        share = strategies.shares(bucket.numel, links.intra.size)[0]
        two = prefer_two_phase(compressor, share, links.cross.size)
        return "sharded", {"cross": strategies.two_phase if two else strategies.flat}

    def _state(self, bucket, route, head=None):
        """The BucketState of this bucket on this route (and, under compression="auto", with the compressor
        ``head``), created on first use."""
        key = route if head is None else f"{route}@{head}"
        state = self.states.get((bucket.index, key))
        if state is None:
            links = self.links
            if route in ("flat", "two_phase"):
                numel, layout, shard = bucket.numel, bucket.layout, 0
                peers, peer = links.world.size, links.world.position
            elif route == "sharded":
                numel = strategies.shares(bucket.numel, links.intra.size)[links.intra.position]
                layout, peers, peer, shard = (), links.cross.size, links.cross.position, links.intra.position
            elif route == "matrix_sharded":
                layout, numel = self._my_matrices(bucket)
                peers, peer, shard = links.cross.size, links.cross.position, links.intra.position
            else:
                numel, layout, shard = bucket.numel, bucket.layout, 0
                peers, peer = links.cross.size, links.cross.position
            state = BucketState(numel, layout, peers, peer, seed=mix(bucket.index, shard))
            self.states[bucket.index, key] = state
        return state

    def _my_matrices(self, bucket):
        """(layout, numel) of this local rank's matrices of ``bucket`` on the matrix_sharded route, back to back."""
        shapes = dict(bucket.layout)
        mine = strategies.assign_matrices(bucket.layout, self.links.intra.size)[self.links.intra.position]
        layout, start = [], 0
        for offset, numel in mine:
            layout.append((start, shapes[offset]))
            start += numel
        return tuple(layout), start

    def launch(self, bucket_index, tensors):
        """Pack the bucket's tensors (in the bucket's slot order) and start its exchange."""
        self.check_ranks()
        bucket = self.buckets[bucket_index]
        changes = consistency.tensor_changes(bucket.slots, bucket.dtype, tensors)
        if changes and self.links.world.size == 1:
            consistency.require_unchanged(changes, lambda mine: [mine], where=_WHERE)
        self.meter.bucket(bucket.nbytes, self.links.world)
        if self.links.world.size == 1 and self.momentum is None:  # a lone rank's average: its own gradient
            self.flights[bucket_index] = _Unexchanged(tensors)
            return
        if changes:  # send a poisoned bucket of the planned size: no rank waits on a mismatch; finish() names it
            self.changed += changes
            flat, bad = self._filler(bucket, tensors[0]), True
        else:
            flat, bad = self.meter.timed("pack_s", self.ops.pack, tensors, self.prescale,
                                         self.buffers.get(bucket_index))
            self.buffers[bucket_index] = flat
        if self.auto is not None:
            compressor, mode = self.auto.select(self, bucket, flat)
        else:
            compressed = bucket.compressed and self.steps >= self.spec.options["warmup"]
            compressor, mode = (self.compressor if compressed else self.dense), None
        route, options = self._route(bucket, compressor, mode)
        if route in ("flat", "sharded") and compressor.summable:
            options["inplace"] = True  # the packed buffer and compressed payloads belong to the exchange
        link = self.links.world if route in ("flat", "two_phase") else self.links
        # This rank's flag settles a flat exchange; a hierarchical one checks the node sum, which
        # carries every local rank's NaN.
        bad = bad if route in ("flat", "two_phase") else None
        state = self._state(bucket, route, None if self.auto is None else compressor.spec.head)
        self.attempted.append(state)
        exchange = STRATEGIES[route](compressor, flat, state, link, f"hvdkit.{self.name}.b{bucket.index}",
                                     self.meter, bad, **options)
        self.meter.route(_route_name(route, options, compressor)
                         + ("" if self.auto is None else f" [{compressor.spec.head}]"))
        self.flights[bucket_index] = Flight(self.transport, exchange)

    def launched(self, bucket_index):
        return bucket_index in self.flights

    def poll(self):
        """Advance every exchange in flight without blocking."""
        for flight in self.flights.values():
            flight.poll()

    def finish(self, targets=None):
        """Wait for every launched bucket and unpack it: ``targets(bucket_index)`` gives the tensors to
        unpack into (torch: the ``.grad`` tensors, written in place); without it the flat buckets are
        returned. Returns ({bucket index: unpacked tensors or flat bucket}, finite), applies the
        non-finite policy, settles error feedback and records this step's StepStats in ``last_stats``.
        Under ``"pass"`` nothing is read from the device and ``finite`` is True."""
        results, reduced, flags = {}, {}, []
        check = self.nonfinite != "pass"
        for index, flight in self.flights.items():
            if isinstance(flight, _Unexchanged):
                reduced[index] = flight.tensors
                flags += [self.ops.nonfinite(t) for t in flight.tensors] if check else []
                results[index] = flight.tensors if targets is not None else self.ops.pack(flight.tensors, 1.0)[0]
        exchanged = {i: f for i, f in self.flights.items() if not isinstance(f, _Unexchanged)}
        finished = as_completed(exchanged)
        while True:
            item = self.meter.timed("wait_s", next, finished, None)
            if item is None:
                self.meter.ended = time.perf_counter()
                break
            index, flight = item
            flat = reduced[index] = flight.result
            flags.append(self.ops.nonfinite(flat))
            if targets is None or self.changed:  # a copy: the exchange reuses its buffers next step
                results[index] = self.ops.scale(flat, self.postscale) if self.postscale != 1.0 else self.ops.copy(flat)
            else:
                results[index] = self.meter.timed("pack_s", self.ops.unpack, flat, targets(index), self.postscale)
        bad = self._bad_buckets(self.ops.any_flag(flags), reduced) if check else []
        if bad or (self.changed and not check):
            self._check_unchanged()
        self._settle(bad if check else self.ops.any_flag(flags))
        self.last_stats = self.meter.finish(self.steps, skipped=bool(bad) and self.nonfinite == "skip")
        self.flights, self.meter = {}, StatsMeter()
        self.steps += 1
        if self.auto is not None and exchanged:
            self.auto.step_done(self, self.last_stats.wait_ms / 1e3)
        if bad:
            self._nonfinite(bad)
        return results, not bad

    def _bad_buckets(self, flag, reduced):
        """The buckets whose result is not finite: one host read of the step's flag; only when it is set
        (rarely: a NaN, or a sum of finite values that overflowed) is every bucket checked exactly."""
        if not isinstance(flag, bool):
            self.meter.host_syncs += 1
        if not self.ops.read_flag(flag):
            return []
        return sorted(index for index, value in reduced.items()
                      if not all(self.ops.all_finite(t) for t in (value if isinstance(value, list) else [value])))

    def _settle(self, bad):
        """Keep or drop every attempt of this step (``bad``: the non-finite buckets, or a device flag)."""
        verdict = bool(bad) if isinstance(bad, list) else bad
        for state in self.attempted:
            state.settle(verdict, self.ops.select)
        self.attempted = []

    def _filler(self, bucket, like):
        """NaN-poisoned zeros in the bucket's wire dtype (its own; bfloat16 travels as float32)."""
        flat = self.ops.zeros(bucket.numel, like)
        if bucket.dtype in ("float16", "float64"):
            flat, _ = self.ops.cast(flat, bucket.dtype)
        return self.ops.poison(flat)

    def _check_unchanged(self):
        """Every rank sees the same non-finite buckets; if some rank's tensors changed (and it sent a filler),
        raise on every rank naming them (hvdkit.exchange.consistency.require_unchanged)."""
        changed, self.changed = self.changed, []
        gather = self.transport.allgather_object if self.nonfinite != "pass" else (lambda mine: [mine])
        try:
            consistency.require_unchanged(changed, gather, where=_WHERE)
        except ValueError:
            self.flights, self.meter, self.attempted = {}, StatsMeter(), []
            raise

    def _nonfinite(self, bad):
        names = [slot.name for index in bad for slot in self.buckets[index].slots]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        message = (f"hvdkit: the averaged gradients of step {self.steps - 1} are not finite (NaN or Inf) "
                   f"in the buckets holding {shown}")
        if self.nonfinite == "raise":
            raise FloatingPointError(message)
        if self.nonfinite == "skip":
            warnings.warn(message + "; skipping this optimizer step (error-feedback state kept)",
                          RuntimeWarning, stacklevel=4)

    def state_dict(self):
        return {"steps": self.steps, "compression": str(self.spec), "order": self.order,
                "excluded": sorted(self.excluded), "breaks": sorted(self.breaks), "loss_scale": self.loss_scale,
                "buckets": {f"{index}:{key}": state.to_dict() for (index, key), state in self.states.items()},
                **({"auto": self.auto.state_dict()} if self.auto is not None else {})}

    def load_state_dict(self, saved):
        if saved["compression"] != str(self.spec):
            raise ValueError(f"checkpoint was saved with compression {saved['compression']!r}, "
                             f"this optimizer uses {str(self.spec)!r}")
        self.steps = int(saved["steps"])
        self.loss_scale = saved.get("loss_scale")
        order = saved.get("order")  # absent in checkpoints written before buckets followed the gradients' order
        excluded = frozenset(saved.get("excluded", ()))
        breaks = frozenset(saved.get("breaks", ()))  # absent in checkpoints written before breaks existed
        if (order is not None and order != self.order) or excluded != self.excluded or breaks != self.breaks:
            self._plan(None if order is None else list(order), excluded, breaks)
            self.states = {}
        if order is not None or self.steps > 0:
            self.planning = False
        for key, value in saved["buckets"].items():
            index, route = key.split(":", 1)
            route, _, head = route.partition("@")  # compression="auto" keys its states by compressor too
            if int(index) >= len(self.buckets) or route not in STRATEGIES:
                raise ValueError(f"checkpoint has compression state for bucket {key!r}; this optimizer has "
                                 f"{len(self.buckets)} buckets: the model or fusion_mb changed")
            self._state(self.buckets[int(index)], route, head or None).load_dict(value)
        if self.auto is not None:
            self.auto.load_state_dict(saved.get("auto"), len(self.buckets))


def _route_name(route, options, compressor):
    """How a bucket travels, for the step stats: the route, then how its payload crossed."""
    if route == "two_phase" or options.get("cross") is strategies.two_phase:
        hop = "two_phase"
    else:
        hop = "allreduce" if compressor.summable else "allgather"
    return route if route == "two_phase" else f"{route}/{hop}"


class ReducerView:
    """What the front ends (torch optimizer, TF exchange) show of their ``self._reducer``."""

    @property
    def compression(self):
        """The parsed compression Spec in use."""
        return self._reducer.spec

    @property
    def buckets(self):
        """The bucket plan (``hvdkit.exchange.buckets.Bucket`` list)."""
        return self._reducer.buckets

    @property
    def last_step_stats(self):
        """``hvdkit.exchange.stats.StepStats`` of the last exchange (None before the first)."""
        return self._reducer.last_stats

    @property
    def auto_compression(self):
        """Under ``compression="auto"``, its ``hvdkit.exchange.auto.AutoChoice`` (``plan``, ``events``,
        ``reprobe()``); None otherwise."""
        return self._reducer.auto


class _Unexchanged:
    """A dense bucket of a world of one rank: nothing to send, so it is neither packed nor unpacked.
    ``finish`` hands back the launched tensors themselves (which the torch front end launches from, and
    unpacks into, the same ``.grad`` tensors)."""

    __slots__ = ("tensors",)

    def __init__(self, tensors):
        self.tensors = tensors

    def poll(self):
        return True
