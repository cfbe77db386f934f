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
* :class:`PackedBatch`: a batch whose small tensors share one buffer, so that it is pinned, sent
  from a worker and copied to the device as one tensor (the ``--gpu-augment`` batches: 11 fields).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from torch.utils.data import Sampler, default_collate, get_worker_info

# Tensors of at most this many bytes cross from a worker to the main process by value.
SMALL_TENSOR_BYTES = 1 << 16
# A PackedBatch starts every tensor at a multiple of this many bytes: each view keeps its dtype's
# alignment, and 16-byte aligned pointers let kernels load vectors.
PACK_ALIGNMENT = 16


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


class PackedBatch:
    """A batch (names → tensors) whose small CPU tensors (up to :data:`SMALL_TENSOR_BYTES` each)
    share one uint8 buffer; the others (images, tensors already on a device) are kept apart.

    Each tensor is pinned, sent and copied on its own: one host-to-device copy (and one pinned
    allocation, one pickled array) per field. Packed, a batch costs one for all its small
    tensors, plus one per tensor kept apart. ``batch[name]`` is the tensor (a small one is a view
    of the buffer: same dtype, shape and bits); ``name in batch``, ``keys()``, ``values()``,
    ``items()`` and ``get()`` as for a dict (read-only); ``batch.to(device, non_blocking=True)``
    is the same batch on ``device``, and ``pin_memory()`` (which the DataLoader calls) the same
    batch in pinned memory. From a worker the buffer is pickled by value, the tensors kept apart
    as torch sends tensors (shared memory).
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        layout, apart, offset = {}, {}, 0
        for name, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"batch: '{name}' must be a tensor to be packed, got {type(tensor).__name__}")
            if tensor.nbytes > SMALL_TENSOR_BYTES or tensor.device.type != "cpu":
                apart[name] = tensor
                continue
            layout[name] = (tensor.dtype, tuple(tensor.shape), offset)
            offset += -(-tensor.nbytes // PACK_ALIGNMENT) * PACK_ALIGNMENT
        buffer = torch.zeros(offset, dtype=torch.uint8)
        for name, (_, _, start) in layout.items():
            flat = tensors[name].detach().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)
            buffer[start:start + flat.numel()] = flat
        self._assign(buffer, layout, apart, tuple(tensors))

    @classmethod
    def _from_parts(cls, buffer, layout, apart, names) -> "PackedBatch":
        batch = cls.__new__(cls)
        batch._assign(buffer, layout, apart, names)
        return batch

    def _assign(self, buffer: torch.Tensor, layout: dict, apart: dict, names: tuple[str, ...]) -> None:
        self.buffer = buffer  # the small tensors' bytes
        self._layout = layout  # name → (dtype, shape, byte offset)
        self._apart = apart  # name → tensor
        self._names = names

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._apart:
            return self._apart[name]
        if name not in self._layout:
            raise KeyError(f"batch has no '{name}' (it has {', '.join(self._names)})")
        dtype, shape, offset = self._layout[name]
        size = math.prod(shape) * dtype.itemsize
        return self.buffer[offset:offset + size].view(dtype).view(shape)

    def __contains__(self, name: object) -> bool:
        return name in self._layout or name in self._apart

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def keys(self) -> tuple[str, ...]:
        return self._names

    def values(self) -> list[torch.Tensor]:
        return [self[name] for name in self._names]

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, self[name]) for name in self._names]

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def to(self, device, non_blocking: bool = False) -> "PackedBatch":
        """The batch on ``device``: one copy of the buffer and one per tensor kept apart (none where they are)."""
        return self._from_parts(self.buffer.to(device, non_blocking=non_blocking), self._layout,
                                {name: tensor.to(device, non_blocking=non_blocking)
                                 for name, tensor in self._apart.items()}, self._names)

    def pin_memory(self, device=None) -> "PackedBatch":
        return self._from_parts(self.buffer.pin_memory(), self._layout,
                                {name: tensor.pin_memory() if tensor.device.type == "cpu" else tensor
                                 for name, tensor in self._apart.items()}, self._names)

    def __reduce__(self):
        on_cpu = self.buffer.device.type == "cpu"  # by value; a device buffer as torch sends tensors
        return _rebuild_packed, (self.buffer.numpy() if on_cpu else self.buffer, self._layout, self._apart, self._names)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}: {tuple(self[name].shape)} {self[name].dtype}" for name in self._names)
        return f"PackedBatch({fields}; {self.buffer.numel()} bytes packed, on {self.buffer.device})"


def _rebuild_packed(buffer, layout, apart, names) -> PackedBatch:
    return PackedBatch._from_parts(buffer if isinstance(buffer, torch.Tensor) else torch.from_numpy(buffer),
                                   layout, apart, names)
