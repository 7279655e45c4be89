"""``compression="auto"``: per bucket, the compressor and route the cost model says are fastest, checked by measurement.

At the first exchange (and again after :meth:`AutoChoice.reprobe`) every rank
takes part in:

1. **a probe of the links** (:mod:`hvdkit.exchange.probe`): timed allreduces
   between nodes (the cross-node set of local rank 0, alone, so it measures
   one node's interface) and inside each node; with one link class (one node,
   or no node process sets) the world's. ``gbit=``/``latency_us=`` replace
   the probe between nodes;
2. **the candidates' kernels, timed on this machine at the real bucket
   sizes**: each (candidate, route) of each bucket runs twice (the faster
   counts: the first allocates) through the real strategies on a mirror
   transport (:func:`hvdkit.exchange.scale.traffic`), which also records the
   collectives it issues and their bytes;
3. **the choice**: :func:`hvdkit.exchange.scale.predict` prices every
   (candidate, route) with the probed links and the kernel times (the slowest
   rank's, gathered from all ranks, so all ranks compute the same plan from
   the same numbers); :func:`choose` takes the fastest, but dense unless a
   compressed choice is predicted faster by more than ``tie`` (default 10 %):
   compression never wins on a link where it only breaks even.

Routes: ``flat`` (dense ring, a summable payload's allreduce or an
allgather), ``two_phase`` (gathered compressors, from 3 ranks: at 2 it sends
no fewer bytes than an allgather and compresses twice) and ``hierarchical``
(offered where the exchange has node process sets: the optimizer's
``hierarchical=True``, or ``"auto"`` on real nodes).

Default candidates (spec option ``candidates``): ``none fp16 int8 topk:0.01
powersgd:4``, the compressors that stayed within about a point of dense with
their defaults over 3 seeds on 2 ranks and on 2 nodes x 2 (benchmarks/README.md,
"Fidelity"; ``topk:0.01`` is 1.3 points under on digits at 2 x 2, inside
its seed spread). Left out: ``bf16`` (fp16's bytes), ``onebit`` (the widest
spread over seeds, up to +-1.9 points, and more bytes than ``topk:0.01``),
``randomk:0.01`` (2.3 to 4.0 points under at 2 x 2).

Then it **measures**: over ``revisit`` steps (default 3) the median step time
(between the ends of consecutive exchanges; everything but the exchange is
the same whatever the choice) and the time the step waited on the exchange.
The predicted step time is the measured time outside the exchange wait plus
the predicted exchange, unhidden. Up to five plans are measured so, in this
order, and the fastest measured stays (dense when within ``MEASURED_TIE`` of
it):

1. the model's plan: each bucket's own best choice;
2. the best uniform plan: the one (candidate, route) the model prices
   fastest over all buckets;
3. the best uniform plan off the hierarchical route: one candidate, each
   bucket on the cheaper of flat and two-phase, as a fixed ``compression=``
   without ``hierarchical`` sends them;
4. each bucket's runner-up, only if plan 1 was slower than predicted by more
   than ``slack`` (default 25 %: the model missed something, such as
   contention or a slower link than probed);
5. the plain dense exchange: every bucket dense on the flat route, what
   ``compression="none"`` sends, whatever the model predicted for it.

(Plans the same as an earlier one are measured once.)

The model cannot be trusted alone: on the emulated cluster (2 cores shared by
4 ranks) it priced dense hierarchical buckets at half the time they took; a
compressed plan that met its own prediction was still slower than dense at
10 Gbit/s; and with 4 nodes of 1 rank its per-bucket mix (int8 two-phase for
the largest bucket, top-k for the others) ran at 0.81x of top-k for all
buckets (1 Gbit/s, same job); on 2 nodes x 2 ranks it priced top-k on the
hierarchical route for every bucket fastest, and that plan's steps took 2.3x
those of a plan with half the buckets off it (the "nodes" share 2 cores,
which the model does not know). Decisions use the maximum of every rank's
measurements, so all ranks switch together.

Switching a bucket's compressor leaves the error-feedback residual of the
old one behind (its unsent part of the gradient is dropped, once). ``pin=SPEC``
or ``pin=SPEC@ROUTE`` fixes the choice for every bucket the compressor
accepts (no revisiting); so does passing that spec instead of ``auto``.
"""
import dataclasses
import logging
import statistics
import time

