"""When to average: local SGD schedules and post-local SGD's warm-up, for any framework.

Instead of averaging gradients every step, each rank takes optimizer steps on
its own and the ranks average their *parameters* now and then. A schedule
maps periods to scopes: ``{1: "node", 8: "world"}`` averages inside each node
after every step (cheap, fast links) and across the world every 8th step
(the slow links). Post-local SGD (Lin et al., 2020) runs ``warmup_steps``
ordinary synchronous steps first (the caller averages gradients then), and
only afterwards switches to periodic averaging.
"""
from hvdkit.averaging.parameters import SCOPES, average_parameters

def parse_schedule(period=None, schedule=None):
    """``period`` H or an explicit ``{period: scope}`` schedule -> sorted tuple of
    (period, scope) pairs. Exactly one of the two must be given."""
    if (period is None) == (schedule is None):
        raise ValueError("give exactly one of period=H or schedule={period: scope}")
    if period is not None:
        schedule = {period: "world"}
    if not schedule:
        raise ValueError("schedule must name at least one {period: scope} pair")
    pairs = []
    for every, scope in schedule.items():
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"averaging period must be an integer >= 1, got {every!r}")
        if scope not in SCOPES:
            raise ValueError(f"averaging scope for period {every} must be one of {SCOPES}, got {scope!r}")
        pairs.append((every, scope))
    return tuple(sorted(pairs))


def scope_at(schedule, local_step):
    """The widest scope due after local step ``local_step`` (1-based), or None."""
    due = [scope for every, scope in schedule if local_step % every == 0]
    if not due:
        return None
    return "world" if "world" in due else "node"


class PeriodicAverager:
    """Averages a model's parameters across ranks on a schedule.

    Call :meth:`step` after every ``optimizer.step()``; it returns the scope it
    averaged over (``"node"``, ``"world"``) or None. ``state_dict`` holds the
    step count, so a resumed run averages on the same steps.
    """

    __slots__ = ("schedule", "warmup_steps", "_hvd", "_topology", "steps", "last_scope")

    def __init__(self, period=None, schedule=None, warmup_steps=0, hvd=None, topology=None):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        self.schedule = parse_schedule(period, schedule)  # ((period, scope), ...) sorted by period
        self.warmup_steps = warmup_steps  # synchronous steps before local steps begin
        self._hvd = hvd  # Horovod module; the one hvdkit.topology.init started when None
        self._topology = topology  # hvdkit Topology; hvdkit.topology.current() when None
        self.steps = 0  # optimizer steps taken so far, warm-up included
        self.last_scope = None  # what the last step averaged over (None: nothing), for traffic accounting

    @property
    def in_warmup(self):
        """True while the caller should still average gradients every step."""
        return self.steps < self.warmup_steps

    def step(self, parameters):
        """Count one optimizer step and average ``parameters`` (torch parameters or tensors, TensorFlow
        or Keras variables) if one is due."""
        self.steps += 1
        self.last_scope = None
        if self.steps > self.warmup_steps:
            self.last_scope = scope_at(self.schedule, self.steps - self.warmup_steps)
        if self.last_scope is not None:
            average_parameters(parameters, self.last_scope, self._hvd, self._topology)
        return self.last_scope

    def state_dict(self):
        """The step count (averaging stays on the same steps after a resume) and the schedule it counts for."""
        return {"steps": self.steps, "schedule": [list(pair) for pair in self.schedule],
                "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state):
        """Resume the step count; a different schedule or warm-up is refused (older states hold steps only)."""
        for key, mine in (("schedule", [list(pair) for pair in self.schedule]), ("warmup_steps", self.warmup_steps)):
            if key in state and state[key] != mine:
                raise ValueError(f"local SGD state was saved with {key}={state[key]!r}, this averager has "
                                 f"{key}={mine!r}")
        steps = state["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"local SGD state: steps must be an integer >= 0, got {steps!r}")
        self.steps = steps
