"""compression="auto" after the choice: a plan measured slower than predicted by more than the slack is
replaced by the next, every compressed plan is measured against dense, and the fastest measured plan stays
(dense when within MEASURED_TIE). Step times are scripted; the ranks' measurements are combined by their
maximum."""
import types

import pytest

from hvdkit.compression import spec
from hvdkit.exchange import auto
from hvdkit.exchange.strategies import Link, Links

TOPK = auto.Choice("topk:0.01", "flat", 0.010)
FP16 = auto.Choice("fp16", "flat", 0.030)
DENSE = auto.Choice("none", "flat", 0.040)


class Ranks:
    """allgather_object of two ranks: this one's measurement and another's, ``other`` seconds slower."""

    def __init__(self, other=0.0):
        self.other = other

    def allgather_object(self, mine):
        return [mine, tuple(x + self.other for x in mine)]


def chooser(monkeypatch, options="", other=0.0):
    choice = auto.AutoChoice(spec.parse("auto" + (options or ",revisit=3")), None, Links(Link(None, 2, 0)), Ranks(other), "t")
    choice.pending = False
    choice._plans([([TOPK, FP16, DENSE], DENSE)])  # one bucket: top-k first, fp16 next, dense last
    choice._use(0, "chosen")
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(auto.time, "perf_counter", lambda: clock.now)
    return choice, clock


def run(choice, clock, step_s, wait_s, steps):
    reducer = types.SimpleNamespace(steps=10)
    for _ in range(steps):
        clock.now += step_s
        choice.step_done(reducer, wait_s)


def test_a_plan_as_fast_as_predicted_is_measured_against_dense_and_kept_when_faster(monkeypatch):
    choice, clock = chooser(monkeypatch)
    run(choice, clock, 0.100, 0.005, 4)  # the first step under a plan is not measured, then 3
    assert not choice.settled and choice.measured == {0: (0.100, 0.005)}
    assert "predicted 105.0 ms" in choice.events[-2]
    assert choice.trial == 2 and choice.plan[0][0] is DENSE  # skips the runner-up: plan 1 was as predicted
    run(choice, clock, 0.140, 0.045, 4)  # dense: 40 % slower than top-k
    assert choice.settled and choice.trial == 0 and set(choice.measured) == {0, 2}
    assert "measured fastest" in choice.events[-1] and "topk:0.01@flat" in choice.events[-1]


def test_a_compressed_plan_that_meets_its_prediction_but_loses_to_dense_gives_way(monkeypatch):
    """The model can be wrong about dense (it priced dense at 40 ms of exchange): measured, dense wins."""
    choice, clock = chooser(monkeypatch)
    run(choice, clock, 0.100, 0.005, 4)
    run(choice, clock, 0.080, 0.002, 4)
    assert choice.settled and choice.trial == 2 and choice.plan[0][0] is DENSE


def test_a_dense_first_choice_is_still_measured_against_the_best_compressed_one(monkeypatch):
    choice, clock = chooser(monkeypatch)
    choice._plans([([DENSE, TOPK], DENSE)])
    choice._use(0, "chosen")
    run(choice, clock, 0.100, 0.040, 4)
    assert not choice.settled and choice.trial == 1 and choice.plan[0][0] is TOPK
    run(choice, clock, 0.110, 0.020, 4)
    assert choice.settled and choice.trial == 0 and set(choice.measured) == {0, 1}
    assert "plan 1 of 2 measured fastest: none@flat" in choice.events[-1]


SMALL_TOPK, SMALL_INT8 = auto.Choice("topk:0.01", "flat", 0.004), auto.Choice("int8", "two_phase", 0.003)
BIG_TOPK, BIG_INT8 = auto.Choice("topk:0.01", "flat", 0.050), auto.Choice("int8", "two_phase", 0.045)


def test_the_best_uniform_plan_is_measured_after_the_per_bucket_mix(monkeypatch):
    """Per bucket, int8 two-phase wins the big bucket and top-k or int8 the small one; the uniform plan is the
    one spec the model prices fastest over both (int8: 48 ms against top-k's 54), measured after the mix; the
    runner-ups only after a slow first plan."""
    choice, clock = chooser(monkeypatch)
    small_dense, big_dense = auto.Choice("none", "flat", 0.020), auto.Choice("none", "flat", 0.400)
    choice._plans([([SMALL_INT8, SMALL_TOPK, small_dense], small_dense),
                   ([BIG_INT8, BIG_TOPK, big_dense], big_dense)])
    assert [[str(c) for c, _ in plan] for plan in choice.plans] == [
        ["int8@two_phase", "int8@two_phase"],      # each bucket's best: int8 everywhere, so also the uniform one
        ["topk:0.01@flat", "topk:0.01@flat"],      # runner-ups
        ["none@flat", "none@flat"]]
    choice._plans([([SMALL_TOPK, SMALL_INT8, small_dense], small_dense),
                   ([BIG_INT8, BIG_TOPK, big_dense], big_dense)])
    assert [[str(c) for c, _ in plan] for plan in choice.plans] == [
        ["topk:0.01@flat", "int8@two_phase"],      # the mix
        ["int8@two_phase", "int8@two_phase"],      # uniform: int8 48 ms against top-k 54 ms
        ["int8@two_phase", "topk:0.01@flat"],      # the runner-ups
        ["none@flat", "none@flat"]]
    assert choice.runner_up == 2
    choice._use(0, "chosen")
    run(choice, clock, 0.100, 0.040, 4)            # the mix, as predicted: then the uniform plan, then dense
    assert choice.trial == 1
    run(choice, clock, 0.090, 0.030, 4)
    assert choice.trial == 3
    run(choice, clock, 0.500, 0.400, 4)
    assert choice.settled and choice.trial == 1


