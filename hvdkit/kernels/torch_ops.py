"""Gradient-compression and fused-buffer kernels (C++/CUDA, ``hvdkit._C``).

Every op checks its arguments here and raises ``TypeError`` (wrong type or
dtype) or ``ValueError`` (wrong device, layout, size or range) naming the bad
argument, then runs the CPU or CUDA kernel of the tensors' device. Each op has
a pure-torch reference of the same name in :mod:`hvdkit.kernels.torch_reference`; the
tests compare them bit for bit unless a docstring says otherwise.

Shared rules:

* Gradients, residuals and decoded outputs are float32 (pack, unpack, cast and
  random-k also take float16 / bfloat16). Tensors may have any shape but must
  be contiguous; payloads are 1-D (decoders also take [ranks, ...] stacks). At
  most 2**31 - 1 elements (indices are int32).
* Casting to float16/bfloat16 computes ``v = float32(x) * scale``; finite ``v``
  beyond the target range saturates to the largest finite value, NaN and +-Inf
  pass through unchanged, and :func:`cast` reports them in a flag.
* Seeds are any Python int (used modulo 2**64); CPU, CUDA and the references draw
  the same numbers from them.
* The CPU kernels use ``torch.get_num_threads()`` threads.

This module imports even when the extension failed to build; the ops then raise
``RuntimeError`` and :func:`backends` says why.
"""
import functools

import torch

from hvdkit.kernels.checks import DEFAULT_BLOCK, MAX_ELEMENTS, PUBLIC_NAMES, topk_approx_floor
from hvdkit.kernels.checks import check_block as _check_block
from hvdkit.kernels.checks import check_bool as _check_bool
from hvdkit.kernels.checks import check_int as _check_int
from hvdkit.kernels.checks import check_on_invalid as _check_on_invalid
from hvdkit.kernels.checks import run_or_explain as _run_or_explain
from hvdkit.kernels.checks import check_scale as _check_scale
from hvdkit.kernels.checks import seed64 as _seed64

try:
    from hvdkit import _C
except Exception as exc:  # ImportError, or OSError for a stale build against another torch
    _C = None
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"
else:
    _LOAD_ERROR = None

__all__ = list(PUBLIC_NAMES)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def backends():
    """State of the kernel library, for ``hvdkit doctor``.

    Returns a dict: ``loaded`` (the extension imported), ``error`` (why not),
    ``cpu`` and ``cuda`` (ops run on that device here), ``cuda_built`` (CUDA
    kernels compiled in), ``cpu_isa`` (instruction set in use) and ``cpu_isas``
    (all this CPU can use, best first).
    """
    if _C is None:
        return {"loaded": False, "error": _LOAD_ERROR, "cpu": False, "cuda": False,
                "cuda_built": False, "cpu_isa": None, "cpu_isas": []}
    cuda_built = bool(_C.built_with_cuda())
    return {"loaded": True, "error": None, "cpu": True,
            "cuda": cuda_built and torch.cuda.is_available(), "cuda_built": cuda_built,
            "cpu_isa": _C.cpu_isa(), "cpu_isas": list(_C.cpu_isas())}


@functools.lru_cache(maxsize=None)
def _cuda_kernels():
    """Whether CUDA ops run here (asked once: the query costs more than a small op)."""
    return backends()["cuda"]


def set_cpu_isa(name):
    """Use the CPU loops built for ``name`` (see ``backends()["cpu_isas"]``);
    returns the previous one. For tests and benchmarks; the environment
    variable ``HVDKIT_CPU_ISA`` does the same at start-up (an unavailable name
    there is ignored)."""
    _library()
    available = list(_C.cpu_isas())
    if name not in available:
        raise ValueError(f"name must be one of {available}, got {name!r}")
    previous = _C.cpu_isa()
    _C.set_cpu_isa(name)
    return previous


# ---- argument checks ---------------------------------------------------------------


