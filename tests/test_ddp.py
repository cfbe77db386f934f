"""Two CPU processes (gloo) train one model: parameters stay in sync, process 0 alone writes."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing

from h3r.checkpoints import load_checkpoint
from h3r.configs import config_from_dict
from h3r.train import train

WORLD_SIZE = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_as(rank: int, port: int, folder: str) -> None:
    """One process of the job, set up as ``torchrun`` would set it up."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE))
    torch.set_num_threads(1)
    config = config_from_dict(dict(train_options={"size": 16, "image_size": 48},
                                   test_options={"size": 4, "image_size": 48}, input_size=32, epochs=2, batch_size=4,
                                   workers=0, progress=False, draw=0, device="cpu", out=os.path.join(folder, "run"),
                                   flip_prob=0.5, rotation=10.0))
    lines = []
    summary = train(config, log=lines.append)
    parameters = {name: value.detach().clone() for name, value in summary["model"].named_parameters()}
    torch.save({"parameters": parameters, "history": summary["history"], "lines": lines},
               os.path.join(folder, f"rank{rank}.pt"))


def test_two_processes_stay_in_sync(tmp_path):
    torch.multiprocessing.spawn(train_as, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]

    first, second = results[0]["parameters"], results[1]["parameters"]
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name  # DDP averaged the gradients every step

    history = results[0]["history"]
    assert [record["epoch"] for record in history] == [1, 2]
    assert history[-1]["step"] == 2 * 16 // (WORLD_SIZE * 4)  # each process takes half of every epoch
    assert [record["train_loss"] for record in results[1]["history"]] == [record["train_loss"] for record in history]
    assert results[1]["lines"] == [] and any("x 2 processes" in line for line in results[0]["lines"])
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records] == [1, 2] and "nme" in records[-1]["test"]
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()

    # Resuming with another number of processes would rebuild the schedule from other steps per epoch.
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["world_size"] == WORLD_SIZE
    with pytest.raises(ValueError, match=r"was trained by 2 process\(es\), this call has 1: .*continue with "
                                         r"torchrun --nproc_per_node 2 -m h3r train --resume"):
        train(config_from_dict(checkpoint["config"]), resume=checkpoint)


def test_torchrun_launches_the_command(tmp_path):
    """The documented launch: ``torchrun --nproc_per_node 2 -m h3r train ...``."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD_SIZE),
               "-m", "h3r", "train", "--train-option", "size=16", "--train-option", "image_size=48",
               "--test-option", "size=4", "--test-option", "image_size=48", "--input-size", "32", "--epochs", "1",
               "--batch-size", "4", "--workers", "0", "--device", "cpu", "--no-progress", "--draw", "0",
               "--out", str(out)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("x 2 processes") == 1  # process 0 alone prints
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [16 // (WORLD_SIZE * 4)]
