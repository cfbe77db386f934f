"""How long the training process spends receiving one batch from a data-loader worker.

One real item of the main job (``h3r train``'s defaults) for each way a batch can travel,
repeated by a loader of 2 persistent workers kept well ahead (the loop sleeps 15 ms per batch)
with ``h3r.loading.WorkerCollate`` as in training: the median time of ``next()`` over 50 batches
of 32 is what remains of the loader in the training process once the workers keep up.
Run: ``python scripts/loader_receive.py``.
"""
import copy
import statistics
import time

from torch.utils.data import DataLoader, Dataset

from h3r.augment import DeviceCropDataset
from h3r.configs import load_config
from h3r.crops import CropDataset
from h3r.data import open_dataset
from h3r.loading import WorkerCollate

BATCH, BATCHES = 32, 50


class Repeated(Dataset):
    """One item, copied for every index: items that cost nothing to make."""

    def __init__(self, item: dict):
        self.item = item

    def __len__(self) -> int:
        return BATCH * (BATCHES + 10)

    def __getitem__(self, index: int) -> dict:
        return copy.deepcopy(self.item)


def receive_ms(item: dict, collate) -> float:
    loader = DataLoader(Repeated(item), batch_size=BATCH, num_workers=2, collate_fn=WorkerCollate(collate),
                        persistent_workers=True, prefetch_factor=4)
    batches = iter(loader)
    next(batches)
    time.sleep(0.5)
    costs = []
    for _ in range(BATCHES):
        start = time.perf_counter()
        next(batches)
        costs.append(time.perf_counter() - start)
        time.sleep(0.015)
    return 1000 * statistics.median(costs)


if __name__ == "__main__":
    config = load_config()
    faces = open_dataset(config.dataset, split=config.train_split, **{**config.train_options, "size": 1})
    ways = (("crops (CPU augmentation)", CropDataset(faces, config.crop, seed=0), None),
            ("regions (--gpu-augment)", DeviceCropDataset(faces, config.crop, seed=0), DeviceCropDataset.collate),
            ("no pixels (--gpu-augment, image cache)",
             DeviceCropDataset(faces, config.crop, seed=0, cached_pixels=True), DeviceCropDataset.collate))
    for what, crops, collate in ways:
        item = crops[0]
        pixels = item.get("image", item.get("pixels"))
        image = "no image" if pixels is None else f"{tuple(pixels.shape)} {pixels.dtype}"
        print(f"{what}: {image} per item, batch {BATCH}: {receive_ms(item, collate):.2f} ms per batch "
              f"(median of {BATCHES})")
