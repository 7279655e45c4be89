"""Bucket planning (hvdkit.exchange.buckets): framework-neutral, no tensors."""
import random

import pytest

from hvdkit.exchange.buckets import TensorInfo, describe, plan_buckets


def info(name, *shape, dtype="float32", itemsize=4):
    return TensorInfo(name, tuple(shape), dtype, itemsize)


def resnet_like(count=160, seed=0):
    rng = random.Random(seed)
    return [info(f"layer{i}.{'weight' if i % 2 == 0 else 'bias'}",
                 *((rng.choice([16, 64, 256]), rng.choice([3, 27, 64])) if i % 2 == 0 else (rng.choice([16, 64]),)))
            for i in range(count)]


def check_partition(tensors, buckets):
    """Every tensor exactly once; offsets contiguous; one dtype per bucket."""
    seen = sorted(slot.index for b in buckets for slot in b.slots)
    assert seen == list(range(len(tensors)))
    for i, b in enumerate(buckets):
        assert b.index == i
        offset = 0
        for slot in b.slots:
            assert slot.offset == offset and slot.numel == tensors[slot.index].numel
            assert tensors[slot.index].dtype == b.dtype
            offset += slot.numel
        assert b.numel == offset and b.nbytes == offset * tensors[b.slots[0].index].itemsize


@pytest.mark.parametrize("fusion_bytes", [0, 1000, 64 * 1024, 2**30])
def test_every_tensor_lands_in_exactly_one_bucket(fusion_bytes):
    tensors = resnet_like()
    buckets = plan_buckets(tensors, fusion_bytes)
    check_partition(tensors, buckets)
    for b in buckets:
        assert b.nbytes <= fusion_bytes or len(b.slots) == 1


def test_buckets_follow_reverse_registration_order():
    tensors = resnet_like(40)
    buckets = plan_buckets(tensors, 8 * 1024)
    order = [slot.index for b in buckets for slot in b.slots]
    assert order == sorted(order, reverse=True)
    assert buckets[0].slots[0].index == len(tensors) - 1  # the last layer's gradient comes first


def test_a_bucket_closes_before_it_would_pass_the_limit():
    tensors = [info(f"t{i}", 100) for i in range(10)]  # 400 bytes each
    buckets = plan_buckets(tensors, 1000)
    assert [len(b.slots) for b in buckets] == [2, 2, 2, 2, 2]
    assert [b.indices for b in buckets][:2] == [(9, 8), (7, 6)]


def test_a_tensor_above_the_limit_gets_its_own_bucket():
    tensors = [info("small0", 10), info("huge", 1000), info("small1", 10)]
    buckets = plan_buckets(tensors, 100)
    assert [b.indices for b in buckets] == [(2,), (1,), (0,)]


def test_zero_limit_means_one_bucket_per_tensor():
    tensors = resnet_like(12)
    assert [len(b.slots) for b in plan_buckets(tensors, 0)] == [1] * 12


def test_dtypes_and_compressibility_never_share_a_bucket():
    tensors = [info("w0", 8, 8), info("b0", 8), info("h0", 8, 8, dtype="float16", itemsize=2),
               info("w1", 8, 8), info("b1", 8)]
    buckets = plan_buckets(tensors, 2**20, compressible=lambda t: len(t.shape) == 2 and t.dtype == "float32")
    check_partition(tensors, buckets)
    kinds = {(b.dtype, b.compressed): b.indices for b in buckets}
    assert kinds == {("float32", True): (3, 0), ("float32", False): (4, 1), ("float16", False): (2,)}


def test_layout_gives_offsets_and_shapes_for_shape_aware_compressors():
    tensors = [info("a", 3, 4), info("b", 5), info("c", 2, 2, 2)]
    (bucket,) = plan_buckets(tensors, 2**20)
    assert bucket.layout == ((0, (2, 2, 2)), (8, (5,)), (13, (3, 4)))


def test_negative_limit_is_an_error():
    with pytest.raises(ValueError, match="fusion_bytes must be >= 0, got -1"):
        plan_buckets([info("a", 1)], -1)


def test_describe_names_sizes_and_kinds():
    text = describe(plan_buckets([info("w", 1024, 256), info("b", 1024)], 2**30, lambda t: len(t.shape) == 2))
    assert "bucket 0: dense float32, 1 tensors" in text
    assert "bucket 1: compressed float32, 1 tensors, 1.00 MiB [w]" in text
