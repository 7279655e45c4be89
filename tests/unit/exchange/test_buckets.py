"""Bucket planning (hvdkit.exchange.buckets): framework-neutral, no tensors."""
import random

import pytest

from hvdkit.exchange.buckets import MIN_SPLIT_BYTES, TensorInfo, describe, plan_buckets, split_bytes


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


def wide_mlp_infos():
    """The cluster benchmark's MLP (1024 -> 4096 -> 4096 -> 1024 -> 10), registration order."""
    shapes = [(4096, 1024), (4096,), (4096, 4096), (4096,), (1024, 4096), (1024,), (10, 1024), (10,)]
    return [info(f"p{i}", *shape) for i, shape in enumerate(shapes)]


def test_a_break_in_backward_closes_the_bucket_that_would_wait_for_the_next_layer():
    """Backward produces the 4096x4096 layer's bias (3) long after the layer before it: without the break
    its 16 KiB join the 16 MiB bucket, which then waits for that layer's whole backward."""
    tensors = wide_mlp_infos()
    fusion = 25 * 2**20
    assert [b.indices for b in plan_buckets(tensors, fusion)] == [(7, 6, 5, 4, 3), (2,), (1, 0)]
    buckets = plan_buckets(tensors, fusion, breaks={3})
    assert [b.indices for b in buckets] == [(7, 6, 5, 4), (3,), (2,), (1, 0)]
    check_partition(tensors, buckets)


def test_a_bucket_below_the_split_size_goes_on_filling_at_a_break():
    tensors = wide_mlp_infos()
    fusion = 25 * 2**20
    # before 4 the open bucket holds only the last layer (40 KiB): latency-bound, it waits for the next
    assert [b.indices for b in plan_buckets(tensors, fusion, breaks={4, 3})][:2] == [(7, 6, 5, 4), (3,)]
    assert split_bytes(fusion) == fusion // 4
    assert split_bytes(0) == split_bytes(2**20) == MIN_SPLIT_BYTES  # fusion_bytes=0: one bucket per tensor anyway
    assert [len(b.slots) for b in plan_buckets(tensors, 0, breaks={3})] == [1] * 8


def test_a_break_closes_every_kind_of_bucket_that_is_large_enough():
    tensors = [info("dense_big", 2**19), info("comp_big", 512, 1024), info("comp_small", 16, 16),
               info("late", 512, 1024), info("late_dense", 2**19)]
    compressible = lambda t: len(t.shape) == 2  # noqa: E731
    order = [0, 1, 2, 3, 4]
    plain = plan_buckets(tensors, 2**30, compressible, order)
    assert sorted(b.indices for b in plain) == [(0, 4), (1, 2, 3)]
    split = plan_buckets(tensors, 2**30, compressible, order, breaks={3})
    # 2 MiB each: below a quarter of 1 GiB, so nothing closes; with a 4 MiB fusion limit both do
    assert sorted(b.indices for b in split) == [(0, 4), (1, 2, 3)]
    split = plan_buckets(tensors, 4 * 2**20, compressible, order, breaks={3})
    assert [b.indices for b in split][:2] == [(0,), (1, 2)]
    assert sorted(b.indices for b in split) == [(0,), (1, 2), (3,), (4,)]
    check_partition(tensors, split)
