"""How batches reach the training loop: which items, in which epoch, and how they cross from a
data-loader worker to the main process.

* :class:`EpochBatches`: the batches of one epoch as ``(epoch, position)`` keys, so that workers
  can persist across epochs (no start-up per epoch) and start on the next epoch while the
  current one is evaluated, with the same augmentation draws as fresh workers.
* :class:`WorkerCollate`: a batch's small tensors (keypoints, masks, affines, indices) are sent
  to the main process by value, in the pickle, instead of as shared-memory segments: torch
  passes each such segment as a file descriptor through a fresh authenticated connection (3.7
  ms of the main process's time per batch of 6 such tensors on the 2-core development machine;
  12 with ``--gpu-augment``), which the training loop waited for. Large tensors (the images)
  still go through shared memory.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.utils.data import Sampler, default_collate, get_worker_info

# Tensors of at most this many bytes cross from a worker to the main process by value.
SMALL_TENSOR_BYTES = 1 << 16


class EpochBatches(Sampler):
    """Batches of ``(epoch, position)`` keys of a :class:`h3r.crops.CropDataset`, the positions from
    ``sampler`` (a ``DistributedSampler``: shuffled per epoch and process).

    ``set_epoch(e)`` before each ``iter``: the batches of epoch ``e``, whose items draw
    their augmentation for epoch ``e`` in any worker, also in workers started (and kept,
    ``persistent_workers``) in an earlier epoch, and also when the iterator is made before
    the previous epoch's evaluation (so that the workers load during it).
    """

    def __init__(self, sampler, batch_size: int, drop_last: bool):
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        count = len(self.sampler)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self):
        return self._batches(self.epoch, iter(self.sampler))  # the epoch and its order, fixed now

    def _batches(self, epoch: int, positions):
        batch = []
        for position in positions:
            batch.append((epoch, int(position)))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch


class _ByValue:
    """A tensor that pickles as its numpy array and unpickles as a tensor again (no shared memory)."""

    def __init__(self, tensor: torch.Tensor):
        self.array = tensor.numpy()

    def __reduce__(self):
        return torch.from_numpy, (self.array,)


def _by_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if value.nbytes > SMALL_TENSOR_BYTES or value.device.type != "cpu" or value.requires_grad:
            return value
        try:
            return _ByValue(value)
        except TypeError:  # a dtype numpy lacks (bfloat16, float8): shared memory, as torch sends it
            return value
    if isinstance(value, dict):
        return type(value)({key: _by_value(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_by_value(item) for item in value)
    return value


class WorkerCollate:
    """``collate_fn`` of a loader: ``collate`` (default: torch's ``default_collate``); in a worker
    process, the batch's tensors of up to :data:`SMALL_TENSOR_BYTES` then reach the main process
    by value (as plain tensors again). In the main process (``num_workers=0``) the batch is unchanged."""

    def __init__(self, collate: Optional[Callable[[list], Any]] = None):
        self.collate = default_collate if collate is None else collate

    def __call__(self, items: list) -> Any:
        batch = self.collate(items)
        return batch if get_worker_info() is None else _by_value(batch)
