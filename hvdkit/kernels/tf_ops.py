"""Gradient-compression and fused-buffer kernels for TensorFlow (``hvdkit._tf_ops``).

The ops of :mod:`hvdkit.ops` with the same names, arguments and arithmetic,
compiled from the same C++ kernels (``csrc/core``, ``csrc/cpu``) into a
TensorFlow op library, so they run eagerly and inside ``tf.function``. Each has
a pure-TensorFlow reference of the same name in
:mod:`hvdkit.kernels.tf_reference`; the tests compare both with it and with
the torch op, bit for bit where the torch tests are.

TensorFlow tensors are immutable, so where the torch ops write in place these
return new tensors (the kernels reuse an input's buffer when nothing else holds
it, which makes the functional form free in the common case):

* ``sign_ef`` and ``topk_ef`` return the new residual as their last result;
* ``unpack`` returns the unpacked tensors;
* ``dequantize_int8``, ``sign_decode`` and ``scatter_add`` return ``out`` plus
  the decoded values (with ``accumulate``; otherwise the decoded values shaped
  like ``out``);
* ``pack`` and ``cast`` take no ``out`` buffer.

What is known when the op is called or traced (types, dtypes, Python ints,
static shapes) is checked here: ``TypeError`` or ``ValueError`` naming the
argument. What is known only when a graph runs (sizes left unknown at trace
time, index ranges) is checked by the kernels, which raise
``tf.errors.InvalidArgumentError``, also naming the argument.

``scale`` is a Python number or a float32 scalar tensor, ``seed`` a Python int
(used modulo 2**64) or an int64 scalar tensor, so a ``tf.function`` can vary
them without retracing. ``block``, ``k``, ``n``, ``approx``, ``stochastic`` and
``accumulate`` are Python values: they fix output shapes.

The library has CPU kernels only (tensorflow-cpu has no CUDA); they use
TensorFlow's intra-op thread count. No gradients are registered: these ops
transform gradients and are not differentiated through.

This module imports even when the library failed to build; the ops then raise
``RuntimeError`` and :func:`backends` says why.
"""
import importlib.util

import tensorflow as tf

from hvdkit.kernels.checks import (DEFAULT_BLOCK, MAX_ELEMENTS, PUBLIC_NAMES, check_block, check_bool, check_int,
                                   check_on_invalid, check_scale, run_or_explain, seed64, topk_approx_floor)

__all__ = list(PUBLIC_NAMES)

FLOAT_DTYPES = (tf.float32, tf.float16, tf.bfloat16)


def _load_library():
    try:
        spec = importlib.util.find_spec("hvdkit._tf_ops")
        if spec is None or not spec.origin:
            raise ImportError("hvdkit._tf_ops was not built (TensorFlow was not installed when hvdkit was "
                              "built, or HVDKIT_WITHOUT_TF=1)")
        return tf.load_op_library(spec.origin), None
    except Exception as exc:  # ImportError, or tf.errors.NotFoundError for a build against another TensorFlow
        return None, f"{type(exc).__name__}: {exc}"


_LIB, _LOAD_ERROR = _load_library()


def backends():
    """State of the op library, with the keys of :func:`hvdkit.ops.backends`.
    The instruction set is this library's own (the torch extension holds a
    separate copy of the kernels and its own setting)."""
    if _LIB is None:
        return {"loaded": False, "error": _LOAD_ERROR, "cpu": False, "cuda": False,
                "cuda_built": False, "cpu_isa": None, "cpu_isas": []}
    with tf.init_scope():  # runs eagerly even while a tf.function is traced
        available, active = _LIB.hvdkit_cpu_isas()
        return {"loaded": True, "error": None, "cpu": True, "cuda": False, "cuda_built": False,
                "cpu_isa": active.numpy().decode(), "cpu_isas": [s.decode() for s in available.numpy()]}


def set_cpu_isa(name):
    """Use the CPU loops built for ``name`` (see ``backends()["cpu_isas"]``);
    returns the previous one. For tests and benchmarks."""
    _library()
    available = backends()["cpu_isas"]
    if name not in available:
        raise ValueError(f"name must be one of {available}, got {name!r}")
    with tf.init_scope():
        return _LIB.hvdkit_set_cpu_isa(name).numpy().decode()


# ---- argument checks ---------------------------------------------------------------


def _library():
    if _LIB is None:
        raise RuntimeError(
            "hvdkit TensorFlow kernels are unavailable: the op library hvdkit._tf_ops failed to load "
            f"({_LOAD_ERROR}); rebuild it with `pip install --no-build-isolation -e .`")
    return _LIB


