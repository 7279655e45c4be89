"""Pure-torch references for every op in :mod:`hvdkit.ops`.

Same names, arguments and results, written for clarity rather than speed. They
pin down the exact arithmetic (float32 products and sums in the stated order,
round half to even, saturation, the counter-based random numbers), so the
kernels can be tested against them bit for bit.
"""
import math

import torch
import torch.nn.functional as F

DEFAULT_BLOCK = 1024
_MASK32 = 0xFFFFFFFF
_STREAM_STOCHASTIC_ROUNDING = 1
_STREAM_RANDOMK = 2


# ---- counter-based random numbers (csrc/core/counter_hash.h) ------------------


def _mul32(x, c):
    """(x * c) mod 2**32 for x < 2**32 without overflowing int64."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def mix32(x):
    """The "lowbias32" mixer on ints or int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def stream_key(seed, stream):
    seed &= 2**64 - 1
    high = mix32((seed >> 32) ^ stream)
    return mix32((seed & _MASK32) ^ high)


def uniform01(key, index):
    """Uniform float32 in [0, 1) for each int64 element index (mod 2**32)."""
    bits = mix32((index & _MASK32) ^ key)
    return (bits >> 8).to(torch.float32) * 2.0**-24


# ---- casts and fused buffers --------------------------------------------------------


def _scaled(x, scale):
    return x.float() * torch.tensor(scale, dtype=torch.float32, device=x.device)


def _saturate(v, dtype):
    """float32 -> dtype: finite values clamp to the largest finite, NaN/Inf stay."""
    if dtype == torch.float32:
        return v
    limit = torch.finfo(dtype).max
    return torch.where(torch.isfinite(v), v.clamp(-limit, limit), v).to(dtype)


def pack(tensors, dtype=None, scale=1.0):
    dtype = dtype or (tensors[0].dtype if tensors else torch.float32)
    if not tensors:
        return torch.empty(0, dtype=dtype)
    return _saturate(_scaled(torch.cat([t.reshape(-1).float() for t in tensors]), scale), dtype)


def unpack(flat, tensors, scale=1.0, accumulate=False):
    values = _scaled(flat.reshape(-1), scale)
    offset = 0
    for t in tensors:
        v = values[offset:offset + t.numel()].view(t.shape)
        if accumulate:
            v = t.float() + v
        t.copy_(_saturate(v, t.dtype))
        offset += t.numel()


def cast(x, dtype, scale=1.0):
    v = _scaled(x, scale)
    return _saturate(v, dtype), ~torch.isfinite(v).all()


# ---- int8 blockwise -------------------------------------------------------------------


