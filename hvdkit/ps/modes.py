"""Update modes and the clock rules that decide when a server answers a worker.

* ``sync``: step t completes when every member pushed its gradient for t;
  each worker gets the mean (allreduce's answer).
* ``backup:B``: step t completes with the first N - B deltas of the N
  members; a delta for an older step is dropped and counted (Chen et al. 2016).
* ``ssp:S``: deltas applied on arrival; a worker that finished step c (clock
  c + 1) gets parameters once every member's clock is >= c + 1 - S, so the
  pull holds all updates of steps <= c - S (Ho et al. 2013).
* ``async``: deltas applied on arrival, answered at once; optionally scaled
  by 1 / staleness (Zhang et al. 2016).
"""
__all__ = ["Mode", "parse", "ssp_ready", "backup_quorum"]

CHOICES = "sync, ssp:S (S >= 0), async, async:scaled, backup:B (B >= 1)"


class Mode:
    __slots__ = ("name", "staleness", "backups", "scaled")

    def __init__(self, name, staleness=0, backups=0, scaled=False):
        self.name = name  # sync | ssp | async | backup
        self.staleness = staleness  # ssp: how many clocks a worker may run ahead of the slowest
        self.backups = backups  # backup: how many members' deltas a step may go without
        self.scaled = scaled  # async: divide each delta by its staleness (Zhang et al. 2016)

    @property
    def pushes_gradients(self):
        """sync exchanges gradients (workers apply the mean); the others push optimizer-step deltas."""
        return self.name == "sync"

    def __str__(self):
        return {"sync": "sync", "ssp": f"ssp:{self.staleness}", "backup": f"backup:{self.backups}",
                "async": "async:scaled" if self.scaled else "async"}[self.name]

    def __repr__(self):
        return f"Mode({str(self)!r})"

    def __eq__(self, other):
        return isinstance(other, Mode) and str(self) == str(other)

    def __hash__(self):
        return hash(str(self))


def _count(spec, arg, low):
    try:
        value = int(arg)
    except ValueError:
        value = None
    if value is None or value < low or str(value) != arg.strip():
        raise ValueError(f"update mode {spec!r}: the number after ':' must be an integer >= {low}; "
                         f"valid modes: {CHOICES}")
    return value


def parse(spec):
    """A Mode from ``sync``, ``ssp:S``, ``async``, ``async:scaled`` or ``backup:B``; ValueError naming the spec."""
    if isinstance(spec, Mode):
        return spec
    name, _, arg = str(spec).strip().partition(":")
    if name == "sync" and not arg:
        return Mode("sync")
    if name == "async" and arg in ("", "scaled"):
        return Mode("async", scaled=arg == "scaled")
    if name == "ssp" and arg:
        return Mode("ssp", staleness=_count(spec, arg, 0))
    if name == "backup" and arg:
        return Mode("backup", backups=_count(spec, arg, 1))
    raise ValueError(f"unknown update mode {spec!r}; valid modes: {CHOICES}")


def ssp_ready(clock, member_clocks, staleness):
    """Whether a worker at ``clock`` (steps it has pushed) may pull: the slowest member's clock is at least
    ``clock - staleness`` (no members: nothing to wait for)."""
    return not member_clocks or min(member_clocks) >= clock - staleness


def backup_quorum(members, backups):
    """Deltas a backup:B step needs among ``members`` workers: N - B, and at least one."""
    return max(1, members - backups)
