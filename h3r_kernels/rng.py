"""The counter-based random generator behind randomized rounding.

Every backend (this PyTorch reference, the Triton kernels, the CUDA C kernels in
``csrc/``) reproduces these integer operations bit for bit, so the same seed gives
the same targets on every backend, device and block size.

For keypoint ``(b, k)`` and axis ``a`` (0 for x, 1 for y)::

    h = mix32(mix32(mix32(seed ^ 0x9E3779B9) ^ b) ^ (2 * k + a))
    u = (h >> 8) * 2**-24            # a float32 in [0, 1), exactly representable

``mix32`` is the "lowbias32" integer finaliser (C. Wellons): two xor-shift-multiply
rounds on unsigned 32-bit integers. ``seed`` is a 32-bit unsigned integer; ``b`` and
``k`` are the batch and keypoint indices. The draws for ``(b, k)`` do not depend on B
or K, so a sample keeps its draws when the batch is split or the keypoints sliced.
"""
from __future__ import annotations

import torch

SEED_SALT = 0x9E3779B9
MIX_MUL_1 = 0x7FEB352D
MIX_MUL_2 = 0x846CA68B
MASK32 = 0xFFFFFFFF
SEED_LIMIT = 1 << 32


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``(x * constant) mod 2**32`` for int64 tensors holding values in [0, 2**32).

    Split in 16-bit halves so that no int64 product overflows.
    """
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding unsigned 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, MIX_MUL_1)
    x = x ^ (x >> 15)
    x = _mul32(x, MIX_MUL_2)
    return x ^ (x >> 16)


def mix32_int(x: int) -> int:
    """lowbias32 on a Python integer (the same function as :func:`mix32`)."""
    x ^= x >> 16
    x = (x * MIX_MUL_1) & MASK32
    x ^= x >> 15
    x = (x * MIX_MUL_2) & MASK32
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """The first hash of the chain, ``mix32(seed ^ 0x9E3779B9)``: one integer per call."""
    return mix32_int(seed ^ SEED_SALT)


def uniforms(seed: int | torch.Tensor, batch: int, keypoints: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The draws ``u`` as a ``(batch, keypoints, 2)`` float32 tensor in [0, 1), last axis (x, y).

    ``seed``: a Python int, or a 0-d integer tensor on ``device`` whose low 32 bits are the
    seed: then nothing is read on the host (a CUDA graph that captured this re-draws when the
    tensor changes between replays).
    """
    if isinstance(seed, torch.Tensor):
        key = mix32((seed.to(torch.int64) & MASK32) ^ SEED_SALT)
    else:
        key = seed_key(seed)
    b = torch.arange(batch, dtype=torch.int64, device=device).view(batch, 1, 1)
    k = torch.arange(keypoints, dtype=torch.int64, device=device).view(1, keypoints, 1)
    axis = torch.arange(2, dtype=torch.int64, device=device).view(1, 1, 2)
    h = mix32(mix32(key ^ b) ^ (2 * k + axis))
    return (h >> 8).to(torch.float32) * (2.0**-24)


def draw_seed() -> int:
    """A fresh 32-bit seed from torch's default CPU generator (so ``torch.manual_seed`` fixes it)."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "seed=None cannot draw a seed inside CUDA-graph capture (it would be frozen into the graph); "
            "pass a 0-d integer CUDA tensor as seed and change it between replays (or a fixed integer seed)"
        )
    return int(torch.randint(0, SEED_LIMIT, (), dtype=torch.int64).item())