def _blocks(flat, block):
    """[n] -> [ceil(n / block), block], zero padded."""
    n = flat.numel()
    return F.pad(flat, (0, -(-n // block) * block - n)).view(-1, block)


def quantize_int8(x, block=DEFAULT_BLOCK, stochastic=False, seed=0):
    flat = x.reshape(-1)
    n = flat.numel()
    blocks = _blocks(flat, block)
    absmax = blocks.abs().amax(dim=1)
    bad = ~torch.isfinite(blocks).all(dim=1)
    # Tensor / tensor: a Python scalar numerator would become reciprocal() * 127.
    full127 = torch.full_like(absmax, 127.0)
    ratio = full127 / absmax
    inverse = torch.where((absmax > 0) & torch.isfinite(ratio), ratio, 0.0)
    v = blocks * inverse[:, None]
    if stochastic:
        index = torch.arange(blocks.numel(), device=x.device).view_as(blocks)
        v = torch.floor(v + uniform01(stream_key(seed, _STREAM_STOCHASTIC_ROUNDING), index))
    else:
        v = torch.round(v)
    q = v.clamp(-127, 127).to(torch.int8)
    q[bad] = 0
    scales = torch.where(bad, math.nan, absmax / full127)
    return q.reshape(-1)[:n], scales


def dequantize_int8(q, scales, block, out=None, accumulate=False):
    n = q.numel()
    v = q.float() * scales.repeat_interleave(block)[:n]
    if out is None:
        return v
    out.copy_((out.view(-1) + v).view_as(out) if accumulate else v.view_as(out))
    return out


# ---- one-bit sign with error feedback ------------------------------------------------


def _mean_abs(c, block):
    """mean |c| per block: 16 interleaved float32 partial sums, added in order,
    then combined pairwise (the kernels' order, so CPU scales match exactly)."""
    n = c.numel()
    padded_block = -(-block // 16) * 16
    lanes = F.pad(_blocks(c.abs(), block), (0, padded_block - block)).view(-1, padded_block // 16, 16)
    sums = torch.zeros(lanes.shape[0], 16, dtype=torch.float32, device=c.device)
    for j in range(lanes.shape[1]):
        sums = sums + lanes[:, j]
    while sums.shape[1] > 1:
        half = sums.shape[1] // 2
        sums = sums[:, :half] + sums[:, half:]
    lengths = (n - torch.arange(sums.shape[0], device=c.device) * block).clamp(max=block)
    return sums[:, 0] / lengths.float()


def packbits(flags):
    """bool [n] -> uint8 [ceil(n / 8)], element 8j + b in bit b of byte j."""
    n = flags.numel()
    padded = F.pad(flags.to(torch.uint8), (0, -(-n // 8) * 8 - n)).view(-1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=flags.device)
    return (padded * weights).sum(dim=1, dtype=torch.uint8)


def unpackbits(bits, n):
    """uint8 [..., ceil(n / 8)] -> bool [..., n]."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    flags = (bits.unsqueeze(-1) >> shifts) & 1
    return flags.flatten(-2)[..., :n].bool()


def sign_ef(x, residual, block=DEFAULT_BLOCK):
    c = x.reshape(-1) + residual.reshape(-1)
    scales = _mean_abs(c, block)
    positive = c >= 0
    per_element = scales.repeat_interleave(block)[:c.numel()]
    residual.copy_((c - torch.where(positive, per_element, -per_element)).view_as(residual))
    return packbits(positive), scales


def sign_decode(bits, scales, n, block=DEFAULT_BLOCK, out=None, accumulate=False):
    ranks_bits = bits.reshape(-1, -(-n // 8)) if n else bits.reshape(1, 0)
    ranks_scales = scales.reshape(ranks_bits.shape[0], -1)
    total = out.reshape(-1).clone() if accumulate else torch.zeros(n, dtype=torch.float32, device=bits.device)
    for r in range(ranks_bits.shape[0]):
        positive = unpackbits(ranks_bits[r], n)
        per_element = ranks_scales[r].repeat_interleave(block)[:n]
        total = total + torch.where(positive, per_element, -per_element)
    if out is None:
        return total
    out.copy_(total.view_as(out))
    return out


# ---- sparsification ----------------------------------------------------------------------


def topk_ef(x, residual, k, approx=False):
    """Exact for either value of ``approx`` (the kernel's approximate mode is
    checked by its properties instead). Always ``k`` pairs: zeros of ``c`` are
    never selected, and where ``c`` has fewer than ``k`` non-zero entries the
    free slots (last) hold the pad ``(0, -0.0)``, the residual untouched there."""
    c = x.reshape(-1) + residual.reshape(-1)
    indices = torch.topk(c.abs(), k, sorted=False).indices
    values = c[indices]
    selected = values != 0  # NaN is selected
    order = torch.argsort((~selected).to(torch.uint8), stable=True)  # pads last
    indices, values, selected = indices[order], values[order], selected[order]
    c[indices[selected]] = 0.0
    residual.copy_(c.view_as(residual))
    indices = torch.where(selected, indices, torch.zeros_like(indices))
    values = torch.where(selected, values, torch.full_like(values, -0.0))
    return indices.int(), values


def randomk_indices(n, k, seed, device="cpu"):
    j = torch.arange(k, dtype=torch.int64, device=device)
    begin = j * n // k
    length = (j + 1) * n // k - begin
    draw = mix32(j ^ stream_key(seed, _STREAM_RANDOMK))
    return (begin + ((draw * length) >> 32)).int()


def randomk(x, k, seed):
    indices = randomk_indices(x.numel(), k, seed, x.device)
    return indices, x.reshape(-1)[indices.long()]


def scatter_add(indices, values, out, *, on_invalid="raise"):
    """In input order (``index_add_`` on CPU loops in order). An index outside
    ``[0, out.numel())`` adds nothing and raises, or with ``on_invalid="poison"``
    sets ``out[0]`` to NaN."""
    flat = out.view(-1)
    index = indices.long()
    if bool(((index < 0) | (index >= flat.numel())).any()):
        if on_invalid != "poison":
            raise ValueError(f"indices must lie in [0, {flat.numel()}) (the size of out); some do not")
        if flat.numel():
            flat[0] = math.nan
        return out
    flat.index_add_(0, index, values)
    return out


# ---- test and benchmark inputs -------------------------------------------------------------


def resnet50_shapes(width_divisor=1):
    """Parameter shapes of ResNet-50 (161 tensors, 25.6 M values), with channel
    counts divided by ``width_divisor`` for smaller test inputs."""
    def w(channels):
        return max(1, channels // width_divisor)

    shapes = [(w(64), 3, 7, 7), (w(64),), (w(64),)]
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            out = planes * 4
            shapes += [(w(planes), w(inplanes), 1, 1), (w(planes),), (w(planes),),
                       (w(planes), w(planes), 3, 3), (w(planes),), (w(planes),),
                       (w(out), w(planes), 1, 1), (w(out),), (w(out),)]
            if b == 0:
                shapes += [(w(out), w(inplanes), 1, 1), (w(out),), (w(out),)]
            inplanes = out
    return shapes + [(1000, w(2048)), (1000,)]