from hvdkit.compression import registry
from hvdkit.exchange import cost, probe, scale

__all__ = ["AutoChoice", "Choice", "accepts", "choose", "measure", "price", "ranked"]

_log = logging.getLogger(__name__)
# The scale model's routes, as the Reducer runs them.
ROUTE_OF = {"ring": "flat", "allreduce": "flat", "allgather": "flat", "two_phase": "two_phase",
            "hierarchical": "hierarchical"}
_TIMING_RUNS = 2  # each (candidate, route) runs this often; the fastest kernel time counts (the first allocates)
_NOISE_S = 1e-3  # a step over its prediction by less than this is not revisited (scheduling noise on small steps)
# Measured, dense stays unless a compressed plan is faster by more than this: inside the 0.97x-of-dense floor and
# the 5 % of the best fixed strategy that auto is held to (the predicted ``tie`` is wider: it covers the model's error).
MEASURED_TIE = 0.03


@dataclasses.dataclass(frozen=True)
class Choice:
    """How one bucket travels: a candidate spec (``none``: dense) on a route, and its predicted seconds."""

    spec: str
    route: str  # "flat", "two_phase" or "hierarchical"
    seconds: float

    @property
    def dense(self):
        return self.spec == "none"

    def __str__(self):
        return f"{self.spec}@{self.route}"


def choose(choices, tie):
    """The fastest of ``choices`` (Choices, the earlier winning exact ties), except that the fastest dense
    choice wins unless a compressed one is faster by more than the fraction ``tie``."""
    best = min(choices, key=lambda c: c.seconds)
    dense = min((c for c in choices if c.dense), key=lambda c: c.seconds)
    return dense if best.dense or dense.seconds <= best.seconds * (1 + tie) else best


def ranked(choices, tie):
    """``choices`` in order of preference: :func:`choose`'s pick, then the others by predicted time."""
    first = choose(choices, tie)
    return [first] + sorted((c for c in choices if c is not first), key=lambda c: c.seconds)


def measure(heads, bucket, ops, like, world, per_node, hierarchical):
    """{(spec, scale route): Traffic} of every candidate in ``heads`` that accepts ``bucket`` (an
    ``exchange.buckets.Bucket``), on every route that applies, run here at the bucket's size: the collectives'
    bytes, and the kernels' time on this machine. ``world``: ranks; ``per_node``: ranks per node;
    ``hierarchical``: whether node process sets exist; ``like``: a tensor of the framework and device."""
    measured, tensor = {}, None
    for head in heads:
        if head != "none" and not accepts(registry.create(head, ops), bucket):
            continue
        for route in scale.routes_for(head):
            if route == "hierarchical" and (not hierarchical or bucket.numel < per_node):
                continue
            if route == "two_phase" and world < 3:  # no fewer bytes than an allgather, twice the compression error
                continue
            if tensor is None:
                tensor = ops.scale(ops.randn(bucket.numel, bucket.index, like), 0.01)
            runs = [scale.traffic(head, route, world, per_node, tensor, bucket.layout) for _ in range(_TIMING_RUNS)]
            measured[head, route] = min(runs, key=lambda t: t.kernel_s)
    return measured


def price(measured, per_node, cross, intra, kernel_s=None):
    """Choices (in ``measured``'s order) priced by the cost model: ``cross``/``intra``: the links'
    ``cost.Network``; ``kernel_s``: {(spec, scale route): seconds} instead of the kernel times measured."""
    choices = []
    for (head, route), traffic in measured.items():
        if kernel_s is not None:
            traffic = scale.Traffic(traffic.hops, kernel_s[head, route])
        choices.append(Choice(head, ROUTE_OF[route], scale.predict(traffic, per_node, cross, intra)))
    return choices


def accepts(compressor, bucket):
    """Whether ``compressor`` may take the whole bucket (each tensor's shape and size, float32)."""
    return (bucket.compressed and bucket.dtype == "float32"
            and all(s.numel >= compressor.spec.options["min_numel"] and compressor.accepts(s.shape)
                    for s in bucket.slots))


