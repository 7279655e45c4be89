"""Comparing ranks' model descriptions (hvdkit.consistency): the message names the parameter."""
import pytest

from hvdkit.consistency import first_difference, require_same

A = [("w", (4, 3), "float32"), ("b", (4,), "float32")]


def test_identical_descriptions_agree():
    assert first_difference([A, list(A), list(A)]) is None


@pytest.mark.parametrize("other,message", [
    ([("w", (4, 3), "float32")], "parameter 'b' exists on rank 0 but not on rank 2"),
    (A + [("extra", (1,), "float32")], "parameter 'extra' exists on rank 2 but not on rank 0"),
    ([("w", (4, 3), "float16"), A[1]], "parameter 'w' has shape (4, 3), dtype float32 on rank 0 but shape (4, 3), "
                                       "dtype float16 on rank 2"),
    ([A[1], A[0]], "parameters are registered in a different order on rank 2 than on rank 0"),
])
def test_the_first_difference_is_named(other, message):
    assert first_difference([A, A, other]) == message


def test_require_same_raises_with_the_callers_name_and_checks_settings():
    def gather_with(*per_rank):
        return lambda obj: list(per_rank)

    with pytest.raises(ValueError, match="broadcast_state: the model differs across ranks: parameter 'b' exists"):
        require_same(A, gather_with((A, None), (A[:1], None)), where="broadcast_state")
    with pytest.raises(ValueError, match="settings differ: rank 0 has 1, rank 1 has 2"):
        require_same(A, gather_with((A, 1), (A, 2)))
    require_same(A, gather_with((A, 1), (A, 1)))
