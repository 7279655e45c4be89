"""Bad arguments raise TypeError / ValueError naming the argument, never crash."""
import pytest
import torch

from hvdkit.kernels import torch_ops as ops

X = torch.randn(64)
R = torch.zeros(64)
META = torch.empty(64, device="meta")
NONCONTIGUOUS = torch.randn(64, 2).t()
Q, SCALES = ops.quantize_int8(X, 16)
BITS, SIGN_SCALES = ops.sign_ef(X.clone(), torch.zeros(64), 16)

CASES = [
    # (call, exception, argument named in the message)
    (lambda: ops.pack(X), TypeError, "tensors"),
    (lambda: ops.pack([X, torch.ones(3, dtype=torch.int32)]), TypeError, "tensors[1]"),
    (lambda: ops.pack([X, NONCONTIGUOUS]), ValueError, "tensors[1]"),
    (lambda: ops.pack([X, META]), ValueError, "tensors[1]"),
    (lambda: ops.pack([X], dtype=torch.int8), TypeError, "dtype"),
    (lambda: ops.pack([X], scale=float("nan")), ValueError, "scale"),
    (lambda: ops.pack([X, X.half()]), TypeError, "dtype"),
    (lambda: ops.pack([X], out=torch.empty(63)), ValueError, "out"),
    (lambda: ops.pack([X], torch.float16, out=torch.empty(64)), TypeError, "out"),
    (lambda: ops.cast(X, torch.float16, out=torch.empty(64, dtype=torch.float16).view(8, 8).t()), ValueError, "out"),
    (lambda: ops.unpack(torch.zeros(63), [X.clone()]), ValueError, "flat"),
    (lambda: ops.unpack(torch.zeros(64), [X.clone()], accumulate=1), TypeError, "accumulate"),
    (lambda: ops.cast(X.double(), torch.float16), TypeError, "x"),
    (lambda: ops.cast(NONCONTIGUOUS, torch.float16), ValueError, "x"),
    (lambda: ops.cast(META, torch.float16), ValueError, "x"),
    (lambda: ops.cast(X, "float16"), TypeError, "dtype"),
    (lambda: ops.quantize_int8(X, 0), ValueError, "block"),
    (lambda: ops.quantize_int8(X, 1.5), TypeError, "block"),
    (lambda: ops.quantize_int8(X.half()), TypeError, "x"),
    (lambda: ops.quantize_int8(X, seed=0.5), TypeError, "seed"),
    (lambda: ops.dequantize_int8(Q, SCALES[:-1], 16), ValueError, "scales"),
    (lambda: ops.dequantize_int8(Q.float(), SCALES, 16), TypeError, "q"),
    (lambda: ops.dequantize_int8(Q, SCALES, 16, out=torch.zeros(63)), ValueError, "out"),
    (lambda: ops.dequantize_int8(Q, SCALES, 16, accumulate=True), ValueError, "out"),
    (lambda: ops.sign_ef(X, torch.zeros(63)), ValueError, "residual"),
    (lambda: ops.sign_ef(X, META), ValueError, "residual"),
    (lambda: ops.sign_ef(X, R.double()), TypeError, "residual"),
    (lambda: ops.sign_ef(NONCONTIGUOUS, R.view(2, 32).t()), ValueError, "x"),
    (lambda: ops.sign_ef(X, R.clone(), block=12), ValueError, "block"),
    (lambda: ops.sign_ef(X, R.clone(), block=0), ValueError, "block"),
    (lambda: ops.sign_decode(BITS[:-1], SIGN_SCALES, 64, 16), ValueError, "bits"),
    (lambda: ops.sign_decode(BITS, torch.cat([SIGN_SCALES, SIGN_SCALES]), 64, 16), ValueError, "scales"),
    (lambda: ops.sign_decode(BITS, SIGN_SCALES, -1, 16), ValueError, "n"),
    (lambda: ops.sign_decode(BITS.int(), SIGN_SCALES, 64, 16), TypeError, "bits"),
    (lambda: ops.topk_ef(X, R.clone(), 65), ValueError, "k"),
    (lambda: ops.topk_ef(X, R.clone(), -1), ValueError, "k"),
    (lambda: ops.topk_ef(X, R.clone(), 2.0), TypeError, "k"),
    (lambda: ops.topk_ef(X, torch.zeros(65), 2), ValueError, "residual"),
    (lambda: ops.topk_ef(X, R.clone(), 2, approx="yes"), TypeError, "approx"),
    (lambda: ops.randomk(X, 65, 0), ValueError, "k"),
    (lambda: ops.randomk(X.long(), 5, 0), TypeError, "x"),
    (lambda: ops.randomk(X, 5, None), TypeError, "seed"),
    (lambda: ops.scatter_add(torch.zeros(3, dtype=torch.int32), torch.ones(4), R.clone()), ValueError, "indices"),
    (lambda: ops.scatter_add(torch.zeros(3, dtype=torch.int64), torch.ones(3), R.clone()), TypeError, "indices"),
    (lambda: ops.scatter_add(torch.zeros(3, dtype=torch.int32), torch.ones(3), META), ValueError, "out"),
    (lambda: ops.set_cpu_isa("avx1024"), ValueError, "name"),
]


@pytest.mark.parametrize("call, error, argument", CASES, ids=[f"{i}-{c[2]}" for i, c in enumerate(CASES)])
def test_bad_argument_is_named(call, error, argument):
    with pytest.raises(error) as raised:
        call()
    assert argument in str(raised.value)


def test_direct_operator_calls_are_checked_too():
    # Callers that bypass hvdkit.ops get RuntimeError from the C++ checks.
    with pytest.raises(RuntimeError, match="residual"):
        torch.ops.hvdkit.topk_ef(X, torch.zeros(63), 5, False)
    with pytest.raises(RuntimeError, match="k must be"):
        torch.ops.hvdkit.topk_ef(X, R.clone(), 100, False)
    with pytest.raises(RuntimeError, match="block"):
        torch.ops.hvdkit.sign_ef(X, R.clone(), 12)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.hvdkit.quantize_int8(NONCONTIGUOUS, 16, False, 0)
    with pytest.raises(RuntimeError, match="bits"):
        torch.ops.hvdkit.sign_decode(BITS[:-1], SIGN_SCALES, 64, 16, torch.zeros(64), False)
