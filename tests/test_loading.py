"""How batches reach the training loop (h3r/loading.py): epoch keys for persistent workers,
small tensors sent from the workers by value, packed batches."""
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import torch.multiprocessing.reductions as reductions
import h3r.train as train_module
from h3r.crops import CropDataset
from h3r.data import open_dataset
from h3r.evaluate import eval_loader
from h3r.loading import PACK_ALIGNMENT, SMALL_TENSOR_BYTES, EpochBatches, PackedBatch, WorkerCollate, _by_value, _ByValue
from h3r.runtime import Processes
from h3r.train import train, train_loader
from tests.conftest import HAS_CUDA
from tests.test_train import quiet, tiny_config


def test_epoch_batches_carry_the_epoch_of_their_iterator():
    positions = DistributedSampler(range(10), num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    batches = EpochBatches(positions, batch_size=4, drop_last=True)
    batches.set_epoch(3)
    running = iter(batches)
    batches.set_epoch(4)  # the next epoch's iterator is made while the running one is not done
    following = list(batches)
    rest = list(running)
    assert len(batches) == 2 and len(rest) == 2 and len(following) == 2
    assert {epoch for batch in rest for epoch, _ in batch} == {3}
    assert {epoch for batch in following for epoch, _ in batch} == {4}
    positions.set_epoch(3)
    assert [position for batch in rest for _, position in batch] == list(positions)[:8]
    assert len(EpochBatches(positions, batch_size=4, drop_last=False)) == 3
    assert [len(batch) for batch in EpochBatches(positions, batch_size=4, drop_last=False)] == [4, 4, 2]


def test_persistent_workers_augment_each_epoch_as_the_main_process(tmp_path):
    faces = open_dataset("synthetic-face", split="train", size=8, image_size=48)
    config = tiny_config(tmp_path, workers=2, batch_size=4)
    crops = CropDataset(faces, config.crop, seed=config.seed)
    sampler, loader = train_loader(config, crops, Processes(), torch.device("cpu"))
    assert loader.persistent_workers
    for epoch in (0, 1, 2):
        sampler.set_epoch(epoch)
        batch = next(iter(loader))
        crops.epoch = epoch  # the main process's copy; the workers' copies keep epoch 0
        for row, index in enumerate(batch["index"].tolist()):
            position = int(torch.nonzero(torch.from_numpy(crops.indices) == index))
            assert torch.equal(batch["image"][row], crops[position]["image"]), (epoch, index)


def test_small_tensors_cross_by_value_and_arrive_as_tensors():
    batch = {"image": torch.zeros(SMALL_TENSOR_BYTES // 4 + 1), "keypoints": torch.ones(4, 2),
             "flags": [torch.tensor([True, False]), "name"], "pair": (torch.arange(3), 7),
             "half": torch.ones(3, dtype=torch.bfloat16)}
    sent = _by_value(batch)
    assert type(sent["image"]) is torch.Tensor  # large: shared memory, as before
    assert type(sent["half"]) is torch.Tensor  # numpy has no bfloat16: shared memory too
    assert isinstance(sent["keypoints"], _ByValue) and isinstance(sent["flags"][0], _ByValue)
    assert isinstance(sent["pair"], tuple) and isinstance(sent["pair"][0], _ByValue) and sent["flags"][1] == "name"


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return {"image": torch.full((3, 64, 64), float(index)), "keypoints": torch.full((5, 2), index / 3),
                "visible": torch.tensor([True, False, True, True, index % 2 == 0]), "index": index}


def test_a_worker_batch_sends_one_shared_memory_tensor(monkeypatch):
    received = []
    rebuild = reductions.rebuild_storage_fd

    def counting(*arguments):
        received.append(arguments)
        return rebuild(*arguments)

    in_process = list(DataLoader(Items(), batch_size=4, collate_fn=WorkerCollate()))
    batches = iter(DataLoader(Items(), batch_size=4, num_workers=1, collate_fn=WorkerCollate()))
    # Counted in this process only: the worker (started above) pickles with the real function.
    monkeypatch.setattr(reductions, "rebuild_storage_fd", counting)
    from_workers = list(batches)
    assert len(received) == 2  # one image per batch; keypoints, visible and index came by value
    for expected, batch in zip(in_process, from_workers):
        for key in expected:
            assert type(batch[key]) is torch.Tensor and batch[key].dtype == expected[key].dtype
            assert torch.equal(batch[key], expected[key]), key


def test_training_does_not_depend_on_the_number_of_workers(tmp_path, monkeypatch):
    """Workers kept across epochs (training and test loaders, each made once per run) give the
    losses, test metrics and weights of loading in the main process."""
    made = []
    monkeypatch.setattr(train_module, "eval_loader", lambda *a, **k: made.append(k) or eval_loader(*a, **k))
    runs = [train(tiny_config(tmp_path / str(workers), workers=workers, epochs=3, eval_every=1), log=quiet)
            for workers in (0, 2)]
    assert [made_with["workers"] for made_with in made] == [0, 2] and all(k["persistent"] for k in made)
    for key in ("train_loss", "test"):
        assert [r[key] for r in runs[0]["history"]] == [r[key] for r in runs[1]["history"]], key
    weights = [run["model"].state_dict() for run in runs]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def fields(seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch's worth of tensors of every kind a batch holds, and one large one."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "keypoints": torch.randn(4, 5, 2, generator=generator),
        "visible": torch.rand(4, 5, generator=generator) > 0.5,
        "pillow": torch.randn(4, 6, generator=generator, dtype=torch.float64),
        "index": torch.randint(0, 1000, (4,), generator=generator),
        "half": torch.randn(4, 3, generator=generator).to(torch.bfloat16),
        "count": torch.tensor(7, dtype=torch.int32),  # 0-d
        "none": torch.empty(0, 2, dtype=torch.float64),
        "flags": torch.tensor([True, False, True, True]),
        "pixels": torch.randint(0, 256, (4, 96, 96, 3), generator=generator, dtype=torch.uint8),  # > 64 KiB
    }


def assert_same_batch(batch, expected: dict[str, torch.Tensor]) -> None:
    assert list(batch.keys()) == list(expected)
    for name, tensor in expected.items():
        assert batch[name].dtype == tensor.dtype and batch[name].shape == tensor.shape, name
        assert torch.equal(batch[name].cpu().view(-1).view(torch.uint8) if tensor.numel() else batch[name].cpu(),
                           tensor.view(-1).view(torch.uint8) if tensor.numel() else tensor), name


def test_a_packed_batch_gives_back_every_tensor_bit_for_bit():
    tensors = fields()
    tensors["keypoints"][0, 0, 0] = float("nan")  # bits, not values
    batch = PackedBatch(tensors)
    assert_same_batch(batch, tensors)
    assert batch["pixels"] is tensors["pixels"]  # large: kept apart, not copied
    assert "pixels" in batch and "index" in batch and "image" not in batch and len(batch) == len(tensors)
    small = [name for name in tensors if name != "pixels"]
    start = batch.buffer.data_ptr()
    assert all((batch[name].data_ptr() - start) % PACK_ALIGNMENT == 0 for name in small)
    assert all(batch[name].untyped_storage().data_ptr() == start for name in small)  # views of one buffer
    assert batch.buffer.numel() <= sum(-(-tensors[name].nbytes // 16) * 16 for name in small)
    with pytest.raises(KeyError, match="batch has no 'image' \\(it has keypoints, visible, pillow"):
        batch["image"]


def test_a_packed_batch_keeps_device_tensors_apart_and_takes_only_tensors():
    on_device = torch.empty(3, 2, device="meta")
    batch = PackedBatch({"index": torch.arange(3), "keypoints": on_device, "conj": torch.tensor([1 + 2j]).conj()})
    assert batch["keypoints"] is on_device and batch.buffer.numel() == 32 + 16  # 24 + 8 bytes, 16-aligned
    assert torch.equal(batch["conj"], torch.tensor([1 - 2j]))  # a conjugate view packed as its values
    assert [name for name, _ in batch.items()] == list(batch.keys()) == ["index", "keypoints", "conj"]
    assert batch.values()[1] is on_device and batch.get("image") is None and torch.equal(batch.get("index"),
                                                                                         torch.arange(3))
    with pytest.raises(ValueError, match="batch: 'flipped' must be a tensor to be packed, got bool"):
        PackedBatch({"flipped": True})


def test_a_packed_batch_from_a_worker_sends_its_large_tensors_only_through_shared_memory(monkeypatch):
    class Batches(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return fields(index)

    received = []
    rebuild = reductions.rebuild_storage_fd
    batches = iter(DataLoader(Batches(), batch_size=None, num_workers=1, collate_fn=WorkerCollate(PackedBatch)))
    monkeypatch.setattr(reductions, "rebuild_storage_fd", lambda *a: received.append(a) or rebuild(*a))
    for index, batch in enumerate(batches):
        assert isinstance(batch, PackedBatch)
        assert_same_batch(batch, fields(index))
    assert len(received) == 3  # the pixels; every small tensor came in the buffer, by value


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_a_packed_batch_is_pinned_and_copied_as_one_buffer():
    from torch.utils.data._utils.pin_memory import pin_memory

    tensors = fields()
    pinned = pin_memory(PackedBatch(tensors))  # what the DataLoader's pinning thread calls
    assert isinstance(pinned, PackedBatch) and pinned.buffer.is_pinned() and pinned["pixels"].is_pinned()
    on_device = pinned.to("cuda", non_blocking=True)
    assert on_device.buffer.is_cuda and all(on_device[name].is_cuda for name in tensors)
    assert_same_batch(on_device, tensors)
