"""Framework-neutral argument checks and constants of the kernel ops, shared by
the torch (:mod:`hvdkit.ops`) and TensorFlow (:mod:`hvdkit.kernels.tf_ops`)
wrappers so that both accept the same arguments and word errors the same way.
Each check raises ``TypeError`` or ``ValueError`` naming the argument."""
import math

# The public names of both kernel wrappers (hvdkit.kernels.torch_ops and tf_ops): same ops, same arguments.
PUBLIC_NAMES = ["DEFAULT_BLOCK", "backends", "set_cpu_isa", "pack", "unpack", "cast", "quantize_int8",
                "dequantize_int8", "sign_ef", "sign_decode", "topk_ef", "topk_approx_floor", "scatter_add", "randomk"]

DEFAULT_BLOCK = 1024
# Indices are int32 on the wire.
MAX_ELEMENTS = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38


def topk_approx_floor(k):
    """The fewest entries ``topk_ef(..., approx=True)`` selects for ``k``
    (given that many non-zero entries of ``x + residual``); its payload always
    holds ``k`` pairs, the slots not selected padded with ``(0, -0.0)``."""
    return (k + 1) // 2


def check_int(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bounds}, got {value}")
    return value


def check_block(block, multiple_of_8=False):
    check_int("block", block, 1)
    if multiple_of_8 and block % 8:
        raise ValueError(f"block must be a multiple of 8 (whole bytes of sign bits), got {block}")
    return block


def check_scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    if not math.isfinite(scale) or abs(scale) > FLOAT32_MAX:
        raise ValueError(f"scale must be a finite float32 value, got {scale}")
    return float(scale)


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


ON_INVALID = ("raise", "poison")


def check_on_invalid(on_invalid):
    """What scatter_add does with an out-of-range index: ``"raise"`` or ``"poison"``.
    Returns True for ``"poison"``."""
    if not isinstance(on_invalid, str):
        raise TypeError(f"on_invalid must be a str, got {type(on_invalid).__name__}")
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be 'raise' or 'poison', got {on_invalid!r}")
    return on_invalid == "poison"


def seed64(seed):
    """Any int -> the signed int64 with the same low 64 bits (what the ops take)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed &= 2**64 - 1
    return seed - 2**64 if seed >= 2**63 else seed


def run_or_explain(run, explain, refused):
    """``run()``; when it raises one of ``refused`` (the kernel's own checks said no), ``explain()``
    runs the per-argument checks, which raise the error naming the bad argument; if they find
    nothing, the kernel's error goes on."""
    try:
        return run()
    except refused:
        explain()
        raise