def test_a_slow_plan_is_replaced_by_the_next_and_the_fastest_measured_stays(monkeypatch):
    choice, clock = chooser(monkeypatch)
    run(choice, clock, 0.200, 0.150, 4)  # predicted 50 + 10 ms = 60 ms: over by far more than 25 %
    assert not choice.settled and choice.trial == 1 and str(choice.plan[0][0]) == "fp16@flat"
    run(choice, clock, 0.120, 0.050, 4)  # predicted 70 + 30 = 100 ms: within 25 %
    assert not choice.settled and choice.trial == 2  # then dense, measured
    run(choice, clock, 0.150, 0.060, 4)
    assert choice.settled and choice.trial == 1 and set(choice.measured) == {0, 1, 2}


def test_dense_wins_a_measured_tie(monkeypatch):
    choice, clock = chooser(monkeypatch)
    run(choice, clock, 0.100, 0.090, 4)  # predicted 10 + 10 ms: slow
    run(choice, clock, 0.100, 0.080, 4)  # fp16: predicted 20 + 30 ms: slow
    assert choice.trial == 2 and choice.plan[0][0].dense
    run(choice, clock, 0.102, 0.010, 4)  # dense: within MEASURED_TIE (3 %) of the fastest
    assert choice.settled and choice.trial == 2 and choice.plan[0][0] is DENSE


def test_compression_measured_faster_than_dense_by_more_than_the_margin_stays(monkeypatch):
    choice, clock = chooser(monkeypatch)
    run(choice, clock, 0.100, 0.090, 4)
    run(choice, clock, 0.110, 0.080, 4)
    run(choice, clock, 0.100 * (1 + auto.MEASURED_TIE) + 0.002, 0.010, 4)
    assert choice.settled and choice.trial == 0


def test_the_slowest_rank_decides(monkeypatch):
    """This rank's steps match the prediction; another rank's are 100 ms slower: all ranks move on."""
    choice, clock = chooser(monkeypatch, other=0.100)
    run(choice, clock, 0.100, 0.005, 4)
    assert choice.trial == 1 and choice.measured[0] == pytest.approx((0.200, 0.105))


@pytest.mark.parametrize("options", [",revisit=0", ",revisit=3,pin=topk:0.01"])
def test_no_revisiting_when_pinned_or_revisit_is_0(monkeypatch, options):
    choice, clock = chooser(monkeypatch, options)
    run(choice, clock, 1.0, 0.99, 8)
    assert choice.trial == 0 and choice.measured == {} and choice.settled


def test_reprobe_decides_again_at_the_next_launch(monkeypatch):
    choice, clock = chooser(monkeypatch)
    run(choice, clock, 0.100, 0.005, 4)
    choice.reprobe()
    assert choice.pending and not choice.settled


def test_a_checkpoint_resumes_the_plan_in_use_without_probing_again(monkeypatch):
    choice, clock = chooser(monkeypatch)
    run(choice, clock, 0.200, 0.150, 4)  # now trying plan 2
    saved = choice.state_dict()
    resumed = auto.AutoChoice(spec.parse("auto,revisit=3"), None, Links(Link(None, 2, 0)), Ranks(), "t")
    resumed.load_state_dict(saved, buckets=1)
    assert not resumed.pending and resumed.trial == 1 and resumed.plan == choice.plan and not resumed.settled
    other_layout = auto.AutoChoice(spec.parse("auto"), None, Links(Link(None, 4, 0)), Ranks(), "t")
    other_layout.load_state_dict(saved, buckets=1)
    assert other_layout.pending and other_layout.plan is None  # another world size: decide afresh


def test_a_uniform_plan_off_the_hierarchical_route_is_measured_too():
    """The model prices top-k on the hierarchical route fastest for both buckets; a fixed topk:0.01 without
    hierarchical=True sends each bucket flat or two-phase, whichever is cheaper: that plan is listed too."""
    choice = auto.AutoChoice(spec.parse("auto"), None, Links(Link(None, 4, 0)), Ranks(), "t")
    small = [auto.Choice("topk:0.01", "hierarchical", 0.001), auto.Choice("topk:0.01", "flat", 0.002),
             auto.Choice("topk:0.01", "two_phase", 0.003), auto.Choice("none", "flat", 0.010)]
    big = [auto.Choice("topk:0.01", "hierarchical", 0.010), auto.Choice("topk:0.01", "two_phase", 0.020),
           auto.Choice("topk:0.01", "flat", 0.030), auto.Choice("none", "flat", 0.100)]
    choice._plans([(small, small[-1]), (big, big[-1])])
    assert [[str(c) for c, _ in plan] for plan in choice.plans] == [
        ["topk:0.01@hierarchical", "topk:0.01@hierarchical"],  # each bucket's best, also the uniform plan
        ["topk:0.01@flat", "topk:0.01@two_phase"],             # off the hierarchical route, per bucket; runner-ups
        ["none@flat", "none@flat"]]
    assert choice.runner_up is None  # the runner-ups are the plan before: measured whatever plan 1 does