class AutoChoice:
    """One Reducer's automatic choice (see the module docstring): the plan per bucket and its trials."""

    __slots__ = ("spec", "ops", "links", "transport", "name", "heads", "compressors", "plans", "trial", "plan",
                 "predicted", "measured", "samples", "last_end", "fresh", "settled", "pending", "probes",
                 "networks", "events", "runner_up", "slow")

    def __init__(self, spec, ops, links, transport, name):
        self.spec = spec  # the parsed "auto" Spec
        self.ops = ops
        self.links = links  # the exchange's process sets: hierarchical routes only where node sets exist
        self.transport = transport  # runs the probe and gathers measurements
        self.name = name  # prefix of the probe's Horovod op names
        self.heads = spec.options["candidates"].split("+")  # candidate specs, "none" first
        self.compressors = {}  # spec -> compressor, made on first use
        self.plans = []  # whole plans to try, in order: each a tuple of (Choice, dense Choice) per bucket
        self.runner_up = None  # index in plans of the runner-ups' plan (tried only after a slow first plan)
        self.slow = set()  # plan indices measured slower than predicted by more than the slack
        self.trial = 0  # index of the plan in use
        self.plan = None  # the plan in use
        self.predicted = []  # per plan: predicted exchange seconds per step
        self.measured = {}  # plan index -> (step seconds, wait seconds), the ranks' maximum of medians
        self.samples = []  # (step seconds, wait seconds) of the trial in progress
        self.last_end = None  # perf_counter() at the end of the last step's exchange
        self.fresh = True  # the next step is the first under a new plan (not measured)
        self.settled = bool(spec.options["pin"]) or spec.options["revisit"] == 0
        self.pending = True  # decide at the next launch (first step, or after reprobe())
        self.probes = 0  # probes done (names the probe's ops)
        self.networks = None  # (between nodes, inside a node) cost.Network used by the last decision
        self.events = []  # what was decided and measured, in words (logged on rank 0 too)

    # --- what the Reducer asks -------------------------------------------------------------------------
    def compressor(self, head):
        if head not in self.compressors:
            self.compressors[head] = registry.create(head, self.ops)
        return self.compressors[head]

    def select(self, reducer, bucket, like):
        """(compressor, route mode) for ``bucket`` this step; decides first when due (a collective: every rank
        launches its first bucket of the step here)."""
        if self.pending:
            self._decide(reducer, like)
        choice, dense = self.plan[bucket.index]
        compressor = self.compressor(choice.spec)
        warmup = max(self.spec.options["warmup"], compressor.spec.options["warmup"])
        if reducer.steps < warmup:
            return self.compressor("none"), dense.route
        return compressor, choice.route

    def reprobe(self):
        """Probe, time and choose again at the next step (call on every rank at the same step)."""
        self.pending, self.settled = True, bool(self.spec.options["pin"]) or self.spec.options["revisit"] == 0

    def step_done(self, reducer, wait_s):
        """After each step: measure the plan in trial; at the end of a trial, keep it or try the next."""
        now = time.perf_counter()
        last, self.last_end = self.last_end, now
        if self.settled or self.plan is None or reducer.steps < self.spec.options["warmup"]:
            return
        if self.fresh or last is None:
            self.fresh = False
            return
        self.samples.append((now - last, wait_s))
        if len(self.samples) < self.spec.options["revisit"]:
            return
        mine = (statistics.median(s for s, _ in self.samples), statistics.median(w for _, w in self.samples))
        gathered = self.transport.allgather_object(mine)
        step, wait = max(s for s, _ in gathered), max(w for _, w in gathered)
        self.measured[self.trial] = (step, wait)
        predicted = step - wait + self.predicted[self.trial]
        self._say(f"plan {self.trial + 1} of {len(self.plans)}: measured {1e3 * step:.1f} ms per step "
                  f"(waiting {1e3 * wait:.1f} ms on the exchange), predicted {1e3 * predicted:.1f} ms")
        self.samples = []
        if step > predicted * (1 + self.spec.options["slack"]) and step - predicted > _NOISE_S:
            self.slow.add(self.trial)
        left = [i for i in range(len(self.plans))
                if i not in self.measured and (i != self.runner_up or 0 in self.slow)]
        if not left:
            self._settle()
            return
        why = (f"slower than predicted by more than {100 * self.spec.options['slack']:.0f} %"
               if self.trial in self.slow else "as predicted")
        self._use(left[0], f"measured next (plan {self.trial + 1} {why})")

    # --- deciding --------------------------------------------------------------------------------------
    def _decide(self, reducer, like):
        started = time.perf_counter()
        self.pending = False
        world = self.links.world.size
        hierarchical = self.links.intra is not None
        per_node = self.links.intra.size if hierarchical else (self.links.world.per_node or world)
        cross, intra, how = self._probe(like)
        seen = {}  # buckets of the same shapes (repeated layers) are measured once
        for b in reducer.buckets:
            signature = (b.dtype, b.compressed, tuple(s.shape for s in b.slots))
            if signature not in seen:
                seen[signature] = measure(self._heads(), b, self.ops, like, world, per_node, hierarchical)
        measured = [seen[(b.dtype, b.compressed, tuple(s.shape for s in b.slots))] for b in reducer.buckets]
        kernels = [{key: t.kernel_s for key, t in m.items()} for m in measured]
        gathered = self.transport.allgather_object((kernels, cross, intra))
        kernels = [{key: max(g[0][i][key] for g in gathered) for key in k} for i, k in enumerate(kernels)]
        cross = _slowest([g[1] for g in gathered if g[1] is not None])
        intra = _slowest([g[2] for g in gathered if g[2] is not None])
        self.networks = (cross, intra)
        per_bucket = []
        for m, k in zip(measured, kernels):
            priced = price(m, per_node, cross, intra, k)
            dense = [c for c in priced if c.dense]
            plain = min([c for c in dense if c.route == "flat"] or dense, key=lambda c: c.seconds)
            per_bucket.append((self._preference(priced), plain))
        self._plans(per_bucket)
        links = (f"between nodes {_network(cross)}, inside a node {_network(intra)}" if per_node < world
                 else f"one node, {_network(intra)}")
        self._say(f"{links} ({how}); {world} ranks, {per_node} per node; decided in "
                  f"{time.perf_counter() - started:.1f} s")
        self._use(0, "chosen")

    def _heads(self):
        """The specs to measure: the candidates, or dense and the pinned one."""
        pin = self.spec.options["pin"].partition("@")[0]
        if not pin:
            return self.heads
        return ["none"] if pin == "none" else ["none", pin]

    def _preference(self, priced):
        """This bucket's choices in order of preference (pinned: the pinned one, where it applies, first)."""
        tie = self.spec.options["tie"]
        pin = self.spec.options["pin"]
        if pin:
            head, _, route = pin.partition("@")
            pinned = [c for c in priced if c.spec == head and (not route or c.route == route)]
            if pinned:
                return [min(pinned, key=lambda c: c.seconds)]
        return ranked(priced, tie)

    def _plans(self, per_bucket):
        """The plans to try (the module docstring's list), from [(preferences, plain dense choice)] per bucket.
        Each plan's choices are paired with the plain dense ones, which warm-up steps send."""
        dense = tuple(d for _, d in per_bucket)
        runner_up = tuple(p[min(1, len(p) - 1)] for p, _ in per_bucket)
        plans, self.runner_up = [], None
        for plan in (tuple(p[0] for p, _ in per_bucket), _uniform(per_bucket), _uniform(per_bucket, flat=True),
                     runner_up, dense):
            if plan is not None and plan not in plans:
                if plan is runner_up:
                    self.runner_up = len(plans)
                plans.append(plan)
        self.plans = [tuple(zip(plan, dense)) for plan in plans]
        self.predicted = [sum(c.seconds for c, _ in plan) for plan in self.plans]
        self.measured, self.samples, self.trial, self.slow = {}, [], 0, set()

    def _use(self, index, why):
        self.trial, self.plan, self.fresh, self.samples = index, self.plans[index], True, []
        groups = {}
        for choice, _ in self.plan:
            count, seconds = groups.get(str(choice), (0, 0.0))
            groups[str(choice)] = (count + 1, seconds + choice.seconds)
        chosen = ", ".join(f"{name} for {n} bucket{'s' if n > 1 else ''} ({1e3 * s:.2f} ms)"
                           for name, (n, s) in groups.items())
        self._say(f"plan {index + 1} of {len(self.plans)} {why}: {chosen}; predicted exchange "
                  f"{1e3 * self.predicted[index]:.2f} ms per step")

    def _settle(self):
        """Keep the fastest measured plan (all dense when within ``MEASURED_TIE`` of it)."""
        self.settled = True
        fastest = min(self.measured, key=lambda i: self.measured[i][0])
        dense = [i for i in self.measured if all(c.dense for c, _ in self.plans[i])]
        if dense and self.measured[dense[0]][0] <= self.measured[fastest][0] * (1 + MEASURED_TIE):
            fastest = dense[0]
        if fastest != self.trial:
            self._use(fastest, "measured fastest")
        else:
            self._say(f"keeping plan {fastest + 1}")

    def _probe(self, like):
        """(between nodes, inside a node, how): this rank's measurements (None where it took no part)."""
        self.probes += 1
        name = f"hvdkit.{self.name}.probe{self.probes}"
        links, options = self.links, self.spec.options
        given = (cost.Network(latency_s=options["latency_us"] * 1e-6, gbit=options["gbit"])
                 if options["gbit"] > 0 else None)
        if links.intra is None:
            world = given or probe.probe(self.transport, links.world, self.ops, like, f"{name}.world")[0]
            return world, world, "given" if given else "probed"
        how = "between nodes as given, inside probed" if given else "probed"
        cross = given
        if cross is None and links.intra.position == 0:  # one node interface at a time: local rank 0's set
            cross = probe.probe(self.transport, links.cross, self.ops, like, f"{name}.cross")[0]
        elif cross is None:  # as many Horovod operations as local rank 0's probe (see probe.shadow)
            probe.shadow(self.transport, links.cross, self.ops, like, f"{name}.cross")
        intra = probe.probe(self.transport, links.intra, self.ops, like, f"{name}.intra")[0]
        return cross, intra, how

    def _say(self, text):
        self.events.append(text)
        if self.links.world.position == 0:
            _log.warning("hvdkit: compression=auto: %s", text)

    # --- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self):
        return {"plans": [[[(c.spec, c.route, c.seconds) for c in pair] for pair in plan] for plan in self.plans],
                "trial": self.trial, "settled": self.settled, "predicted": list(self.predicted),
                "runner_up": self.runner_up,
                "layout": [self.links.world.size, self.links.intra is not None]}

    def load_state_dict(self, saved, buckets):
        """Resume the saved plan where the layout and bucket count are the same (else decide afresh)."""
        if (saved is None or saved["layout"] != [self.links.world.size, self.links.intra is not None]
                or not saved["plans"] or any(len(plan) != buckets for plan in saved["plans"])):
            return
        self.plans = [tuple(tuple(Choice(*c) for c in pair) for pair in plan) for plan in saved["plans"]]
        self.predicted, self.trial = list(saved["predicted"]), saved["trial"]
        self.runner_up = saved.get("runner_up")  # absent in checkpoints from before the uniform plan
        self.plan = self.plans[self.trial]
        self.settled, self.pending, self.fresh = saved["settled"], False, True


