"""On-device augmentation (h3r/augment.py) against the CPU path (h3r/transforms.py, Pillow).

The warp must equal Pillow's bilinear AFFINE transform (exact mode: bit for bit; float32
mode: within one level, 1/255), and a whole training batch must equal the CPU path's
``CropDataset`` batch for the same seeds: images within 1/255 (in [0, 1] units, before
normalisation), the same keypoints, visibility, affines and flips, bit for bit.
The same checks run on CUDA where there is a device (marker ``gpu``).
"""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from h3r.augment import (DeviceAugment, DeviceCropDataset, _random_affine_cases, augment_from_seeds, collate,
                         measure_equivalence, read_region, warp_bilinear)
from h3r.data import open_dataset
from h3r.evaluate import CropDataset
from h3r.transforms import CropConfig, _pillow_affine_data, crop_affine

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
LEVEL = 1 / 255


def pillow_warp(image: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    return np.array(Image.fromarray(image).transform((size, size), Image.Transform.AFFINE, _pillow_affine_data(affine),
                                                     resample=Image.Resampling.BILINEAR))


def device_warp(image: np.ndarray, affine: np.ndarray, size: int, device: str, exact: bool, region: bool = True):
    height, width = image.shape[:2]
    pillow = _pillow_affine_data(affine)
    x0, y0, x1, y1 = read_region(pillow, size, width, height) if region else (0, 0, width - 1, height - 1)
    pixels = torch.from_numpy(np.ascontiguousarray(image[y0:y1 + 1, x0:x1 + 1]))[None].to(device)
    out = warp_bilinear(pixels, torch.tensor([pillow], dtype=torch.float64), size,
                        image_size=torch.tensor([[width, height]]), origin=torch.tensor([[x0, y0]]), exact=exact)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, size, size)
    return out[0].permute(1, 2, 0).cpu().numpy()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "float32"])
