"""The Triton kernels of the device augmentation (h3r/warp_triton.py) against their spec, the
PyTorch operations of h3r/augment.py.

The warp bit for bit, in exact (float64) and float32 modes: single items (regions of random
images under random rotations, scales, shifts and flips, boxes past the edges), a padded batch
of regions, an image cache read in place through ``rows``, the defaults. The finishing kernel
(colour jitter, normalisation) bit for bit without jitter, within float32 rounding of the mean
grey with it; whole ``DeviceAugment`` batches. On the CPU the kernels run in Triton's interpreter
(``TRITON_INTERPRET=1``, conftest.py); the same tests run on CUDA where there is one (marker
``gpu``). The GPU's arithmetic equals the interpreter's only without fused multiply-adds and with
IEEE divisions: a compile for sm_90 (no GPU needed) checks both.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from h3r.augment import (DeviceAugment, DeviceCropDataset, _random_affine_cases, collate, read_region,
                         warp_bilinear)
from h3r.data import open_dataset
from h3r.transforms import CropConfig, _pillow_affine_data, crop_affine

from conftest import why_not

REPO = Path(__file__).resolve().parent.parent
# the kernel on CPU tensors: Triton's interpreter (set by conftest.py where there is no GPU)
interpreted = pytest.mark.skipif(why_not("triton", "cpu") is not None, reason=str(why_not("triton", "cpu")))
DEVICES = [pytest.param("cpu", marks=interpreted), pytest.param("cuda", marks=pytest.mark.gpu)]
MODES = [pytest.param(True, id="exact"), pytest.param(False, id="float32")]


def both_backends(pixels, pillow, size, **options):
    """The warp by PyTorch and by the Triton kernel, which must be equal; returns it."""
    expected = warp_bilinear(pixels, pillow, size, backend="torch", **options)
    got = warp_bilinear(pixels, pillow, size, backend="triton", **options)
    assert got.dtype == torch.uint8 and got.shape == expected.shape and got.is_contiguous()
    assert got.device == pixels.device
    difference = (got.int() - expected.int()).abs()
    assert torch.equal(got, expected), f"{int((difference > 0).sum())} values differ, by up to {int(difference.max())}"
    return got


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("exact", MODES)
def test_single_items_equal_the_spec(device, exact):
    for image, box, size, augmentation in _random_affine_cases(20, seed=21):
        affine = crop_affine(box, size, 1.25, **augmentation)
        pillow = _pillow_affine_data(affine)
        x0, y0, x1, y1 = read_region(pillow, size, image.shape[1], image.shape[0])
        region = torch.from_numpy(np.ascontiguousarray(image[y0:y1 + 1, x0:x1 + 1]))[None].to(device)
        both_backends(region, torch.tensor([pillow], dtype=torch.float64, device=device), size, exact=exact,
                      image_size=torch.tensor([image.shape[1::-1]], device=device),
                      origin=torch.tensor([[x0, y0]], device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("exact", MODES)
def test_padded_batch_of_regions_equals_the_spec(device, exact):
    """Regions of different sizes zero-padded to one batch (the padding holds 77: never read)."""
    cases = list(_random_affine_cases(7, seed=8))
    size = 20
    regions, pillows, origins, image_sizes = [], [], [], []
    for image, box, _, augmentation in cases:
        pillow = _pillow_affine_data(crop_affine(box, size, 1.25, **augmentation))
        x0, y0, x1, y1 = read_region(pillow, size, image.shape[1], image.shape[0])
        regions.append(image[y0:y1 + 1, x0:x1 + 1])
        pillows.append(pillow), origins.append((x0, y0)), image_sizes.append(image.shape[1::-1])
    pixels = torch.full((len(regions), max(r.shape[0] for r in regions), max(r.shape[1] for r in regions), 3), 77,
                        dtype=torch.uint8)
    for row, region in enumerate(regions):
        pixels[row, :region.shape[0], :region.shape[1]] = torch.from_numpy(np.ascontiguousarray(region))
    out = both_backends(pixels.to(device), torch.tensor(pillows, dtype=torch.float64, device=device), size, exact=exact,
                        image_size=torch.tensor(image_sizes, device=device), origin=torch.tensor(origins, device=device),
                        region_size=torch.tensor([r.shape[1::-1] for r in regions], device=device))
    assert out.shape == (len(regions), 3, size, size)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("exact", MODES)
def test_rows_read_an_image_cache_in_place(device, exact):
    """``rows``: item b warps ``pixels[rows[b]]`` (repeats, any order): the same as gathering the rows first."""
    generator = torch.Generator().manual_seed(2)
    cache = torch.randint(0, 256, (6, 19, 23, 3), generator=generator, dtype=torch.uint8).to(device)
    rows = torch.tensor([5, 0, 5, 2, 3], device=device)
    affines = [crop_affine((1, 2, 20, 16), 14, 1.25, rotation=float(angle), scale=0.8 + angle / 200, flip=angle > 10)
               for angle in (-50, -10, 0, 25, 70)]
    pillow = torch.tensor([_pillow_affine_data(affine) for affine in affines], dtype=torch.float64, device=device)
    whole = torch.tensor([[23, 19]] * 5, device=device)
    in_place = both_backends(cache, pillow, 14, rows=rows, image_size=whole, exact=exact)
    gathered = warp_bilinear(cache.index_select(0, rows), pillow, 14, image_size=whole, exact=exact, backend="torch")
    assert torch.equal(in_place, gathered)


@pytest.mark.parametrize("device", DEVICES)
def test_defaults_and_an_empty_batch(device):
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (3, 9, 13, 3), generator=generator, dtype=torch.uint8).to(device)
    pillow = torch.tensor([[0.7, 0.2, -1.0, -0.1, 0.9, 0.5], [1, 0, 0, 0, 1, 0], [2.5, 0, -3, 0, 2.5, -3]],
                          dtype=torch.float64, device=device)
    both_backends(pixels, pillow, 11)  # image and region: the padded size, origin 0
    both_backends(pixels, pillow, 11, region_size=torch.tensor([7, 5], device=device))  # one size for every item
    empty = both_backends(pixels[:0], pillow[:0], 11)
    assert empty.shape == (0, 3, 11, 11)


@interpreted
def test_a_region_larger_than_the_padded_batch_reads_nothing_outside_it():
    """region_size past the padded pixels is clamped to them (no read leaves the item's pixels)."""
    pixels = torch.arange(2 * 4 * 5 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 4, 5, 3)
    pillow = torch.tensor([[1.0, 0, 3, 0, 1.0, 2]] * 2, dtype=torch.float64)
    options = dict(image_size=torch.tensor([[50, 40]] * 2), region_size=torch.tensor([[5, 4], [5, 4]]))
    expected = warp_bilinear(pixels, pillow, 6, backend="triton", **options)
    too_large = warp_bilinear(pixels, pillow, 6, backend="triton", **{**options, "region_size": torch.tensor([[9, 8]] * 2)})
    assert torch.equal(too_large, expected)


@pytest.fixture(scope="module")
def faces():
    return open_dataset("synthetic-face", split="train", size=10, image_size=64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cached", [False, True], ids=["regions", "cache"])
def test_device_augment_batches_equal_the_spec(faces, device, cached):
    crop = CropConfig(input_size=40, rotation=30.0, scale_jitter=0.25, translate=0.1, flip_prob=0.5, colour_jitter=0.3)
    crops = DeviceCropDataset(faces, crop, seed=9, cached_pixels=cached)
    images = faces.image_cache if cached else None
    items = [crops[(1, position)] for position in range(len(faces))]
    items[0]["jittered"] = items[5]["jittered"] = False
    batch = collate(items)
    by_torch = DeviceAugment(crop, faces.flip_pairs, device, images=images, backend="torch")(batch)
    by_triton = DeviceAugment(crop, faces.flip_pairs, device, images=images, backend="triton")(batch)
    for key in ("keypoints", "visible", "affine", "flipped", "index"):
        assert torch.equal(by_triton[key], by_torch[key]), key
    assert_finished_alike(by_triton["image"], by_torch["image"], batch["jittered"], crop.std)


def assert_finished_alike(got: torch.Tensor, expected: torch.Tensor, jittered: torch.Tensor, std) -> None:
    """Bit for bit where an item has no colour jitter; with one, within float32 rounding of its
    mean grey (summed in another order): 4e-7 in [0, 1] units (1 level = 3.9e-3)."""
    assert got.dtype == torch.float32 and got.shape == expected.shape and got.is_contiguous()
    plain = ~jittered.to(got.device)
    assert torch.equal(got[plain], expected[plain])
    scale = torch.tensor(std, device=got.device).view(1, 3, 1, 1)
    assert float(((got - expected) * scale).abs().max()) <= 4e-7


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [16, 33, 40])  # 33 x 33 = 1,089 pixels: a whole and a partial block of 1,024
def test_finishing_kernel_equals_the_spec(device, size):
    """uint8 crops -> [0, 1] -> colour jitter where asked -> normalised, against the PyTorch operations."""
    from h3r import warp_triton
    from h3r.augment import jitter_colours

    generator = torch.Generator().manual_seed(size)
    crops = torch.randint(0, 256, (6, 3, size, size), generator=generator, dtype=torch.uint8).to(device)
    crops[1] = 255  # saturated: the clamp
    factors = (0.6 + 0.8 * torch.rand(6, 3, generator=generator)).to(device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    for jittered in ([True, True, False, True, False, True], [False] * 6):
        jittered = torch.tensor(jittered, device=device)
        images = crops.float().mul_(1 / 255)
        expected = torch.where(jittered.view(-1, 1, 1, 1), jitter_colours(images, factors), images).sub_(mean).div_(std)
        got = warp_triton.finish(crops, factors, jittered, mean, std)
        assert_finished_alike(got, expected, jittered, std.flatten().tolist())


@pytest.mark.gpu
def test_auto_runs_the_kernel_on_cuda(monkeypatch):
    from h3r import warp_triton

    calls = []
    real = warp_triton.warp
    monkeypatch.setattr(warp_triton, "warp", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    pixels = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    pillow = torch.tensor([[1.0, 0, 0, 0, 1.0, 0]], dtype=torch.float64)
    warp_bilinear(pixels.cuda(), pillow.cuda(), 4)
    assert calls == [1]
    warp_bilinear(pixels, pillow, 4)  # CPU tensors: PyTorch, also where the interpreter could run the kernel
    assert calls == [1]


@interpreted
def test_bad_backends_and_rows(faces, monkeypatch):
    pixels = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    pillow = torch.zeros(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="backend: expected one of auto, torch, triton, got 'cupy'"):
        warp_bilinear(pixels, pillow, 4, backend="cupy")
    with pytest.raises(ValueError, match="backend: expected one of"):
        DeviceAugment(CropConfig(input_size=8), backend="fast")
    with pytest.raises(ValueError, match=r"rows must be \(B,\) integers"):
        warp_bilinear(pixels, pillow, 4, rows=torch.zeros(2))
    with pytest.raises(ValueError, match=r"pillow must be \(B, 6\) = \(3, 6\)"):
        warp_bilinear(pixels, pillow, 4, rows=torch.zeros(3, dtype=torch.int64))
    huge = torch.zeros(1, 1, 1, 3, dtype=torch.uint8).expand(1, 2**16, 2**15, 3)  # 6 GiB, never allocated
    with pytest.raises(ValueError, match=r"under 2\*\*31 bytes each, got \(65536, 32768, 3\) and size 4; use backend='torch'"):
        warp_bilinear(huge, pillow[:1], 4, backend="triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' cannot run here: cpu tensors"):
        warp_bilinear(pixels, pillow, 4, backend="triton")
    assert warp_bilinear(pixels, pillow, 4).shape == (2, 3, 4, 4)  # auto: PyTorch


def test_rows_outside_the_cache_are_refused(faces):
    crop = CropConfig(input_size=16)
    augment = DeviceAugment(crop, faces.flip_pairs, images=faces.image_cache)
    items = [DeviceCropDataset(faces, crop, seed=0, cached_pixels=True)[i] for i in range(2)]
    for rows, message in (([0, len(faces)], r"rows must lie in \[0, 10\) of the image cache, got 0\.\.10"),
                          ([-1, 0], "got -1..0")):
        with pytest.raises(IndexError, match=message):
            augment(collate([{**item, "index": row} for item, row in zip(items, rows)]))


def test_no_fused_multiply_add_on_the_gpu():
    """Compiled for sm_90 without a GPU (a subprocess: interpreted kernels are not compiled): no
    ``fma`` in the PTX nor ``FFMA``/``DFMA`` in the SASS of the warp (either mode, both layouts), no
    ``fma`` in the PTX of the finishing kernel, whose divisions are IEEE ones; the warp compiled
    with contraction allowed does have them (the check can fail)."""
    script = """
import re, torch
from h3r import warp_triton
from h3r.benchmark import sass
kernel = warp_triton._warp_kernel
def compile_warp(exact, rows, fusion=False):
    with sass.compile_only(90) as compiled:
        if fusion:  # the control: the same kernel with contraction allowed
            compile_run = type(kernel).run
            kernel.run = lambda *args, **kwargs: compile_run(kernel, *args, **{**kwargs, "enable_fp_fusion": True})
        try:
            warp_triton.warp(torch.zeros(4, 40, 40, 3, dtype=torch.uint8), torch.zeros(4, 6, dtype=torch.float64), 64,
                             torch.full((4, 2), 40), torch.zeros(4, 2, dtype=torch.int64), torch.full((4, 2), 40),
                             exact, torch.zeros(4, dtype=torch.int64) if rows else None)
        finally:
            vars(kernel).pop("run", None)
    (compiled_kernel,) = [entry[1] for entry in compiled]
    return contractions(compiled_kernel)
def contractions(compiled_kernel):
    listing = sass.cuobjdump(compiled_kernel.asm["cubin"], "-sass")
    return len(re.findall(r"\\bfma\\.", compiled_kernel.asm["ptx"])), len(re.findall(r"\\b[DF]FMA\\b", listing))
with sass.compile_only(90) as compiled:
    warp_triton.finish(torch.zeros(4, 3, 64, 64, dtype=torch.uint8), torch.ones(4, 3), torch.ones(4, dtype=torch.bool),
                       torch.zeros(3), torch.ones(3))
(finishing,) = [entry[1] for entry in compiled]
divisions = sorted(set(re.findall(r"\\bdiv\\.[a-z]+\\.f32", finishing.asm["ptx"])))
print([compile_warp(exact, rows) for exact in (True, False) for rows in (False, True)] + [contractions(finishing)],
      divisions, compile_warp(True, False, True))
"""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    unfused, divisions, control = re.fullmatch(r"(\[.*\]) (\[.*\]) (\(.*\))", result.stdout.strip()).groups()
    # the finishing kernel's SASS has FFMAs: those of the correctly rounded division's own routine
    assert re.fullmatch(r"\[(\(0, 0\), ){4}\(0, \d+\)\]", unfused), result.stdout
    assert divisions == "['div.rn.f32']", result.stdout  # IEEE, as PyTorch's (`/` would give div.full.f32)
    ptx_fma, sass_fma = (int(n) for n in re.findall(r"\d+", control))
    assert ptx_fma > 0 and sass_fma > 0, result.stdout


@interpreted
def test_the_augment_command_measures_each_backend(capsys):
    from h3r.augment import main

    results = main(["--device", "cpu", "--cases", "3", "--batch", "2", "--size", "16", "--repeats", "1",
                    "--backends", "torch, triton"])
    assert set(results) == {f"{kind} {backend} {mode}" for kind in ("equivalence", "throughput")
                            for backend in ("torch", "triton") for mode in ("exact", "float32")}
    assert results["equivalence triton exact"]["max_levels"] == 0 and results["equivalence torch exact"]["max_levels"] == 0
    assert results["throughput triton float32"]["backend"] == "triton"
    assert "cpu triton exact  " in capsys.readouterr().out
    assert set(main(["--device", "cpu", "--cases", "0", "--batch", "2", "--size", "8", "--repeats", "1"])) == {
        "throughput auto exact", "throughput auto float32"}
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--backends", "torch,cuda"])
    assert "--backends cuda: backend: expected one of auto, torch, triton, got 'cuda'" in capsys.readouterr().err