def _library():
    if _C is None:
        raise RuntimeError(
            "hvdkit kernels are unavailable: the extension hvdkit._C failed to load "
            f"({_LOAD_ERROR}); rebuild it with `pip install --no-build-isolation -e .`")
    return torch.ops.hvdkit


def _dtype_names(dtypes):
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def _check_tensor(name, value, dtypes, device=None):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {_dtype_names(dtypes)}, got {value.dtype}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} is on {value.device}, but the other tensors are on {device}")
    if value.device.type == "cuda":
        if not _cuda_kernels():
            raise ValueError(f"{name} is on {value.device}, but hvdkit was built without CUDA kernels")
    elif value.device.type != "cpu":
        raise ValueError(f"{name} is on {value.device}; hvdkit kernels run on cpu and cuda")
    if not value.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    if value.numel() > MAX_ELEMENTS:
        raise ValueError(f"{name} has {value.numel()} elements; at most {MAX_ELEMENTS} are supported")
    return value


def _check_list(name, tensors):
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(tensors).__name__}")
    device = tensors[0].device if tensors and isinstance(tensors[0], torch.Tensor) else None
    for i, t in enumerate(tensors):
        _check_tensor(f"{name}[{i}]", t, FLOAT_DTYPES, device)
    return list(tensors)


def _check_out(out, n, device):
    _check_tensor("out", out, (torch.float32,), device)
    if out.numel() != n:
        raise ValueError(f"out has {out.numel()} elements, expected {n}")
    return out


def _prepare_out(out, n, device, accumulate):
    _check_bool("accumulate", accumulate)
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs out (the buffer to add into)")
        return torch.empty(n, dtype=torch.float32, device=device)
    return _check_out(out, n, device)


def _payload_rows(name, payload, row_length):
    """Rows of a payload given as [row_length], [ranks, row_length] or the 1-D
    concatenation of several ranks' payloads."""
    if payload.dim() == 2:
        if payload.shape[1] != row_length:
            raise ValueError(f"{name} rows must have {row_length} entries, got {payload.shape[1]}")
        return payload
    if payload.dim() != 1:
        raise ValueError(f"{name} must be 1-D or 2-D [ranks, {row_length}], got shape {tuple(payload.shape)}")
    if row_length == 0:
        return payload.view(1, 0)
    if payload.numel() == 0 or payload.numel() % row_length:
        raise ValueError(f"{name} has {payload.numel()} entries, not a whole number of "
                         f"{row_length}-entry payloads")
    return payload.view(-1, row_length)


# ---- fused buffers and casts ---------------------------------------------------------


def _check_flat_out(out, dtype, numel, device):
    """Checks a caller-provided output buffer; returns its dtype."""
    _check_tensor("out", out, FLOAT_DTYPES, device)
    if dtype is not None and dtype != out.dtype:
        raise TypeError(f"dtype is {dtype} but out has dtype {out.dtype}")
    if out.numel() != numel:
        raise ValueError(f"out has {out.numel()} elements, expected {numel}")
    return out.dtype


# The kernels check every argument themselves (RuntimeError, or TypeError from
# torch's argument parser; NotImplementedError for a device without kernels;
# AttributeError for a list element that is no tensor).
# For the many-tensor ops the Python checks cost far more than the copy itself
# (about 5 us a tensor), so they run only after the kernel refused: they then
# raise the error that names the argument, or the kernel's error is re-raised.
_REFUSED = (RuntimeError, TypeError, NotImplementedError, AttributeError)


def _tensor_list(name, tensors):
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(tensors).__name__}")
    return list(tensors)


def _common_dtype(tensors):
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"tensors have several dtypes {sorted(map(str, dtypes))}; pass dtype")
    return dtypes.pop() if dtypes else torch.float32


