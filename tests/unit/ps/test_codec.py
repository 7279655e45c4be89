"""Wire compression against numpy: fp16 is numpy's cast, top-k keeps the largest magnitudes, and error
feedback loses nothing: the decoded pushes plus the residual add up to the pushed values."""
import numpy as np
import pytest

from hvdkit.ps.codec import WireCodec


def test_none_is_the_array_itself():
    x = np.arange(5, dtype=np.float32)
    codec = WireCodec("none")
    frames, meta = codec.encode(x, codec.state(5))
    assert frames[0] is x and codec.decode(frames, meta) is x


def test_fp16_is_numpys_cast():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 100
    codec = WireCodec("fp16")
    frames, meta = codec.encode(x, codec.state(x.size))
    assert sum(f.nbytes for f in frames) == 2 * x.size
    np.testing.assert_array_equal(codec.decode(frames, meta), x.astype(np.float16).astype(np.float32))


def test_topk_keeps_the_largest_magnitudes():
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    codec = WireCodec("topk:0.01,ef=0")
    frames, meta = codec.encode(x, codec.state(x.size))
    dense = codec.decode(frames, meta)
    keep = np.argsort(-np.abs(x))[:10]
    expected = np.zeros_like(x)
    expected[keep] = x[keep]
    np.testing.assert_array_equal(dense, expected)


@pytest.mark.parametrize("spec", ["topk:0.05", "int8:64,ef=1", "bf16,ef=1", "onebit"])
def test_error_feedback_loses_nothing(spec):
    rng = np.random.default_rng(2)
    codec = WireCodec(spec)
    state = codec.state(257)
    sent = received = np.zeros(257, np.float64)
    for _ in range(30):
        x = rng.standard_normal(257).astype(np.float32)
        frames, meta = codec.encode(x, state)
        sent = sent + x
        received = received + codec.decode(frames, meta)
    assert np.abs(received).max() > 1  # something went through
    np.testing.assert_allclose(received + state.residual.numpy(), sent, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("spec", ["powersgd:2", "bogus"])
def test_unsupported_specs_are_refused_by_name(spec):
    with pytest.raises(ValueError, match=spec.split(":")[0]):
        WireCodec(spec)


def test_a_peer_with_another_compression_is_refused_by_name():
    x = np.ones(8, np.float32)
    fp16 = WireCodec("fp16")
    frames, meta = fp16.encode(x, fp16.state(8))
    with pytest.raises(ValueError, match="'fp16.*'none'"):
        WireCodec("none").decode(frames, meta)
    with pytest.raises(ValueError, match="'none'.*'fp16"):
        fp16.decode([x], None)