def test_warp_equals_pillow(device, exact):
    """Random images, boxes (some past the image edges), rotations, scales, shifts and flips."""
    stats = measure_equivalence(device, exact=exact, count=40, seed=1)
    print(f"\n{device} {'exact' if exact else 'float32'}: {stats}")
    if exact:
        assert stats["max_levels"] == 0
    else:
        assert stats["max_levels"] <= 1 and stats["differing_fraction"] < 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_warp_edges_fill_and_clamp(device):
    """Half-pixel border (edge pixels repeat), zero fill beyond it, identity and integer shifts."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(7, 11, 3), dtype=np.uint8)
    cases = [
        np.array([[1.0, 0, 0], [0, 1.0, 0]]),  # identity on an 11x11 output: rows 7..10 are zero
        np.array([[1.0, 0, 2], [0, 1.0, -1]]),  # integer shift
        np.array([[1.0, 0, 0.25], [0, 1.0, 0.5]]),  # quarter / half pixel: reads the clamped border
        np.array([[0.5, 0, 0.0], [0, 0.5, 0.0]]),  # up-sampling past the edge
        np.array([[3.0, 0, -4.0], [0, 3.0, -4.0]]),  # down-sampling, output beyond the image
        np.array([[-1.0, 0, 10.0], [0, 1.0, 0]]),  # mirror
    ]
    for affine in cases:
        expected = pillow_warp(image, affine, 11).astype(np.int64)
        np.testing.assert_array_equal(device_warp(image, affine, 11, device, True), expected, err_msg=f"{affine}")
        # float32: a value that is an integer in exact arithmetic may truncate one level lower or higher
        float32 = device_warp(image, affine, 11, device, False).astype(np.int64)
        assert np.abs(float32 - expected).max() <= 1, affine
    identity = device_warp(image, cases[0], 11, device, True)
    np.testing.assert_array_equal(identity[:7], image)
    assert not identity[7:].any()


@pytest.mark.parametrize("device", DEVICES)
def test_region_cut_equals_the_whole_image(device):
    """The worker ships only the region the warp reads: same result as warping the whole image."""
    for image, box, size, augmentation in _random_affine_cases(15, seed=5):
        affine = crop_affine(box, size, 1.25, **augmentation)
        whole = device_warp(image, affine, size, device, True, region=False)
        np.testing.assert_array_equal(device_warp(image, affine, size, device, True), whole)


def test_warp_batch_of_padded_regions_equals_items_one_by_one():
    cases = list(_random_affine_cases(6, seed=7))
    size = 24
    items = []
    for image, box, _, augmentation in cases:
        affine = crop_affine(box, size, 1.25, **augmentation)
        pillow = _pillow_affine_data(affine)
        x0, y0, x1, y1 = read_region(pillow, size, image.shape[1], image.shape[0])
        items.append((np.ascontiguousarray(image[y0:y1 + 1, x0:x1 + 1]), pillow, (x0, y0), image.shape[1::-1],
                      pillow_warp(image, affine, size)))
    height = max(item[0].shape[0] for item in items)
    width = max(item[0].shape[1] for item in items)
    pixels = torch.full((len(items), height, width, 3), 77, dtype=torch.uint8)  # padding must never be read
    for row, item in enumerate(items):
        pixels[row, :item[0].shape[0], :item[0].shape[1]] = torch.from_numpy(item[0])
    out = warp_bilinear(pixels, torch.tensor([item[1] for item in items], dtype=torch.float64), size,
                        image_size=torch.tensor([item[3] for item in items]),
                        origin=torch.tensor([item[2] for item in items]),
                        region_size=torch.tensor([[item[0].shape[1], item[0].shape[0]] for item in items]))
    for row, item in enumerate(items):
        np.testing.assert_array_equal(out[row].permute(1, 2, 0).numpy(), item[4])


def test_warp_rejects_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        warp_bilinear(torch.zeros(1, 4, 4, 3), torch.zeros(1, 6, dtype=torch.float64), 4)
    with pytest.raises(ValueError, match=r"\(B, 6\)"):
        warp_bilinear(torch.zeros(2, 4, 4, 3, dtype=torch.uint8), torch.zeros(1, 6, dtype=torch.float64), 4)


# ----------------------------------------------------------------------------------------------
# Whole batches against the CPU path.

CROP = CropConfig(input_size=48, rotation=30.0, scale_jitter=0.25, translate=0.1, flip_prob=0.5, colour_jitter=0.3)


@pytest.fixture(scope="module")
def faces():
    return open_dataset("synthetic-face", split="train", size=12, image_size=72)


def compare_batches(cpu: dict, device: dict, crop: CropConfig, exact: bool) -> dict:
    mean = torch.tensor(crop.mean).view(1, 3, 1, 1)
    std = torch.tensor(crop.std).view(1, 3, 1, 1)
    assert device["image"].shape == cpu["image"].shape and device["image"].dtype == torch.float32
    assert device["image"].is_contiguous()  # as the CPU batch: a channels-last batch changes the model's rounding
    unit_cpu = cpu["image"] * std + mean  # [0, 1] units, as the jitter left them
    unit_device = device["image"].cpu() * std + mean
    error = (unit_device - unit_cpu).abs()
    # exact: the warp is bit-identical and the rest differs by float32 rounding (reduction order of the mean
    # grey); float32: a warped pixel may move one level, which the contrast and saturation factors scale.
    allowed = 1e-5 if exact else LEVEL * (1 + crop.colour_jitter) ** 2 + 1e-5
    assert float(error.max()) <= allowed
    assert device["keypoints"].dtype == torch.float32
    assert torch.equal(device["keypoints"].cpu(), cpu["keypoints"])  # moved by the workers, as the CPU path does
    assert torch.equal(device["visible"].cpu(), cpu["visible"])
    assert torch.equal(device["affine"].cpu(), cpu["affine"])
    assert torch.equal(device["flipped"].cpu(), torch.as_tensor(cpu["flipped"]))
    return {"image_max": float(error.max()), "image_mean": float(error.mean())}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "float32"])
def test_training_batch_equals_cpu_path(faces, device, exact):
    cpu_crops = CropDataset(faces, CROP, seed=11)
    device_crops = DeviceCropDataset(faces, CROP, seed=11)
    augment = DeviceAugment(CROP, faces.flip_pairs, device, exact=exact)
    flips = 0
    for epoch in (0, 3):
        cpu_crops.epoch = device_crops.epoch = epoch
        cpu = default_collate([cpu_crops[i] for i in range(len(faces))])
        out = augment(collate([device_crops[i] for i in range(len(faces))]))
        assert str(out["image"].device).startswith(device)
        stats = compare_batches(cpu, out, CROP, exact)
        print(f"\n{device} {'exact' if exact else 'float32'} epoch {epoch}: {stats}")
        assert torch.equal(out["index"], cpu["index"])
        flips += int(cpu["flipped"].sum())
    assert 0 < flips < 2 * len(faces)  # both branches of the flip were exercised


@pytest.mark.parametrize("device", DEVICES)
def test_plain_crop_without_seed(faces, device):
    """seed=None: no augmentation, no jitter (and no clamp), as the evaluation crop."""
    crop = CropConfig(input_size=40, colour_jitter=0.5, rotation=20)
    cpu = default_collate([CropDataset(faces, crop)[i] for i in range(4)])
    out = DeviceAugment(crop, faces.flip_pairs, device)(collate([DeviceCropDataset(faces, crop)[i] for i in range(4)]))
    compare_batches(cpu, out, crop, exact=True)


def test_loader_with_workers_and_seeds_api(faces):
    """Through a DataLoader (2 workers, pinned collate) and through augment_from_seeds: same batch."""
    device_crops = DeviceCropDataset(faces, CROP, seed=5, indices=range(8))
    device_crops.epoch = 2
    loader = DataLoader(device_crops, batch_size=8, num_workers=2, collate_fn=DeviceCropDataset.collate)
    augment = DeviceAugment(CROP, faces.flip_pairs)
    out = augment(next(iter(loader)))
    cpu_crops = CropDataset(faces, CROP, seed=5)
    cpu_crops.epoch = 2
    cpu = default_collate([cpu_crops[i] for i in range(8)])
    compare_batches(cpu, out, CROP, exact=True)

    samples = [faces[i] for i in range(8)]
    seeded = augment_from_seeds(augment, [s.image() for s in samples], [s.box for s in samples],
                                [s.keypoints for s in samples], [s.visible for s in samples],
                                [[5, 2, i] for i in range(8)])
    for key in ("image", "keypoints", "visible", "affine", "flipped"):
        assert torch.equal(seeded[key], out[key]), key


def test_items_check_their_inputs(faces):
    crops = DeviceCropDataset(faces, CROP, seed=0)
    sample = faces[0]
    with pytest.raises(ValueError, match="uint8 RGB"):
        from h3r.augment import make_item
        make_item(crops.transform, sample.image().astype(np.float32), sample.box, sample.keypoints, sample.visible,
                  None)
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        make_item(crops.transform, sample.image(), sample.box, sample.keypoints[:, :1], sample.visible, None)


def test_warp_in_chunks_equals_one_pass():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (5, 20, 30, 3), generator=generator, dtype=torch.uint8)
    affines = [crop_affine((3, 2, 25, 17), 12, 1.25, rotation=float(angle), flip=angle > 0) for angle in range(-40, 60, 20)]
    pillow = torch.tensor([_pillow_affine_data(affine) for affine in affines], dtype=torch.float64)
    sizes = torch.tensor([[30, 20], [25, 18], [30, 20], [11, 9], [30, 20]])
    whole = warp_bilinear(pixels, pillow, 12, region_size=sizes, image_size=sizes)
    for chunk in (1, 144, 2 * 144, 3 * 144 + 5):
        parts = warp_bilinear(pixels, pillow, 12, region_size=sizes, image_size=sizes, chunk_pixels=chunk)
        assert torch.equal(parts, whole), chunk
    assert whole.is_contiguous() and whole.shape == (5, 3, 12, 12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "float32"])
def test_cached_pixels_give_the_batches_of_the_regions(faces, device, exact):
    """A dataset with an image cache sends no pixels: the warp reads the device's copy of the
    cache, and the batch is the one the regions give, bit for bit."""
    regions = DeviceCropDataset(faces, CROP, seed=4)
    cached = DeviceCropDataset(faces, CROP, seed=4, cached_pixels=True)
    augment = DeviceAugment(CROP, faces.flip_pairs, device, exact=exact, images=faces.image_cache)
    for epoch in (0, 1):
        positions = [(epoch, position) for position in range(len(faces))]
        items = [cached[key] for key in positions]
        assert "pixels" not in items[0]
        expected = augment(collate([regions[key] for key in positions]))
        batch = collate(items)
        # every field a view of one buffer: one pinned allocation and one copy to the device
        assert all(batch[name].untyped_storage().data_ptr() == batch.buffer.data_ptr() for name in batch)
        out = augment(batch)
        # not from collate (and with a field it does not read): packed by augment
        unpacked = augment({"names": [f"face {i}" for i in range(len(items))], **{k: v.clone() for k, v in batch.items()}})
        for key in ("image", "keypoints", "visible", "affine", "flipped", "index"):
            assert torch.equal(out[key], expected[key]), key
            assert torch.equal(unpacked[key], expected[key]), key


def test_cached_pixels_through_workers(faces):
    """Workers fill the cache of the process that made it; that process's DeviceAugment reads it."""
    fresh = open_dataset("synthetic-face", split="train", size=8, image_size=72)
    loader = DataLoader(DeviceCropDataset(fresh, CROP, seed=5, indices=range(8), cached_pixels=True), batch_size=8,
                        num_workers=2, collate_fn=DeviceCropDataset.collate)
    out = DeviceAugment(CROP, fresh.flip_pairs, images=fresh.image_cache)(next(iter(loader)))
    regions = DeviceCropDataset(faces, CROP, seed=5)
    expected = DeviceAugment(CROP, faces.flip_pairs)(collate([regions[i] for i in range(8)]))
    for key in ("image", "keypoints", "visible", "affine", "flipped"):
        assert torch.equal(out[key], expected[key]), key


def test_cached_pixels_need_a_cache(faces):
    uncached = open_dataset("synthetic-face", split="train", size=2, image_size=72, cache_images=False)
    with pytest.raises(ValueError, match="cached_pixels: synthetic-face keeps no image cache"):
        DeviceCropDataset(uncached, CROP, cached_pixels=True)
    fresh = open_dataset("synthetic-face", split="train", size=2, image_size=72)
    batch = collate([DeviceCropDataset(fresh, CROP, cached_pixels=True)[i] for i in range(2)])
    with pytest.raises(ValueError, match=r"no 'pixels' .* was given no image cache to read them from "
                                         r"\(images=dataset.image_cache\)"):
        DeviceAugment(CROP, fresh.flip_pairs)(batch)
    unread = open_dataset("synthetic-face", split="train", size=2, image_size=72)
    with pytest.raises(RuntimeError, match=r"image cache: rows \[0, 1\] were never filled"):
        DeviceAugment(CROP, fresh.flip_pairs, images=unread.image_cache)(batch)