def _dtype_names(dtypes):
    return " or ".join(d.name for d in dtypes)


def _numel(t):
    """Element count known at trace time, or None."""
    return tf.TensorShape(t.shape).num_elements()


def _check_tensor(name, value, dtypes):
    if isinstance(value, (tf.IndexedSlices, tf.SparseTensor, tf.RaggedTensor)) or not tf.is_tensor(value):
        raise TypeError(f"{name} must be a dense tf.Tensor or variable, got {type(value).__name__}")
    dtype = tf.as_dtype(value.dtype)
    if dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_dtype_names(dtypes)}, got {dtype.name}")
    n = _numel(value)
    if n is not None and n > MAX_ELEMENTS:
        raise ValueError(f"{name} has {n} elements; at most {MAX_ELEMENTS} are supported")
    return value


def _check_numel(name, value, expected, what):
    """Raises when both counts are known at trace time and differ."""
    n = _numel(value)
    if n is not None and expected is not None and n != expected:
        raise ValueError(f"{name} has {n} elements, {what}")


def _check_scalar(name, value, dtype):
    _check_tensor(name, value, (dtype,))
    if tf.TensorShape(value.shape).rank not in (None, 0):
        raise ValueError(f"{name} must be a scalar, got shape {value.shape}")
    return value


def _scale(scale):
    if tf.is_tensor(scale):
        return _check_scalar("scale", scale, tf.float32)
    return tf.constant(check_scale(scale), tf.float32)


def _seed(seed):
    if tf.is_tensor(seed):
        return _check_scalar("seed", seed, tf.int64)
    return tf.constant(seed64(seed), tf.int64)


def _check_dtype(dtype):
    if not isinstance(dtype, tf.DType) or dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be tf.{_dtype_names(FLOAT_DTYPES)}, got {dtype!r}")
    return dtype


def _check_list(name, tensors):
    if tf.is_tensor(tensors) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(tensors).__name__}")
    return [_check_tensor(f"{name}[{i}]", t, FLOAT_DTYPES) for i, t in enumerate(tensors)]


def _check_out(out, n, accumulate):
    """``out`` (or None) for a decoder of ``n`` elements (None if unknown)."""
    check_bool("accumulate", accumulate)
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs out (the tensor to add to)")
        return None
    _check_tensor("out", out, (tf.float32,))
    _check_numel("out", out, n, f"expected {n}")
    return out


def _static_rows(name, payload, row_length):
    """Ranks in a payload of [ranks, row_length] or 1-D (one or several
    payloads end to end), when its shape is known at trace time."""
    shape = tf.TensorShape(payload.shape)
    if shape.rank is None:
        return None
    if shape.rank == 2:
        if shape[1] is not None and shape[1] != row_length:
            raise ValueError(f"{name} rows must have {row_length} entries, got {shape[1]}")
        return shape[0]
    if shape.rank != 1:
        raise ValueError(f"{name} must be 1-D or 2-D [ranks, {row_length}], got shape {shape}")
    length = shape[0]
    if length is None:
        return None
    if (length != 0) if row_length == 0 else (length == 0 or length % row_length):
        raise ValueError(f"{name} has {length} entries, not a whole number of {row_length}-entry payloads")
    return 1 if row_length == 0 else length // row_length


def _decoded(result, out, accumulate):
    """A non-accumulating decoder's [n] result shaped like ``out`` if given."""
    return result if out is None or accumulate else tf.reshape(result, tf.shape(out))


# ---- fused buffers and casts ---------------------------------------------------------


# As in hvdkit.ops: for the many-tensor ops the per-tensor Python checks cost
# ten times the op (about 5 us a tensor), so the op's own checks (its type
# constraints, shape function and kernel) run first, and the Python checks run
# only after a refusal, to raise the error that names the argument. Only
# elements that are tensors already take that path: TensorFlow would convert
# anything else (a numpy array, a list) silently.
_REFUSED = (TypeError, ValueError, tf.errors.OpError)


def _all_dense(tensors):
    return isinstance(tensors, (list, tuple)) and all(isinstance(t, (tf.Tensor, tf.Variable)) for t in tensors)


def _common_dtype(tensors):
    dtypes = {tf.as_dtype(t.dtype) for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"tensors have several dtypes {sorted(d.name for d in dtypes)}; pass dtype")
    return dtypes.pop() if dtypes else tf.float32


