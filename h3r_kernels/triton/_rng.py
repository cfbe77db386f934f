"""The counter-based generator of :mod:`h3r_kernels.rng` as ``@triton.jit`` functions.

Bit for bit the same integer operations (uint32, wrapping multiplies, logical shifts), so a
Triton kernel draws exactly the ``u`` of the reference for the same ``(seed, b, k, axis)``,
whatever its block sizes. The functions work on scalars and on blocks alike.
"""
import triton
import triton.language as tl

from .. import rng

SEED_SALT = tl.constexpr(rng.SEED_SALT)
MIX_MUL_1 = tl.constexpr(rng.MIX_MUL_1)
MIX_MUL_2 = tl.constexpr(rng.MIX_MUL_2)


def seed_as_int32(seed: int) -> int:
    """The 32-bit seed as a signed int32 with the same bits, so every seed uses one compiled kernel.

    Triton types a Python int argument by its value (int32 below 2**31, uint32 above); the
    kernels take an int32 and reinterpret it with :func:`seed_key`.
    """
    return seed - (1 << 32) if seed >= (1 << 31) else seed


@triton.jit
def mix32(x):
    """lowbias32 on uint32 values."""
    x = x ^ (x >> 16)
    x = x * MIX_MUL_1
    x = x ^ (x >> 15)
    x = x * MIX_MUL_2
    return x ^ (x >> 16)


@triton.jit
def seed_key(seed):
    """``mix32(seed ^ SEED_SALT)`` (uint32) from the int32 passed by :func:`seed_as_int32`."""
    return mix32(seed.to(tl.uint32, bitcast=True) ^ SEED_SALT)


@triton.jit
def uniform(key, b, k, axis: tl.constexpr):
    """The draw ``u`` in [0, 1) (float32) of keypoint ``(b, k)`` on ``axis`` (0: x, 1: y).

    ``key`` is :func:`seed_key`; ``b`` and ``k`` are non-negative int32 indices.
    """
    h = mix32(mix32(key ^ b.to(tl.uint32)) ^ (2 * k + axis).to(tl.uint32))
    return (h >> 8).to(tl.float32) * 5.9604644775390625e-08  # 2**-24: exact