def _uniform(per_bucket, flat=False):
    """The plan that sends every bucket it can with one compressed candidate, the one the model prices fastest in
    sum, the others plain dense (``per_bucket``: [(priced choices, plain dense choice)]); None without a
    compressed choice. On one route for all buckets; with ``flat``, off the hierarchical route, each bucket on
    the cheaper of flat and two-phase, as a fixed ``compression=`` without ``hierarchical`` picks its routes."""
    def fits(choice, key):
        return choice.spec == key[0] and (choice.route != "hierarchical" if flat else choice.route == key[1])

    keys = {(c.spec, None if flat else c.route): None for choices, _ in per_bucket for c in choices
            if not c.dense and not (flat and c.route == "hierarchical")}
    plans = [tuple(min((c for c in choices if fits(c, key)), key=lambda c: c.seconds, default=plain)
                   for choices, plain in per_bucket) for key in keys]
    return min(plans, key=lambda plan: sum(c.seconds for c in plan), default=None)


def _slowest(networks):
    """The slowest of the ranks' measurements of one link class (highest latency, lowest bandwidth)."""
    if not networks:
        return None
    return cost.Network(latency_s=max(n.latency_s for n in networks), gbit=min(n.gbit for n in networks))


def _network(network):
    return f"{network.gbit:.3g} Gbit/s, {1e6 * network.latency_s:.0f} us"
