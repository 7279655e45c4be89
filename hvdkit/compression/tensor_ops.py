"""The one framework adapter: every tensor operation framework-neutral code uses.

Compression algorithms (on ``self.ops``), the exchange's collectives and
simulator, and model averaging call only these methods, so one implementation
per framework (``TorchOps``, ``TFOps``) is all that adapts frameworks.
Every method is functional: it returns its result, and where a torch
implementation updates a tensor in place it returns that same tensor; callers
always keep the returned value (a TensorFlow implementation returns new
tensors). Flat tensors are 1-D float32 unless a method says otherwise.

Whether a value is finite may only be known on the device. Such a *flag*
(True: not finite) is a Python bool or, in torch, a 0-dim bool tensor that
stays on the device: flags are combined, used to poison payloads and to
settle error feedback without a host read, and read (``read_flag``) at most
once per optimizer step.
"""
import abc

__all__ = ["TensorOps", "ops_for"]

_instances = {}  # framework module name -> its TensorOps (one each, made on first use)


def ops_for(tensor):
    """The TensorOps of ``tensor``'s framework; neither framework is imported until a tensor of it
    is passed in."""
    module = type(tensor).__module__.split(".")[0]
    if module not in _instances:
        if module == "torch":
            from hvdkit.compression.torch_ops import TorchOps

            _instances[module] = TorchOps()
        elif module in ("tensorflow", "keras"):
            from hvdkit.compression.tf_ops import TFOps

            _instances[module] = _instances["tensorflow"] = _instances["keras"] = TFOps()
        else:
            raise TypeError(f"expected a torch or TensorFlow tensor, got {type(tensor).__name__}")
    return _instances[module]


