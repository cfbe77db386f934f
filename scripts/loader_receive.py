"""How long the training process spends receiving one batch from a data-loader worker.

A loader of precomputed items (no decoding, no augmentation), 2 persistent workers kept well
ahead (the loop sleeps 15 ms per batch), ``h3r.loading.WorkerCollate`` as in training: the
median time of ``next()`` over 50 batches of 32 is what remains of the loader in the training
process once the workers keep up. Run: ``python scripts/loader_receive.py``.
"""
import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset

from h3r.loading import WorkerCollate

BATCH, BATCHES = 32, 50


class Precomputed(Dataset):
    """Items shaped like a training item (image of ``shape``, 98 keypoints) that cost nothing to make."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype):
        self.image = torch.zeros(shape, dtype=dtype)

    def __len__(self) -> int:
        return BATCH * (BATCHES + 10)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.image.clone(), "keypoints": torch.zeros(98, 2), "visible": torch.ones(98, dtype=torch.bool),
                "affine": torch.zeros(2, 3, dtype=torch.float64), "index": index}


def receive_ms(shape: tuple[int, ...], dtype: torch.dtype) -> float:
    loader = DataLoader(Precomputed(shape, dtype), batch_size=BATCH, num_workers=2, collate_fn=WorkerCollate(),
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
    for what, shape, dtype in (("crops (CPU augmentation)", (3, 64, 64), torch.float32),
                               ("regions (--gpu-augment)", (60, 60, 3), torch.uint8)):
        print(f"{what}: {tuple(shape)} {dtype}, batch {BATCH}: {receive_ms(shape, dtype):.2f} ms per batch "
              f"(median of {BATCHES})")
