"""How batches reach the training loop (h3r/loading.py): epoch keys for persistent workers, and
small tensors sent from the workers by value."""
import torch
from torch.utils.data import DataLoader, DistributedSampler

import torch.multiprocessing.reductions as reductions
import h3r.train as train_module
from h3r.crops import CropDataset
from h3r.data import open_dataset
from h3r.evaluate import eval_loader
from h3r.loading import SMALL_TENSOR_BYTES, EpochBatches, WorkerCollate, _by_value, _ByValue
from h3r.runtime import Processes
from h3r.train import train, train_loader
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