class TensorOps(abc.ABC):
    """Interface; ``TorchOps`` and ``TFOps`` implement it. Kernel calls whose arguments and results are the
    same in both frameworks are made here, through the framework's kernel module."""

    kernels = None  # hvdkit.kernels.torch_ops or tf_ops: the same ops with the same arguments

    # --- creation, shape and bookkeeping -----------------------------------
    @abc.abstractmethod
    def zeros(self, n, like):
        """Float32 zeros of length ``n`` on ``like``'s device."""

    @abc.abstractmethod
    def randn(self, n, seed, like):
        """``n`` standard-normal float32 values from ``seed``: equal on every rank for equal seeds."""

    @abc.abstractmethod
    def numel(self, x):
        """Number of elements."""

    @abc.abstractmethod
    def slice(self, x, start, stop):
        """Elements ``start:stop`` of a flat tensor (a view where the framework has them)."""

    @abc.abstractmethod
    def matrix(self, x, offset, rows, cols):
        """Elements ``offset:offset+rows*cols`` of a flat tensor as a ``rows x cols`` matrix."""

    @abc.abstractmethod
    def flatten(self, x):
        """``x`` as a 1-D tensor."""

    @abc.abstractmethod
    def concat(self, parts):
        """1-D tensors joined end to end."""

    @abc.abstractmethod
    def shape(self, x):
        """The shape as a tuple of ints."""

    @abc.abstractmethod
    def reshape(self, x, shape):
        """``x`` with a new shape (a view where the framework has them)."""

    @abc.abstractmethod
    def concat_rows(self, parts):
        """Tensors joined along their first dimension (allgather's result)."""

    @abc.abstractmethod
    def to_list(self, x):
        """The values as (nested) Python lists."""

    @abc.abstractmethod
    def int64_tensor(self, values, like):
        """An int64 tensor of ``values`` on ``like``'s device."""

    @abc.abstractmethod
    def copy(self, x):
        """A copy the receiver may change in place (immutable tensors are their own copy)."""

    def copy_into(self, out, x):
        """``x``'s values in ``out`` (torch: written into ``out``; immutable tensors: ``x`` itself)."""
        return x

    def add_into(self, out, x, y):
        """``x + y``, written into ``out`` where the framework allows it."""
        return self.add(x, y)

    def zero_(self, x):
        """Zeros shaped like ``x`` (torch: ``x`` itself, zeroed)."""
        return self.zeros(self.numel(x), x)

    def concat_into(self, out, parts):
        """``parts`` joined end to end, in ``out`` where the framework allows it (free when the parts
        are ``out``'s own consecutive pieces, already written in place)."""
        return self.concat(parts)

    @abc.abstractmethod
    def write_into(self, target, flat):
        """``flat`` (same element count) as ``target``'s value: written into ``target`` and returned
        where the framework allows it (torch); a new tensor shaped like ``target`` otherwise."""

    @abc.abstractmethod
    def add_ranks(self, a, b):
        """``a + b`` as Horovod sums two ranks' values (float16 added in float32, as its MPI sum does)."""

    @abc.abstractmethod
    def parameter_tensors(self, parameters):
        """The tensors holding model parameters' values (torch: ``.data``; TensorFlow: the variables)."""

    @abc.abstractmethod
    def assign(self, parameters, values):
        """Set each parameter to its value in ``values`` (already the parameter itself where
        ``unpack`` wrote in place)."""

    @abc.abstractmethod
    def bitcast(self, x, dtype):
        """The same bytes seen as ``dtype`` (``"int16"``, ``"bfloat16"``, ...): for wire formats."""

    # --- fusion (hvdkit.ops.pack / unpack in torch) ----------------------------
    @abc.abstractmethod
    def pack(self, tensors, scale, out=None):
        """Tensors (one dtype) joined into one flat tensor, times ``scale``: (flat, nonfinite flag). ``out``:
        a buffer of the bucket's wire dtype and size to pack into, reused from step to step."""

    @abc.abstractmethod
    def unpack(self, flat, tensors, scale=1.0):
        """Split ``flat`` (times ``scale``) back into tensors shaped like ``tensors``; returns them (torch:
        written in place)."""

    # --- arithmetic ---------------------------------------------------------
    @abc.abstractmethod
    def add(self, x, y):
        """``x + y`` as a new tensor."""

    @abc.abstractmethod
    def sub_(self, x, y):
        """``x - y``, written into ``x`` where possible."""

    @abc.abstractmethod
    def scale(self, x, factor):
        """``x * factor`` as a new tensor."""

    def rescale_(self, x, factor):
        """``x * factor`` (``factor`` a number or a 0-dim tensor on ``x``'s device), in place where the
        framework allows it."""
        return x * factor

    @abc.abstractmethod
    def neg(self, x):
        """``-x`` as a new tensor."""

    @abc.abstractmethod
    def momentum(self, velocity, x, factor):
        """``factor * velocity + x`` as a new tensor (SGD's momentum buffer, one step on)."""

    @abc.abstractmethod
    def zero_where_zero(self, x, reference):
        """``x`` with zeros where ``reference`` is zero (in ``x``'s memory where the framework allows it)."""

    @abc.abstractmethod
    def clip_norm(self, x, max_norm):
        """``x`` scaled to an L2 norm of at most ``max_norm``, computed on the device (no host read)."""

    @abc.abstractmethod
    def all_finite(self, x):
        """True when no element is NaN or +-Inf (a Python bool)."""

    @abc.abstractmethod
    def poison(self, x):
        """``x`` with its first element set to NaN: marks a payload whose source was not finite."""

    # --- flags (see the module docstring) ------------------------------------------
    def nonfinite(self, x):
        """Flag: some element of ``x`` may be NaN or +-Inf. A device flag may also be set by a sum of
        finite values that overflowed; ``all_finite`` decides exactly."""
        return not self.all_finite(x)

    def any_flag(self, flags):
        """One flag, set when any of ``flags`` is."""
        return any(flags)

    def read_flag(self, flag):
        """The flag as a Python bool (a host synchronisation for a device flag)."""
        return bool(flag)

    def poison_where(self, x, flag):
        """``x``, poisoned (see ``poison``) when ``flag`` is set; a device flag poisons on the device,
        in place where the framework allows it (``x`` must then be the exchange's own tensor)."""
        return self.poison(x) if flag else x

    def select(self, flag, if_set, otherwise):
        """``if_set`` where ``flag`` is set, else ``otherwise`` (same shapes): error feedback settles with
        this, in ``if_set``'s memory where the framework allows it."""
        return if_set if flag else otherwise

    @abc.abstractmethod
    def sum_chunks(self, x, n, dtype):
        """A flat tensor of R back-to-back chunks of length ``n`` (seen as ``dtype``) summed in float32."""

    # --- kernels (hvdkit.ops in torch) -----------------------------------------
    @abc.abstractmethod
    def cast(self, x, dtype):
        """``x`` cast to ``"float16"``, ``"bfloat16"``, ``"float32"`` or ``"float64"``; returns (y, nonfinite: bool)."""

    def quantize_int8(self, x, block, stochastic, seed):
        """Blockwise absmax int8: (int8 values, float32 scale per block)."""
        return self.kernels.quantize_int8(x, block=block, stochastic=stochastic, seed=seed)

    def dequantize_int8(self, q, scales, block, out=None, accumulate=False):
        """Dense float32 from int8 values and scales; into ``out`` (added when ``accumulate``)."""
        return self.kernels.dequantize_int8(q, scales, block, out=out, accumulate=accumulate)

    @abc.abstractmethod
    def sign_ef(self, x, residual, block):
        """c = x + residual; (sign bits, scale per block, new residual c - scale*sign(c))."""

    def sign_decode(self, bits, scales, n, block, out=None):
        """Sum of R ranks' back-to-back sign payloads, decoded to ``n`` float32 values (into ``out``, a
        buffer of ``n`` where the framework allows it)."""
        return self.kernels.sign_decode(bits, scales, n, block=block, out=out)

    @abc.abstractmethod
    def topk_ef(self, x, residual, k, approx):
        """c = x + residual; (int32 indices, values) of the k largest |c|; new residual (c, zero there).

        ``residual`` may be None: no error feedback, x is compressed alone.
        """

    @abc.abstractmethod
    def scatter_add(self, indices, values, out):
        """``out[indices] += values`` (repeated indices add up); returns ``out``."""

    def randomk(self, x, k, seed):
        """(indices, values) of k distinct positions drawn from ``seed`` (same on every rank)."""
        return self.kernels.randomk(x, k, seed)

    # --- PowerSGD -----------------------------------------------------------
    @abc.abstractmethod
    def matmul(self, a, b, transpose_a=False, transpose_b=False):
        """``op(a) @ op(b)``."""

    @abc.abstractmethod
    def orthogonalize(self, m):
        """Orthonormal columns spanning ``m``'s (Gram-Schmidt for up to 2 columns, QR beyond, as PyTorch's
        PowerSGD hook does); an all-zero column becomes a unit vector, so the result is never all zero."""
