"""Which steps average over which scope, and bad schedules."""
import pytest

from hvdkit import averaging


def test_period_means_world_every_h_steps():
    schedule = averaging.parse_schedule(period=4)
    assert [averaging.scope_at(schedule, s) for s in range(1, 9)] == [None, None, None, "world"] * 2


def test_hierarchical_schedule_prefers_the_wider_scope():
    schedule = averaging.parse_schedule(schedule={8: "world", 1: "node"})
    scopes = [averaging.scope_at(schedule, s) for s in range(1, 17)]
    assert scopes == ["node"] * 7 + ["world"] + ["node"] * 7 + ["world"]


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of"),
    ({"period": 2, "schedule": {2: "world"}}, "exactly one of"),
    ({"period": 0}, "period must be an integer >= 1"),
    ({"schedule": {2: "rack"}}, "scope for period 2 must be one of"),
    ({"schedule": {1.5: "node"}}, "period must be an integer"),
    ({"schedule": {}}, "at least one"),
])
def test_bad_schedules_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        averaging.parse_schedule(**kwargs)


def test_warmup_steps_are_not_averaged_and_counting_resumes():
    averager = averaging.PeriodicAverager(period=2, warmup_steps=3)
    assert averager.in_warmup
    assert [averager.step([]) for _ in range(3)] == [None, None, None]
    assert not averager.in_warmup
    resumed = averaging.PeriodicAverager(period=2, warmup_steps=3)
    resumed.load_state_dict(averager.state_dict())
    assert resumed.steps == 3


def test_negative_warmup_is_rejected():
    with pytest.raises(ValueError, match="warmup_steps must be an integer >= 0"):
        averaging.PeriodicAverager(period=2, warmup_steps=-1)
