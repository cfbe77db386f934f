"""Rendered images kept in shared memory (h3r/data/cache.py): decoded once for every process,
the same pixels as without the cache, read-only to their readers."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import h3r.data.synthetic.scenery as scenery
from h3r.data.cache import SharedImages, shared_memory_allows
from h3r.data.checks import verify_readable
from h3r.data.synthetic import SyntheticFaces, SyntheticPeople


class CountingDecoder:
    def __init__(self, image):
        self.image, self.calls = image, 0

    def __call__(self):
        self.calls += 1
        return self.image.copy()


def test_an_image_is_decoded_once_and_read_only():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    decode = CountingDecoder(image)
    cache = SharedImages(3, 5, 7)
    load = cache.loader(1, decode)
    first, second = load(), load()
    assert decode.calls == 1 and cache.filled.tolist() == [False, True, False]
    assert np.array_equal(first, image) and np.array_equal(second, image)
    assert not first.flags.writeable and not second.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        second[0, 0, 0] = 1
    assert cache.pixels.is_shared() and cache.filled.is_shared()


def test_bad_images_and_indices_are_refused():
    cache = SharedImages(2, 4, 4)
    with pytest.raises(ValueError, match=r"image 0: decoded to uint8 \(4, 5, 3\), the cache holds uint8 \(4, 4, 3\)"):
        cache.load(0, lambda: np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match=r"image 1: decoded to float32"):
        cache.load(1, lambda: np.zeros((4, 4, 3), np.float32))
    assert not cache.filled.any()
    with pytest.raises(IndexError, match="index 2 out of range for a cache of 2 images"):
        cache.loader(2, lambda: None)
    with pytest.raises(ValueError, match="count, height and width must be >= 1"):
        SharedImages(0, 4, 4)


@pytest.mark.parametrize("kind", [SyntheticFaces, SyntheticPeople])
def test_cached_synthetic_images_are_the_rendered_ones(kind):
    cached, plain = kind("test", size=6, image_size=48), kind("test", size=6, image_size=48, cache_images=False)
    for index in range(6):
        rendered = plain[index].image()
        assert rendered.flags.writeable
        assert np.array_equal(cached[index].image(), rendered)
        assert np.array_equal(cached[index].image(), rendered)  # from the cache
    verify_readable(cached, None)


def stack_images(samples):
    return torch.stack([torch.from_numpy(sample.image().copy()) for sample in samples])


def _read_all(dataset, context):
    loader = DataLoader(dataset, batch_size=3, num_workers=2, multiprocessing_context=context, collate_fn=stack_images)
    return torch.cat(list(loader))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_fill_the_cache_of_the_process_that_made_it(context):
    faces = SyntheticFaces("train", size=6, image_size=32)
    images = _read_all(faces, context)
    cache = faces._loaders[0].cache
    assert cache.filled.all()  # written by the workers, seen here
    assert torch.equal(cache.pixels, images)
    plain = SyntheticFaces("train", size=6, image_size=32, cache_images=False)
    assert torch.equal(images, torch.stack([torch.from_numpy(plain[index].image()) for index in range(6)]))


def test_no_cache_where_shared_memory_is_short(monkeypatch, tmp_path):
    assert shared_memory_allows(1, str(tmp_path)) and not shared_memory_allows(2 ** 62, str(tmp_path))
    assert shared_memory_allows(2 ** 62, str(tmp_path / "absent"))  # no /dev/shm: nothing to measure
    monkeypatch.setattr(scenery, "shared_memory_allows", lambda nbytes: False)
    with pytest.warns(UserWarning, match=r"cache_images: 0 MiB of rendered images would take more than a "
                                             r"quarter of the free shared memory"):
        faces = SyntheticFaces("test", size=2, image_size=32)
    assert faces[0].image().flags.writeable  # rendered on each use
