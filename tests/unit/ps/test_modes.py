"""Mode parsing and the shard's clock rules, driven without sockets and checked against the rules restated."""
import numpy as np
import pytest

from hvdkit.ps import modes
from hvdkit.ps.shard import Shard


@pytest.mark.parametrize("spec,name", [("sync", "sync"), ("ssp:0", "ssp:0"), ("ssp:3", "ssp:3"), ("async", "async"),
                                       ("async:scaled", "async:scaled"), ("backup:1", "backup:1")])
def test_parse_round_trips(spec, name):
    assert str(modes.parse(spec)) == name


@pytest.mark.parametrize("spec", ["", "ssp", "ssp:-1", "ssp:x", "backup:0", "backup", "sync:1", "async:2", "bsp"])
def test_bad_modes_name_the_spec_and_the_choices(spec):
    with pytest.raises(ValueError, match="valid modes") as err:
        modes.parse(spec)
    assert repr(spec) in str(err.value)


def test_ssp_admission_rule_restated():
    rng = np.random.default_rng(1)
    for _ in range(200):
        clocks = list(rng.integers(0, 10, rng.integers(1, 5)))
        c, s = int(rng.integers(0, 12)), int(rng.integers(0, 4))
        assert modes.ssp_ready(c, clocks, s) == all(c - k <= s for k in clocks)


def test_ssp_pull_holds_every_update_older_than_the_staleness_bound():
    """Random interleaving of 3 ssp:1 workers: each delta is one-hot on its worker, so the parameters count
    every worker's applied steps; a pull answered at clock c must count >= c - S for everyone."""
    staleness, workers, steps = 1, 3, 12
    shard = Shard(0, f"ssp:{staleness}", expected=workers)
    for w in range(workers):
        shard.join(w, np.zeros(workers, np.float32))
    rng = np.random.default_rng(2)
    clock = {w: 0 for w in range(workers)}
    blocked = {}
    answered = 0
    while min(clock.values()) < steps:
        ready = [w for w in range(workers) if w not in blocked and clock[w] < steps]
        if ready:
            w = int(rng.choice(ready))
            shard.push_delta(w, clock[w], clock[w], np.eye(workers, dtype=np.float32)[w])
            blocked[w] = clock[w] + 1
        for w, target in list(blocked.items()):
            if shard.ssp_ready(target):
                counts = shard.params
                assert (counts >= target - staleness).all(), (target, counts)
                assert counts[w] == target
                clock[w] = target
                del blocked[w]
                answered += 1
        assert ready or blocked
    assert answered == workers * steps
    assert shard.params.tolist() == [steps] * workers


def test_sync_step_is_the_mean_and_a_resend_is_not_added_twice():
    shard = Shard(0, "sync", expected=2)
    shard.join(0, np.zeros(3, np.float32))
    shard.join(1, np.zeros(3, np.float32))
    assert shard.push_gradient(0, 0, 0, np.array([1, 2, 3], np.float32)) == "added"
    assert shard.push_gradient(0, 0, 0, np.array([1, 2, 3], np.float32)) == "late"
    assert not shard.step_complete()
    shard.push_gradient(1, 0, 0, np.array([3, 2, 1], np.float32))
    assert shard.step_complete()
    np.testing.assert_array_equal(shard.complete_step(), [2, 2, 2])
    assert shard.round == 1


def test_backup_takes_the_first_n_minus_b_and_counts_the_late_one():
    shard = Shard(0, "backup:1", expected=3)
    for w in range(3):
        shard.join(w, np.zeros(2, np.float32))
    shard.push_delta(0, 0, 0, np.array([1, 1], np.float32))
    assert not shard.step_complete()
    shard.push_delta(2, 0, 0, np.array([3, 5], np.float32))
    assert shard.step_complete()
    shard.complete_step()
    np.testing.assert_array_equal(shard.params, [2, 3])
    assert shard.push_delta(1, 0, 0, np.array([100, 100], np.float32)) == "late"
    assert shard.dropped_late == 1
    np.testing.assert_array_equal(shard.params, [2, 3])


def test_async_scaling_divides_by_staleness():
    shard = Shard(0, "async:scaled")
    shard.join(0, np.zeros(1, np.float32))
    shard.join(1, np.zeros(1, np.float32))
    for seq in range(3):
        shard.push_delta(0, seq, seq, np.ones(1, np.float32))
        shard.pulled[0] = shard.updates
    shard.push_delta(1, 0, 0, np.full(1, 6, np.float32))  # three updates since worker 1 pulled
    np.testing.assert_array_equal(shard.params, [3 + 6 / 3])
    assert shard.stats()["staleness_max"] == 3


def test_nothing_completes_before_the_expected_workers_joined():
    shard = Shard(0, "sync", expected=2)
    shard.join(0, np.zeros(1, np.float32))
    shard.push_gradient(0, 0, 0, np.ones(1, np.float32))
    assert not shard.step_complete()
    shard.join(1, None)
    shard.push_gradient(1, 0, 0, np.ones(1, np.float32))
    assert shard.step_complete()


def test_a_replica_repeating_the_primarys_changes_is_bit_identical():
    """The primary's applied deltas and step means, repeated through apply_replicated, give the same bytes."""
    from hvdkit.ps.replication import apply_replicated

    rng = np.random.default_rng(3)
    for mode in ("async:scaled", "backup:1", "sync"):
        primary, replica = Shard(0, mode, expected=2), Shard(0, mode, primary=False, expected=2)
        init = rng.standard_normal(33).astype(np.float32)
        for w in range(2):
            primary.join(w, init)
        apply_replicated(replica, {"ops": ["init"], "meta": primary.meta()}, [init])
        for step in range(6):
            ops, arrays = [], []
            for w in (0, 1) if step % 2 else (1, 0):
                x = rng.standard_normal(33).astype(np.float32)
                if mode == "sync":
                    primary.push_gradient(w, step, step, x, mirror=x if w == 0 else None)
                    if w == 0:
                        ops, arrays = ops + ["mirror"], arrays + [x]
                else:
                    applied = primary.push_delta(w, primary.round, step, x)
                    if isinstance(applied, np.ndarray):
                        ops, arrays = ops + ["add"], arrays + [applied]
                if primary.step_complete():
                    ops, arrays = ops + ["result" if mode == "sync" else "add"], arrays + [primary.complete_step()]
            apply_replicated(replica, {"ops": ops, "meta": primary.meta()}, arrays)
        assert replica.params.tobytes() == primary.params.tobytes()
        assert replica.meta() == primary.meta()
        if mode == "sync":
            assert replica.result.tobytes() == primary.result.tobytes()
