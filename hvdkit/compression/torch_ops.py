"""``TensorOps`` for torch: hvdkit's kernels (``hvdkit.ops``) plus a few torch calls."""
import torch

from hvdkit.kernels import torch_ops as kernels
from hvdkit.compression.tensor_ops import TensorOps

__all__ = ["TorchOps"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
           "int16": torch.int16}
_NAN_BITS = {torch.int16: 0x7FC0}  # bfloat16 NaN seen as int16 (bf16 payloads travel as int16)


class TorchOps(TensorOps):
    kernels = kernels

    def zeros(self, n, like):
        return torch.zeros(n, dtype=torch.float32, device=like.device)

    def randn(self, n, seed, like):
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randn(n, generator=generator, dtype=torch.float32).to(like.device)

    def numel(self, x):
        return x.numel()

    def slice(self, x, start, stop):
        return x[start:stop]

    def matrix(self, x, offset, rows, cols):
        return x[offset:offset + rows * cols].view(rows, cols)

    def flatten(self, x):
        return x.reshape(-1)

    def concat(self, parts):
        return torch.cat(parts) if len(parts) != 1 else parts[0].reshape(-1)

    def bitcast(self, x, dtype):
        return x.view(_DTYPES[dtype])

    def shape(self, x):
        return tuple(x.shape)

    def reshape(self, x, shape):
        return x.reshape(shape)

    def concat_rows(self, parts):
        return torch.cat(parts)

    def to_list(self, x):
        return x.tolist()

    def int64_tensor(self, values, like):
        return torch.tensor(values, dtype=torch.int64, device=like.device)

    def copy(self, x):
        return x.clone()

    def copy_into(self, out, x):
        return out.copy_(x)

    def add_into(self, out, x, y):
        return torch.add(x, y, out=out)

    def zero_(self, x):
        return x.zero_()

    def concat_into(self, out, parts):
        if _tiles(out, parts):
            return out
        return torch.cat(parts, out=out)

    def write_into(self, target, flat):
        target.copy_(flat.reshape(target.shape))
        return target

    def add_ranks(self, a, b):
        if a.dtype == torch.float16:
            return (a.float() + b.float()).to(a.dtype)
        return a + b

    def parameter_tensors(self, parameters):
        return [p.data if isinstance(p, torch.nn.Parameter) else p for p in parameters]

    def assign(self, parameters, values):
        for p, value in zip(parameters, values):
            target = p.data if isinstance(p, torch.nn.Parameter) else p
            if value is not target:
                target.copy_(value)

    def pack(self, tensors, scale, out=None):
        # Horovod cannot reduce bfloat16: such buckets travel as float32 (unpack casts back).
        wire = torch.float32 if tensors[0].dtype == torch.bfloat16 else tensors[0].dtype
        if out is not None and (out.dtype != wire or out.device != tensors[0].device):
            out = None
        if all(t.dtype in kernels.FLOAT_DTYPES and t.is_contiguous() for t in tensors):
            return kernels.pack(tensors, dtype=None if out is not None else wire, scale=scale, out=out,
                                report_nonfinite=True)
        flat = torch.cat([t.reshape(-1).to(wire) for t in tensors], out=out).mul_(scale)
        return flat, self.nonfinite(flat)

    def unpack(self, flat, tensors, scale=1.0):
        if flat.dtype in kernels.FLOAT_DTYPES and all(
                t.dtype in kernels.FLOAT_DTYPES and t.is_contiguous() for t in tensors):
            kernels.unpack(flat, tensors, scale)
        else:
            offset = 0
            for t in tensors:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                if scale != 1.0:
                    t.mul_(scale)
                offset += t.numel()
        return tensors

    def add(self, x, y):
        return x + y

    def sub_(self, x, y):
        return x.sub_(y)

    def scale(self, x, factor):
        return x * factor

    def rescale_(self, x, factor):
        return x.mul_(factor)

    def neg(self, x):
        return -x

    def momentum(self, velocity, x, factor):
        return torch.add(x, velocity, alpha=factor)

    def zero_where_zero(self, x, reference):
        return x.masked_fill_(reference == 0, 0.0)

    def clip_norm(self, x, max_norm):
        return x * (max_norm / (torch.linalg.vector_norm(x) + 1e-12)).clamp(max=1.0)

    def all_finite(self, x):
        # One reduction instead of a boolean tensor: NaN and +-Inf reach the sum. Only when the sum is
        # not finite (which finite values can also cause, by overflowing) is every element checked.
        if x.numel() == 0 or bool(torch.isfinite(x.sum())):
            return True
        return bool(torch.isfinite(x).all())

    def poison(self, x):
        x = x.clone()
        x.view(-1)[0] = _NAN_BITS.get(x.dtype, float("nan"))
        return x

    def nonfinite(self, x):
        if not x.is_floating_point() or x.numel() == 0:
            return False
        return ~torch.isfinite(x.sum())

    def any_flag(self, flags):
        devices = [f for f in flags if isinstance(f, torch.Tensor)]
        if any(f is True for f in flags) or not devices:
            return any(f is True for f in flags)
        return devices[0] if len(devices) == 1 else torch.stack(devices).any()

    def poison_where(self, x, flag):
        if not isinstance(flag, torch.Tensor) or x.numel() == 0:
            return super().poison_where(x, flag)
        head = x.view(-1)[:1]
        head.copy_(torch.where(flag, _NAN_BITS.get(x.dtype, float("nan")), head))
        return x

    def select(self, flag, if_set, otherwise):
        if not isinstance(flag, torch.Tensor):
            return super().select(flag, if_set, otherwise)
        return torch.where(flag, if_set, otherwise, out=if_set)

    def sum_chunks(self, x, n, dtype):
        chunks = x.view(_DTYPES[dtype]).view(-1, n) if n else x.view(0, 0)
        return chunks.to(torch.float32).sum(dim=0) if n else torch.zeros(0, device=x.device)

    def cast(self, x, dtype):
        if dtype in ("float32", "float64"):
            return x.to(_DTYPES[dtype]), False
        return kernels.cast(x, _DTYPES[dtype])  # finite values beyond the range saturate; NaN/Inf inputs flag

    def sign_ef(self, x, residual, block):
        bits, scales = kernels.sign_ef(x, residual, block=block)
        return bits, scales, residual

    def topk_ef(self, x, residual, k, approx):
        if residual is None:
            residual = torch.zeros_like(x)
        indices, values = kernels.topk_ef(x, residual, k, approx=approx)
        return indices, values, residual

    def scatter_add(self, indices, values, out):
        # An index out of range (a corrupt payload) poisons ``out`` on the device instead of being read on
        # the host: the step's non-finite check then catches it.
        kernels.scatter_add(indices, values, out, on_invalid="poison")
        return out

    def matmul(self, a, b, transpose_a=False, transpose_b=False):
        return (a.t() if transpose_a else a) @ (b.t() if transpose_b else b)

    def orthogonalize(self, m):
        m = m.clone()
        if m.shape[1] > 2:
            return torch.linalg.qr(m).Q.contiguous()
        for i in range(m.shape[1]):
            col = m[:, i:i + 1]
            norm = torch.linalg.vector_norm(col)
            col /= norm + _EPS
            col[i % m.shape[0]] += (norm == 0).to(col.dtype)  # an all-zero column becomes a unit vector
            if i + 1 < m.shape[1]:
                rest = m[:, i + 1:]
                rest -= (col * rest).sum(dim=0, keepdim=True) * col
        return m


_EPS = 1e-8  # keeps an all-zero column (vanishing gradient) from dividing by zero


def _tiles(out, parts):
    """Whether ``parts`` are ``out``'s consecutive pieces, first to last (nothing to copy)."""
    if out.dtype != parts[0].dtype or sum(p.numel() for p in parts) != out.numel():
        return False
    address, step = out.data_ptr(), out.element_size()
    for part in parts:
        if part.data_ptr() != address or not part.is_contiguous():
            return False
        address += part.numel() * step
    return True