def pack(tensors, dtype=None, scale=1.0, *, out=None, report_nonfinite=False):
    """Concatenate ``tensors`` (flattened) into one 1-D buffer of ``dtype`` with
    every value multiplied by ``scale``, in one pass; returns the buffer.

    ``dtype`` defaults to ``out``'s dtype, else the tensors' (they must then
    share one). ``out`` (optional, contiguous, as many elements as the tensors)
    is written instead of a new buffer: reusing one saves the page faults of a
    fresh allocation, which on CPU can cost more than the pack itself. Casts
    follow the saturation rule of the module docstring. With
    ``report_nonfinite`` returns ``(flat, nonfinite)`` as :func:`cast` does,
    found in the same pass (no second read of the buffer).
    """
    tensors = _tensor_list("tensors", tensors)
    scale = _check_scale(scale)

    def explain():
        checked = _check_list("tensors", tensors)
        total = sum(t.numel() for t in checked)
        device = checked[0].device if checked else None
        if out is not None:
            _check_flat_out(out, dtype, total, device)
        elif dtype is None:
            _common_dtype(checked)
        elif dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be {_dtype_names(FLOAT_DTYPES)}, got {dtype}")

    def run():
        if out is not None:
            if dtype is not None and dtype != out.dtype:
                raise TypeError(f"dtype is {dtype} but out has dtype {out.dtype}")
            flat = out
        else:
            flat_dtype = _common_dtype(tensors) if dtype is None else dtype
            if flat_dtype not in FLOAT_DTYPES:
                raise TypeError(f"dtype must be {_dtype_names(FLOAT_DTYPES)}, got {flat_dtype}")
            device = tensors[0].device if tensors else None
            flat = torch.empty(sum(t.numel() for t in tensors), dtype=flat_dtype, device=device)
        if not tensors:
            return flat, torch.zeros((), dtype=torch.bool, device=flat.device)
        return flat, _library().pack(tensors, flat.view(-1), scale)

    flat, nonfinite = _run_or_explain(run, explain, _REFUSED)
    return (flat, nonfinite) if report_nonfinite else flat


def unpack(flat, tensors, scale=1.0, accumulate=False):
    """Copy ``flat * scale`` back into ``tensors`` (in place, in order), casting
    to each tensor's dtype; with ``accumulate`` add to their values instead.
    Round trip ``unpack(pack(ts), ts)`` is bit-exact for scale 1 (or any power
    of two that does not overflow or underflow)."""
    tensors = _tensor_list("tensors", tensors)
    scale = _check_scale(scale)
    _check_bool("accumulate", accumulate)

    def explain():
        checked = _check_list("tensors", tensors)
        _check_tensor("flat", flat, FLOAT_DTYPES, checked[0].device if checked else None)
        total = sum(t.numel() for t in checked)
        if flat.numel() != total:
            raise ValueError(f"flat has {flat.numel()} elements, but tensors hold {total}")

    def run():
        if tensors:
            _library().unpack(flat.view(-1), tensors, scale, accumulate)
        elif flat.numel() != 0:
            raise ValueError(f"flat has {flat.numel()} elements, but tensors hold 0")

    _run_or_explain(run, explain, _REFUSED)


def cast(x, dtype, scale=1.0, *, out=None):
    """``x * scale`` cast to ``dtype``, with the shape of ``x`` (or written to
    ``out``, a contiguous tensor of ``dtype`` with as many elements).

    Returns ``(y, nonfinite)``: ``nonfinite`` is a 0-dim bool tensor on
    ``x.device``, True when some ``x * scale`` (float32) is NaN or +-Inf. Finite
    values beyond float16/bfloat16 range saturate; NaN/Inf pass through.
    """
    _check_tensor("x", x, FLOAT_DTYPES)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be {_dtype_names(FLOAT_DTYPES)}, got {dtype}")
    if out is not None:
        _check_flat_out(out, dtype, x.numel(), x.device)
    scale = _check_scale(scale)
    y = out if out is not None else torch.empty(x.shape, dtype=dtype, device=x.device)
    if x.numel() == 0:
        return y, torch.zeros((), dtype=torch.bool, device=x.device)
    return y, _library().pack([x], y.view(-1), scale)


# ---- int8 blockwise ---------------------------------------------------------------------