def pack(tensors, dtype=None, scale=1.0, report_nonfinite=False):
    """Concatenate ``tensors`` (flattened) into one 1-D tensor of ``dtype``
    with every value multiplied by ``scale``, in one pass. ``dtype`` defaults to
    the tensors' (they must then share one). Casts saturate finite values and
    pass NaN/Inf through, as in :func:`hvdkit.ops.pack`. With
    ``report_nonfinite`` returns ``(flat, nonfinite)``, a scalar bool found in
    the same pass."""
    if not _all_dense(tensors):
        tensors = _check_list("tensors", tensors)
    tensors = list(tensors)
    if dtype is None:
        dtype = run_or_explain(lambda: _common_dtype(tensors), lambda: _check_list("tensors", tensors), _REFUSED)
    dtype = _check_dtype(dtype)
    scale = _scale(scale)
    if not tensors:
        flat, nonfinite = tf.zeros([0], dtype), tf.constant(False)
    else:
        flat, nonfinite = run_or_explain(lambda: _library().hvdkit_pack(tensors, scale, out_type=dtype),
                                         lambda: _check_list("tensors", tensors), _REFUSED)
    return (flat, nonfinite) if report_nonfinite else flat


def unpack(flat, tensors, scale=1.0, accumulate=False):
    """Slices of ``flat * scale`` (in order) cast to each tensor's dtype and
    shaped like it, or added to its values with ``accumulate``; returns the new
    tensors as a list. Round trip ``unpack(pack(ts), ts)`` is bit-exact for
    scale 1."""
    if not _all_dense(tensors):
        tensors = _check_list("tensors", tensors)
    tensors = list(tensors)
    _check_tensor("flat", flat, FLOAT_DTYPES)
    scale = _scale(scale)
    check_bool("accumulate", accumulate)

    def explain():
        checked = _check_list("tensors", tensors)
        sizes = [_numel(t) for t in checked]
        total = None if None in sizes else sum(sizes)
        _check_numel("flat", flat, total, f"but tensors hold {total}")

    if not tensors:
        _check_numel("flat", flat, 0, "but tensors hold 0")
        return []
    return list(run_or_explain(lambda: _library().hvdkit_unpack(flat, tensors, scale, accumulate=accumulate),
                               explain, _REFUSED))


def cast(x, dtype, scale=1.0):
    """``x * scale`` cast to ``dtype``, shaped like ``x``. Returns ``(y,
    nonfinite)``: ``nonfinite`` is a bool scalar, True when some ``x * scale``
    (float32) is NaN or +-Inf."""
    _check_tensor("x", x, FLOAT_DTYPES)
    dtype = _check_dtype(dtype)
    flat, nonfinite = _library().hvdkit_pack([x], _scale(scale), out_type=dtype)
    return tf.reshape(flat, tf.shape(x)), nonfinite


# ---- int8 blockwise -----------------------------------------------------------------


def quantize_int8(x, block=DEFAULT_BLOCK, stochastic=False, seed=0):
    """Blockwise absmax int8: ``(q int8 [n], scales float32 [ceil(n / block)])``
    as in :func:`hvdkit.ops.quantize_int8` (round half to even, or stochastic
    rounding drawn from ``seed`` and the element index)."""
    _check_tensor("x", x, (tf.float32,))
    check_block(block)
    check_bool("stochastic", stochastic)
    return tuple(_library().hvdkit_quantize_int8(x, _seed(seed), block=block, stochastic=stochastic))


