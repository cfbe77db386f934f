"""The optimiser step (h3r/steps.py): the CUDA-graph step's plumbing (static inputs, the device
seed of the rounding, the order of zero_grad / backward / clip / step) gives the eager step's
bits on the CPU with capture off; ``--cuda-graphs`` refuses what it cannot capture; on a GPU
a short run with it trains like the eager one and resumes."""
import json

import pytest
import torch

from h3r import cli
from h3r.codecs import build_codec
from h3r.configs import TrainConfig, config_from_dict
from h3r.models import build_model
from h3r.steps import CapturedTrainStep, TrainStep
from h3r.train import train

DEVICE = torch.device("cpu")


def _batches(count, batch=4, keypoints=5, size=32):
    generator = torch.Generator().manual_seed(1)
    for _ in range(count):
        images = torch.randn(batch, 3, size, size, generator=generator)
        points = torch.rand(batch, keypoints, 2, generator=generator) * (size - 1)
        visible = torch.rand(batch, keypoints, generator=generator) > 0.2
        yield images, points, visible


def _run(step_class, codec_name, grad_clip, steps=5, **extra):
    torch.manual_seed(0)
    codec = build_codec(codec_name, 4, input_size=32)
    model = build_model("small", 5 * codec.maps_per_keypoint)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    if step_class is TrainStep:
        step = TrainStep(model, codec, optimizer, torch.amp.GradScaler("cpu", enabled=False), grad_clip, "none", DEVICE)
    else:
        step = CapturedTrainStep(model, codec, optimizer, grad_clip, "none", DEVICE, capture=False)
    losses = [step(images, points, visible, 1000 + index).detach().clone()
              for index, (images, points, visible) in enumerate(_batches(steps))]
    return torch.stack(losses), [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("codec_name", ["h3r", "h3r-gaussian", "gaussian", "integral", "udp"])
@pytest.mark.parametrize("grad_clip", [0.0, 0.05])
def test_static_inputs_and_device_seed_give_the_eager_step(codec_name, grad_clip):
    eager_losses, eager_weights = _run(TrainStep, codec_name, grad_clip)
    graph_losses, graph_weights = _run(CapturedTrainStep, codec_name, grad_clip)
    assert torch.equal(graph_losses, eager_losses)
    assert all(torch.equal(a, b) for a, b in zip(graph_weights, eager_weights))
    assert len(set(eager_losses.tolist())) == len(eager_losses)  # the steps did change the model


def test_the_h3r_draws_follow_the_seed_of_each_call():
    model = build_model("small", 5)
    codec = build_codec("h3r", 4, input_size=32)
    images, points, visible = next(_batches(1))
    with torch.no_grad():
        logits = model(images)
    step = CapturedTrainStep(model, codec, torch.optim.SGD(model.parameters(), lr=0.0), 0.0, "none", DEVICE,
                             capture=False)
    for seed in (3, 0xDEADBEEF):
        step._load({"images": images, "keypoints": points, "visible": visible})
        step.seed.fill_(seed)
        assert torch.equal(codec.loss(logits, points, visible, seed=step.seed), codec.loss(logits, points, visible,
                                                                                          seed=seed))


def test_a_batch_of_another_shape_is_refused():
    model = build_model("small", 5)
    step = CapturedTrainStep(model, build_codec("h3r", 4, input_size=32), torch.optim.SGD(model.parameters(), lr=0.1),
                             0.0, "none", DEVICE, capture=False)
    images, points, visible = next(_batches(1))
    step(images, points, visible, 1)
    with pytest.raises(ValueError, match=r"cuda_graphs: every batch must have the shape of the captured one; images "
                                         r"is \(2, 3, 32, 32\) torch.float32, captured \(4, 3, 32, 32\)"):
        step(images[:2], points[:2], visible[:2], 2)


def test_cuda_graphs_refuses_what_it_cannot_capture(tmp_path, capsys):
    with pytest.raises(ValueError, match="cuda_graphs: not with amp='fp16'"):
        config_from_dict({**TrainConfig().to_dict(), "cuda_graphs": True, "amp": "fp16"})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"cuda_graphs: needs a CUDA device, got device 'cpu' \(cpu\)"):
            train(TrainConfig(device="cpu", cuda_graphs=True, out=str(tmp_path / "run")), log=lambda message: None)
        assert not (tmp_path / "run").exists()
        code = cli.main(["train", "--device", "cpu", "--cuda-graphs", "--out", str(tmp_path / "cli")])
        err = capsys.readouterr().err
        assert code != 0 and "cuda_graphs: needs a CUDA device" in err and err.count("\n") == 1
        assert not (tmp_path / "cli").exists()


def test_help_lists_the_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "--cuda-graphs" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_cuda_graph_run_trains_like_the_eager_one_and_resumes(tmp_path, amp):
    common = dict(train_options={"size": 64, "image_size": 64}, test_options={"size": 16, "image_size": 64},
                  input_size=64, epochs=2, batch_size=16, workers=0, progress=False, draw=0, amp=amp, device="cuda",
                  grad_clip=1.0)
    eager = train(TrainConfig(out=str(tmp_path / "eager"), **common), log=lambda message: None)
    graphed = train(TrainConfig(out=str(tmp_path / "graphs"), cuda_graphs=True, **common), log=lambda message: None)
    for a, b in zip(eager["history"], graphed["history"]):
        # capturable AdamW computes its bias corrections on the device: the last bits may differ
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2e-2)
    half = train(TrainConfig(out=str(tmp_path / "resumed"), cuda_graphs=True, **common), stop_after_epochs=1,
                 log=lambda message: None)
    assert half["epochs_completed"] == 1
    resumed = train(TrainConfig(out=str(tmp_path / "resumed"), cuda_graphs=True, **common),
                    resume=str(tmp_path / "resumed" / "last.pt"), log=lambda message: None)
    assert resumed["finished"] and resumed["history"][-1]["train_loss"] == pytest.approx(
        graphed["history"][-1]["train_loss"], rel=2e-2)
    records = [json.loads(line) for line in (tmp_path / "graphs" / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(record["lr"], float) for record in records)