def quantize_int8(x, block=DEFAULT_BLOCK, stochastic=False, seed=0):
    """Blockwise absmax int8: returns ``(q, scales)``, ``q`` int8 [n] and
    ``scales`` float32 [ceil(n / block)] with ``scales[b] = absmax_b / 127``.

    ``q = round(x * (127 / absmax_b))`` (half to even), clamped to [-127, 127];
    with ``stochastic`` it is ``floor(v + u)`` instead, ``u`` uniform in [0, 1)
    drawn from ``seed`` and the element index (unbiased). A block holding NaN
    or Inf gets a NaN scale (it decodes to NaN) and zero codes; a block whose
    absmax is below ~3.7e-37 (where 127 / absmax overflows) codes to zeros.
    """
    _check_tensor("x", x, (torch.float32,))
    _check_block(block)
    _check_bool("stochastic", stochastic)
    return _library().quantize_int8(x, block, stochastic, _seed64(seed))


def dequantize_int8(q, scales, block, out=None, accumulate=False):
    """``out = q * scales[i // block]`` (or ``out += ...`` with ``accumulate``);
    returns ``out`` (a new float32 [n] tensor when None)."""
    _check_tensor("q", q, (torch.int8,))
    _check_tensor("scales", scales, (torch.float32,), q.device)
    _check_block(block)
    n = q.numel()
    expected = -(-n // block)
    if scales.numel() != expected:
        raise ValueError(f"scales has {scales.numel()} entries, expected ceil({n} / {block}) = {expected}")
    out = _prepare_out(out, n, q.device, accumulate)
    _library().dequantize_int8(q, scales, block, out, accumulate)
    return out


# ---- one-bit sign with error feedback ---------------------------------------------


def sign_ef(x, residual, block=DEFAULT_BLOCK):
    """One-bit scaled sign with error feedback, in one pass.

    ``c = x + residual``; per block ``scale = mean |c|`` (16 interleaved float32
    partial sums added pairwise, then divided by the block length); bit
    ``i`` is 1 where ``c >= 0``, packed 8 per byte, element ``8j + b`` in bit
    ``b`` of byte ``j``; ``residual`` becomes ``c - scale * sign(c)`` in place.
    Returns ``(bits uint8 [ceil(n / 8)], scales float32 [ceil(n / block)])``.
    ``block`` must be a multiple of 8. Decoded + new residual equals ``c`` up to
    the one rounding of that subtraction (half an ulp of the residual).
    """
    _check_tensor("x", x, (torch.float32,))
    _check_tensor("residual", residual, (torch.float32,), x.device)
    if residual.numel() != x.numel():
        raise ValueError(f"residual has {residual.numel()} elements, x has {x.numel()}")
    _check_block(block, multiple_of_8=True)
    return _library().sign_ef(x, residual, block)


def sign_decode(bits, scales, n, block=DEFAULT_BLOCK, out=None, accumulate=False):
    """Sum the decoded one-bit payloads of one or many ranks into ``out``.

    ``bits`` is uint8 [ceil(n / 8)] for one rank, [ranks, ceil(n / 8)] or the
    1-D concatenation of several ranks' bits (as allgather returns them);
    ``scales`` likewise with ceil(n / block) entries per rank. ``out`` (float32,
    n elements) becomes ``sum_r scale_r * sign_r``, added to its values with
    ``accumulate``, ranks summed in order. Returns ``out``.
    """
    _check_tensor("bits", bits, (torch.uint8,))
    _check_tensor("scales", scales, (torch.float32,), bits.device)
    _check_int("n", n, 0, MAX_ELEMENTS)
    _check_block(block, multiple_of_8=True)
    bit_rows = _payload_rows("bits", bits, -(-n // 8))
    scale_rows = _payload_rows("scales", scales, -(-n // block))
    if bit_rows.shape[0] != scale_rows.shape[0]:
        raise ValueError(f"bits hold {bit_rows.shape[0]} ranks' payloads but scales hold {scale_rows.shape[0]}")
    out = _prepare_out(out, n, bits.device, accumulate)
    _library().sign_decode(bit_rows, scale_rows, n, block, out, accumulate)
    return out


# ---- sparsification ---------------------------------------------------------------------


def topk_ef(x, residual, k, approx=False):
    """Top-k by magnitude of ``c = x + residual`` with error feedback.

    Returns ``(indices int32 [k], values float32 [k])``: always exactly ``k``
    pairs, in both modes and on every device, so payloads have one size on
    every rank and the CUDA kernel never reads a count back to the host. The
    selected entries come in no particular order, with ``values = c[indices]``;
    ``residual`` becomes ``c`` with the selected entries zeroed (so decoded +
    new residual == c, bit for bit). Entries where ``c`` is zero are never
    selected (and never in preference to a non-zero one): the slots left free
    hold the padding pair ``(index 0, value -0.0)``, which any decoder may add
    like a real pair (``v + -0.0 == v`` bit for bit, whatever ``v``) and which
    leaves the residual alone (``residual[0]`` keeps its value unless index 0
    was really selected). Pads are recognisable as ``values`` whose bits are
    those of -0.0 (a selected value is never zero).

    Exact: the largest ``|c|`` (NaN counts as largest; ties broken
    arbitrarily), ``min(k, nonzero(c))`` of them. ``approx``: a threshold
    estimated from a sample (as in Deep Gradient Compression) selects at least
    ``min(topk_approx_floor(k), nonzero(c))`` and at most ``k`` entries. On CPU
    every selected entry is at least as large in magnitude as every unselected
    one; on CUDA, when more than ``k`` pass the threshold, which of them stay
    in the residual is arbitrary.
    """
    _check_tensor("x", x, (torch.float32,))
    _check_tensor("residual", residual, (torch.float32,), x.device)
    if residual.numel() != x.numel():
        raise ValueError(f"residual has {residual.numel()} elements, x has {x.numel()}")
    _check_int("k", k, 0, x.numel())
    _check_bool("approx", approx)
    return _library().topk_ef(x, residual, k, approx)


def randomk(x, k, seed):
    """``k`` indices drawn from ``seed`` alone (the same on every rank), one
    uniformly from each of ``k`` equal strata of ``[0, n)`` (so they are
    distinct and sorted), and ``x`` there. Returns ``(indices int32, values)``."""
    _check_tensor("x", x, FLOAT_DTYPES)
    _check_int("k", k, 0, x.numel())
    return _library().randomk(x, k, _seed64(seed))


def scatter_add(indices, values, out, *, on_invalid="raise"):
    """``out.view(-1)[indices[i]] += values[i]`` for every i, in order: pairs
    with the same index are added in input order on CPU and on CUDA alike (the
    CUDA kernel sorts the pairs stably by index, no atomics), so the result is
    the same on every run and every rank, and equal bit for bit to a sequential
    loop. ``indices`` and ``values`` may be the concatenated payloads of many
    ranks. Returns ``out``.

    If an index lies outside ``[0, out.numel())`` nothing is added, and
    ``on_invalid`` says what else happens:

    * ``"raise"`` (default): ``ValueError``; ``out`` is left untouched. On
      CUDA this reads a flag back from the device (one synchronisation).
    * ``"poison"``: no error and no host read at all; the kernel sets
      ``out[0]`` to NaN on the device (when ``out`` is not empty), so that a
      non-finite check on the decoded result catches the corrupt payload.
    """
    _check_tensor("indices", indices, (torch.int32,))
    _check_tensor("values", values, (torch.float32,), indices.device)
    _check_tensor("out", out, (torch.float32,), indices.device)
    if indices.numel() != values.numel():
        raise ValueError(f"indices has {indices.numel()} entries, values has {values.numel()}")
    poison = _check_on_invalid(on_invalid)
    bad = _library().scatter_add(indices, values, out, poison)
    if not poison and bool(bad):
        raise ValueError(f"indices must lie in [0, {out.numel()}) (the size of out); some do not")
    return out