def dequantize_int8(q, scales, block, out=None, accumulate=False):
    """``q * scales[i // block]``: float32 [n], or shaped like ``out``; with
    ``accumulate``, ``out`` plus that."""
    _check_tensor("q", q, (tf.int8,))
    _check_tensor("scales", scales, (tf.float32,))
    check_block(block)
    n = _numel(q)
    if n is not None:
        expected = -(-n // block)
        _check_numel("scales", scales, expected, f"expected ceil({n} / {block}) = {expected}")
    out = _check_out(out, n, accumulate)
    if accumulate:
        return _library().hvdkit_dequantize_int8_accumulate(q, scales, out, block=block)
    return _decoded(_library().hvdkit_dequantize_int8(q, scales, block=block), out, accumulate)


# ---- one-bit sign with error feedback -----------------------------------------------


def sign_ef(x, residual, block=DEFAULT_BLOCK):
    """One-bit scaled sign of ``c = x + residual`` with error feedback, as in
    :func:`hvdkit.ops.sign_ef`. Returns ``(bits uint8 [ceil(n / 8)], scales
    float32 [ceil(n / block)], new_residual)``, ``new_residual = c - scale *
    sign(c)`` shaped like ``residual``. ``block`` must be a multiple of 8."""
    _check_tensor("x", x, (tf.float32,))
    _check_tensor("residual", residual, (tf.float32,))
    _check_numel("residual", residual, _numel(x), f"x has {_numel(x)}")
    check_block(block, multiple_of_8=True)
    return tuple(_library().hvdkit_sign_ef(x, residual, block=block))


def sign_decode(bits, scales, n, block=DEFAULT_BLOCK, out=None, accumulate=False):
    """The sum of the decoded one-bit payloads of one or many ranks: float32
    [n] (or shaped like ``out``; with ``accumulate``, ``out`` plus the sum).
    ``bits`` is uint8 [ceil(n / 8)], [ranks, ceil(n / 8)] or several ranks'
    bits end to end (as allgather returns them); ``scales`` likewise with
    ceil(n / block) entries per rank. Ranks are summed in order."""
    _check_tensor("bits", bits, (tf.uint8,))
    _check_tensor("scales", scales, (tf.float32,))
    check_int("n", n, 0, MAX_ELEMENTS)
    check_block(block, multiple_of_8=True)
    bit_rows = _static_rows("bits", bits, -(-n // 8))
    scale_rows = _static_rows("scales", scales, -(-n // block))
    if None not in (bit_rows, scale_rows) and bit_rows != scale_rows:
        raise ValueError(f"bits hold {bit_rows} ranks' payloads but scales hold {scale_rows}")
    out = _check_out(out, n, accumulate)
    if accumulate:
        return _library().hvdkit_sign_decode_accumulate(bits, scales, out, block=block)
    return _decoded(_library().hvdkit_sign_decode(bits, scales, n=n, block=block), out, accumulate)


# ---- sparsification -------------------------------------------------------------------


def topk_ef(x, residual, k, approx=False):
    """Top-k by magnitude of ``c = x + residual`` with error feedback, as in
    :func:`hvdkit.kernels.torch_ops.topk_ef`. Returns ``(indices int32 [k],
    values float32 [k], new_residual)``: ``values = c[indices]`` for the
    selected entries, ``new_residual`` is ``c`` with those entries zeroed,
    shaped like ``residual``. Always exactly ``k`` pairs (a static shape, in
    both modes): zeros of ``c`` are never selected, and the free slots hold the
    pad ``(0, -0.0)`` (an exact no-op for :func:`scatter_add`; the residual is
    not touched there). Exact: ``min(k, nonzero(c))`` selected; ``approx``: at
    least ``min(topk_approx_floor(k), nonzero(c))`` and at most ``k``."""
    _check_tensor("x", x, (tf.float32,))
    _check_tensor("residual", residual, (tf.float32,))
    n = _numel(x)
    _check_numel("residual", residual, n, f"x has {n}")
    check_int("k", k, 0, MAX_ELEMENTS if n is None else n)
    check_bool("approx", approx)
    return tuple(_library().hvdkit_topk_ef(x, residual, k=k, approx=approx))


def randomk(x, k, seed):
    """``k`` indices drawn from ``seed`` alone (the same on every rank), one
    from each of ``k`` equal strata of ``[0, n)``, and ``x`` there. Returns
    ``(indices int32, values)``."""
    _check_tensor("x", x, FLOAT_DTYPES)
    n = _numel(x)
    check_int("k", k, 0, MAX_ELEMENTS if n is None else n)
    return tuple(_library().hvdkit_randomk(x, _seed(seed), k=k))


def scatter_add(indices, values, out, *, on_invalid="raise"):
    """``out`` with ``values[i]`` added at flat index ``indices[i]`` for every
    i, in order; ``indices`` and ``values`` may be many ranks' payloads end to
    end. If an index lies outside ``[0, out.size)`` nothing is added and, with
    ``on_invalid="raise"`` (default), ``tf.errors.InvalidArgumentError`` is
    raised when the op runs; with ``on_invalid="poison"`` the op succeeds and
    returns ``out`` with its first element set to NaN (when ``out`` is not
    empty), for a non-finite check downstream to catch."""
    _check_tensor("indices", indices, (tf.int32,))
    _check_tensor("values", values, (tf.float32,))
    _check_tensor("out", out, (tf.float32,))
    _check_numel("values", values, _numel(indices), f"indices has {_numel(indices)}")
    poison = check_on_invalid(on_invalid)
    return _library().hvdkit_scatter_add(indices, values, out, poison=poison)
