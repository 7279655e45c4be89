"""Comparing ranks' models and settings (hvdkit.exchange.consistency): the message names the parameter or
setting, every value and the ranks holding each."""
import pytest
import torch

from hvdkit.exchange.consistency import first_difference, ranks_text, require_same, require_unchanged, setting_difference, tensor_changes
from hvdkit.exchange.buckets import Slot

A = [("w", (4, 3), "float32"), ("b", (4,), "float32")]


def gather_with(*per_rank):
    """An allgather_object that returns fixed per-rank objects (what Horovod would gather)."""
    return lambda obj: list(per_rank)


@pytest.mark.parametrize("ranks,text", [([3], "rank 3"), ([0, 1], "ranks 0, 1"), ([0, 1, 2], "ranks 0-2"),
                                        ([5, 0, 1, 2, 7, 8], "ranks 0-2, 5, 7, 8")])
def test_rank_lists_are_compact(ranks, text):
    assert ranks_text(ranks) == text


def test_identical_descriptions_agree():
    assert first_difference([A, list(A), list(A)]) is None


@pytest.mark.parametrize("other,message", [
    ([("w", (4, 3), "float32")], "parameter 'b' exists on ranks 0, 1 but not on rank 2"),
    (A + [("extra", (1,), "float32")], "parameter 'extra' exists on rank 2 but not on ranks 0, 1"),
    ([("w", (4, 3), "float16"), A[1]], "parameter 'w' has shape (4, 3), dtype float32 on ranks 0, 1 but shape (4, 3), "
                                       "dtype float16 on rank 2"),
    ([("w", (5, 3), "float32"), A[1]], "parameter 'w' has shape (4, 3), dtype float32 on ranks 0, 1 but shape (5, 3), "
                                       "dtype float32 on rank 2"),
    ([A[1], A[0]], "parameters are registered in a different order: position 0 holds 'w' on ranks 0, 1 but 'b' "
                   "on rank 2"),
])
def test_the_first_difference_is_named_with_the_ranks_holding_each_value(other, message):
    assert first_difference([A, A, other]) == message


def test_three_values_are_all_listed():
    descriptions = [[("w", (4,), "float32")], [("w", (5,), "float32")], [("w", (4,), "float32")],
                    [("w", (6,), "float32")]]
    assert first_difference(descriptions) == ("parameter 'w' has shape (4,), dtype float32 on ranks 0, 2, "
                                              "shape (5,), dtype float32 on rank 1 and shape (6,), dtype float32 "
                                              "on rank 3")


def test_many_distinct_values_are_summed_up():
    message = setting_difference([{"name": f"o{r}"} for r in range(64)])
    assert message == "name is 'o0' on rank 0, 'o1' on rank 1, 'o2' on rank 2, 'o3' on rank 3 and 60 other values on " \
                      "ranks 4-63"


def test_a_difference_on_rank_0_alone_is_attributed_to_rank_0():
    assert first_difference([A[:1], A, A, A]) == "parameter 'b' exists on ranks 1-3 but not on rank 0"


def test_settings_name_the_key_and_both_values():
    settings = [{"compression": "topk:0.01", "compression option warmup": 0, "fusion_mb": 25.0}] * 3
    changed = dict(settings[0], **{"compression option warmup": 10})
    assert setting_difference(settings + [changed]) == \
        "compression option warmup is 0 on ranks 0-2 but 10 on rank 3"
    assert setting_difference(settings) is None
    assert setting_difference([{"a": 1}, {}]) == "a is 1 on rank 0 but nothing on rank 1"
    assert setting_difference([1, 2]) == "settings are 1 on rank 0 but 2 on rank 1"


def test_long_setting_values_are_cut():
    message = setting_difference([{"buckets": list(range(500))}, {"buckets": list(range(501))}])
    assert message.startswith("buckets is [0, 1, 2") and "..." in message and len(message) < 450


def test_require_same_raises_with_the_callers_name_and_checks_settings():
    with pytest.raises(ValueError, match="broadcast_state: the model differs across ranks: parameter 'b' exists"):
        require_same(A, gather_with((A, None), (A[:1], None)), where="broadcast_state")
    with pytest.raises(ValueError, match="opt: the settings differ across ranks: fusion_mb is 1 on rank 0 but 2 "
                                         "on rank 1"):
        require_same(A, gather_with((A, {"fusion_mb": 1}), (A, {"fusion_mb": 2})), {"fusion_mb": 1}, where="opt")
    require_same(A, gather_with((A, 1), (A, 1)), 1)


SLOTS = (Slot(1, "b", (4,), 0, 4), Slot(0, "w", (4, 3), 4, 12))


def test_unchanged_tensors_report_nothing():
    assert tensor_changes(SLOTS, "float32", [torch.zeros(4), torch.zeros(4, 3)]) == []


def test_changed_shape_and_dtype_are_reported_with_the_plan():
    changes = tensor_changes(SLOTS, "float32", [torch.zeros(4, dtype=torch.float16), torch.zeros(4, 4)])
    assert changes == [("b", ((4,), "float32"), ((4,), "float16")), ("w", ((4, 3), "float32"), ((4, 4), "float32"))]


def test_unknown_dimensions_are_not_compared():
    class Traced:  # a TensorFlow tensor while tracing: dims may be None; dtype has a name
        shape = (None, 3)
        dtype = type("DType", (), {"name": "float32"})()

    assert tensor_changes(SLOTS[1:], "float32", [Traced()]) == []


def test_require_unchanged_is_silent_when_no_rank_changed():
    require_unchanged([], gather_with([], [], []))


def test_require_unchanged_names_the_parameter_values_and_ranks():
    change = ("w", ((4, 3), "float32"), ((4, 3), "float16"))
    with pytest.raises(ValueError) as info:
        require_unchanged([], gather_with([], [change], [], [change]), where="opt")
    assert str(info.value) == ("opt: a gradient changed shape or dtype on some ranks after the optimizer was built: "
                               "parameter 'w' has shape (4, 3), dtype float32 on ranks 0, 2 but shape (4, 3), "
                               "dtype float16 on ranks 1, 3 (planned: shape (4, 3), dtype float32)")


def test_require_unchanged_counts_other_changed_parameters():
    changes = [("w", ((4, 3), "float32"), ((4, 4), "float32")), ("b", ((4,), "float32"), ((5,), "float32"))]
    with pytest.raises(ValueError, match=r"parameter 'w' has shape \(4, 3\), dtype float32 on rank 0 but shape "
                                         r"\(4, 4\), dtype float32 on rank 1 .*\(1 more parameter changed too\)"):
        require_unchanged([], gather_with([], changes))


def test_the_same_change_on_every_rank_says_to_build_the_optimizer_later():
    change = ("w", ((4, 3), "float32"), ((4, 3), "float16"))
    with pytest.raises(ValueError, match=r"parameter 'w' has shape \(4, 3\), dtype float16 on every rank, but the "
                                         r"optimizer was built for shape \(4, 3\), dtype float32.*after .half\(\)"):
        require_unchanged([change], gather_with([change], [change]))
