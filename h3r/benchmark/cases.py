"""The benchmarked cases: the ops and their byte counts, the implementations, the shapes and
dtypes, and :func:`make_call`, one call of an op by an implementation on inputs made outside
the timing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

import h3r_kernels

from . import baselines

KERNEL_BACKENDS = ("reference", "triton", "cuda")
NAIVE = "naive"
CPU_WORKERS = "cpu_workers"
IMPLEMENTATIONS = KERNEL_BACKENDS + (NAIVE, CPU_WORKERS)

# (B, K, H, W): WFLW at 256 px, COCO at 256x192, low resolution, high resolution.
CUDA_SHAPES = ((256, 98, 64, 64), (256, 17, 64, 48), (1024, 98, 16, 16), (64, 98, 128, 128))
CPU_SHAPES = ((8, 17, 16, 16), (4, 98, 16, 16))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_DTYPES = ("float32", "bfloat16")
GAUSSIAN_SIGMA = 2.0  # cells, for encode_gaussian and the CPU Gaussian target
TOPK = 9  # the authors' decoder
SEED = 2021


@dataclass(frozen=True)
class OpSpec:
    """One benchmarked call. Bytes are counted in passes over a ``(B, K, H, W)`` map of the row's dtype.

    ``counted_passes``: the bytes the problem must move (the basis of GB/s and % of copy
    bandwidth); ``op_passes``: the passes the op's structure makes (the fused backends);
    ``cpu_target``: the :mod:`h3r.benchmark.cpu_encoding` target it is compared with, if any.
    """

    name: str
    what: str
    counted_passes: int
    op_passes: int
    passes_note: str
    cpu_target: Optional[str] = None


OPS = {
    spec.name: spec
    for spec in (
        OpSpec("encode", "encode: H3R binary target (sigma 0, random rounding)", 1, 1,
               "write the maps", "random_rounding"),
        OpSpec("encode_expected", "encode: expected=True, the bilinear expectation of the rounding", 1, 1,
               "write the maps"),
        OpSpec("encode_gaussian", f"encode: Gaussian, sigma {GAUSSIAN_SIGMA:g} cells, at the nearest cell", 1, 1,
               "write the maps", "gaussian"),
        OpSpec("heatmap_loss", "heatmap_loss: BCE, sigma 0, random rounding, mean; forward + backward", 2, 4,
               "counted: read logits + write their gradient; the op makes 4: the forward reads logits and "
               "writes the saved per-pixel gradient, the backward reads it and writes grad_logits"),
        OpSpec("decode", f"decode: top-{TOPK}, softmax weights; forward", 1, 1, "read the maps once"),
        OpSpec("decode_fwd_bwd", f"decode: top-{TOPK}, softmax weights; forward + backward of coords", 2, 2,
               "counted: read the maps + write their gradient (plus a gather of the selected cells)"),
    )
}

IMPLEMENTATION_NOTES = {
    "reference": "h3r_kernels backend 'reference': plain vectorised PyTorch (the executable spec)",
    "triton": "h3r_kernels backend 'triton': fused Triton kernels",
    "cuda": "h3r_kernels backend 'cuda': fused CUDA C kernels through CuPy",
    NAIVE: "naive eager PyTorch (h3r/benchmark/baselines.py): encode = scatter_ of a randomized-rounding one-hot, "
    "encode_expected = dense bilinear triangle weights, encode_gaussian = separable full-grid Gaussian, "
    "heatmap_loss = one-hot target + F.binary_cross_entropy_with_logits + backward, decode = torch.topk "
    "k=9 -> softmax -> weighted index mean (the authors' released decoder), decode_fwd_bwd = its autograd",
    CPU_WORKERS: "per-sample NumPy targets in DataLoader workers (h3r/benchmark/cpu_encoding.py), float32 maps, "
    "randomized-rounding one-hot for encode and HRNet's 3-sigma patch paste for encode_gaussian; "
    "on CUDA the time includes the pinned, non_blocking host-to-device copy; bf16 rows compare with it too",
}


ENCODE_OPTIONS = {
    "encode": dict(sigma=0.0, rounding="random"),
    "encode_expected": dict(sigma=0.0, rounding="random", expected=True),
    "encode_gaussian": dict(sigma=GAUSSIAN_SIGMA, rounding="nearest"),
}


def make_call(op: str, impl: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Callable[[], object]:
    """A no-argument function running ``op`` once with ``impl`` (a kernel backend or ``naive``).

    Its inputs are made here, outside the timing: keypoints uniform on the map, logits and
    heatmaps standard normal in ``dtype``. The loss call clears ``logits.grad`` and runs the
    backward; ``decode_fwd_bwd`` returns the gradient of the coordinates (an all-ones seed).
    """
    if op not in OPS:
        raise ValueError(f"op: expected one of {', '.join(OPS)}, got {op!r}")
    if impl not in KERNEL_BACKENDS + (NAIVE,):
        raise ValueError(f"impl: expected one of {', '.join(KERNEL_BACKENDS + (NAIVE,))}, got {impl!r}")
    batch, num, height, width = shape
    generator = torch.Generator(device=device).manual_seed(0)
    limits = torch.tensor([width - 1, height - 1], dtype=torch.float32, device=device)
    keypoints = torch.rand(batch, num, 2, generator=generator, device=device) * limits

    if op in ENCODE_OPTIONS:
        if impl == NAIVE:
            naive = {
                "encode": lambda: baselines.random_rounding_one_hot(keypoints, height, width, dtype),
                "encode_expected": lambda: baselines.dense_bilinear_expected(keypoints, height, width, dtype),
                "encode_gaussian": lambda: baselines.dense_gaussian(keypoints, height, width, GAUSSIAN_SIGMA, dtype),
            }
            return naive[op]
        options = ENCODE_OPTIONS[op]
        return lambda: h3r_kernels.encode(keypoints, (height, width), seed=SEED, dtype=dtype, backend=impl, **options)

    maps = torch.randn(tuple(shape), generator=generator, device=device).to(dtype)
    if op == "heatmap_loss":
        logits = maps.requires_grad_()

        def loss_step():
            logits.grad = None
            if impl == NAIVE:
                value = baselines.one_hot_bce_loss(logits, keypoints)
            else:
                value = h3r_kernels.heatmap_loss(logits, keypoints, seed=SEED, backend=impl)
            value.backward()

        return loss_step

    def run_decode():
        if impl == NAIVE:
            return baselines.topk_decode(maps, TOPK)
        return h3r_kernels.decode(maps, method="topk", k=TOPK, weights="softmax", backend=impl)

    if op == "decode":
        return run_decode
    maps.requires_grad_()

    def decode_step():
        coords, _ = run_decode()
        return torch.autograd.grad(coords, maps, grad_outputs=torch.ones_like(coords))

    return decode_step


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)
