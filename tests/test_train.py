"""Codecs, the trainer and the evaluator, end to end on tiny models and generated data.

Every training here is a few iterations of the ``small`` backbone on 32-pixel crops
(8x8 heatmaps) with ``workers=0``, so the whole file runs in about a minute on a CPU.
"""
import json
import math

import numpy as np
import pytest
import torch

from h3r.codecs import GaussianCodec, H3RCodec, build_codec, dark_offset, default_gaussian_sigma, quarter_offset
from h3r.configs import TrainConfig, config_from_dict, dataset_defaults, flat_settings, load_config
from h3r.data import open_dataset
from h3r.data.base import Sample, landmark_box
from h3r.data.writers_face import write_300w, write_aflw_mat, write_cofw, write_wflw
from h3r.data.writers_pose import write_coco, write_mpii
from h3r.evaluate import (CropDataset, Predictions, dataset_metrics, eval_crop, evaluate_checkpoint, load_checkpoint,
                          mean_shape, mean_shape_predictions, predict)
from h3r.train import Processes, learning_rate_factor, rounding_seed, save_atomic, train, train_loader
from h3r.transforms import flip_keypoints

import h3r_kernels


def tiny_config(tmp_path, **changes) -> TrainConfig:
    """A few iterations of the small model on 32-px crops of 16 generated faces."""
    values = dict(dataset="synthetic-face", train_options={"size": 16, "image_size": 48},
                  test_options={"size": 6, "image_size": 48}, backbone="small", input_size=32, epochs=2,
                  batch_size=8, lr=3e-3, warmup_epochs=0.5, workers=0, progress=False, draw=2,
                  out=str(tmp_path / "run"), rotation=10.0, scale_jitter=0.1, translate=0.05, flip_prob=0.5,
                  colour_jitter=0.2)
    values.update(changes)
    return config_from_dict(values, source="test")


def quiet(message):
    pass


# ------------------------------------------------------------------------------------------
# Codecs


@pytest.mark.parametrize("weights", ["softmax", "linear"])
def test_h3r_codec_decodes_its_expected_target_exactly(weights):
    """Decoding the average target (the bilinear weights) returns the keypoint: no quantization error.

    "softmax" weighs exp(logit), so logits = log p give weights p; "linear" weighs
    sigmoid(logit), so logits = log-odds of p give weights p.
    """
    codec = H3RCodec(stride=4, k=9, weights=weights)
    keypoints = torch.tensor([[[5.3, 17.9], [30.0, 2.6], [12.25, 12.75]]])  # input pixels
    expected = codec.targets(keypoints, (10, 10), expected=True)
    probability = expected.clamp(1e-7, 1 - 1e-7)
    logits = torch.log(probability) if weights == "softmax" else torch.log(probability / (1 - probability))
    coords, scores = codec.decode(logits)
    torch.testing.assert_close(coords, keypoints, atol=2e-3, rtol=0)
    assert scores.shape == (1, 3) and bool(((scores > 0) & (scores <= 1)).all())


def test_h3r_codec_loss_matches_bce_against_its_target():
    codec = H3RCodec(stride=4)
    keypoints = torch.tensor([[[5.3, 17.9], [30.0, 2.6]], [[1.0, 1.0], [20.0, 33.0]]])
    visible = torch.tensor([[True, True], [True, False]])
    logits = torch.randn(2, 2, 10, 10)
    target = codec.targets(keypoints, (10, 10), visible, seed=7)
    assert target.sum(dim=(2, 3)).tolist() == [[1.0, 1.0], [1.0, 0.0]]
    contributing = visible.float().view(2, 2, 1, 1)
    expected = (torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
                * contributing).sum() / (contributing.sum() * 100)
    torch.testing.assert_close(codec.loss(logits, keypoints, visible, seed=7), expected)


def test_h3r_codec_rounds_to_neighbours_with_bilinear_probabilities():
    codec = H3RCodec(stride=4)
    keypoints = torch.tensor([[[4 * 2.25, 4 * 5.5]]])
    counts = torch.zeros(8, 8)
    for seed in range(400):
        counts += codec.targets(keypoints, (8, 8), seed=seed)[0, 0]
    assert set(map(tuple, counts.nonzero().tolist())) <= {(5, 2), (5, 3), (6, 2), (6, 3)}  # (row, column)
    frequencies = counts / 400
    assert abs(frequencies[:, 3].sum() - 0.25) < 0.06 and abs(frequencies[6, :].sum() - 0.5) < 0.08


def test_h3r_initial_logit_is_the_prior_log_odds():
    probability = torch.sigmoid(torch.tensor(H3RCodec().initial_logit((16, 16))))
    assert math.isclose(float(probability), 1 / 256, rel_tol=1e-5)
    assert GaussianCodec().initial_logit((16, 16)) == 0.0


@pytest.mark.parametrize("refine", ["none", "quarter", "dark"])
def test_gaussian_codec_decodes_a_gaussian(refine):
    codec = GaussianCodec(stride=4, sigma=1.5, refine=refine)
    keypoints = torch.tensor([[[4 * 7.3, 4 * 8.8], [4 * 3.5, 4 * 12.2]]])
    nearest_target = codec.targets(keypoints, (16, 16))
    assert torch.equal(nearest_target.flatten(2).argmax(-1), torch.tensor([[9 * 16 + 7, 12 * 16 + 4]]))
    continuous = h3r_kernels.encode(keypoints / 4, (16, 16), sigma=1.5, rounding="none")
    coords, scores = codec.decode(continuous)
    error = (coords - keypoints).abs().max().item()
    assert error <= {"none": 2.0, "quarter": 1.0, "dark": 0.15}[refine]  # input pixels; dark: < 0.04 cells
    torch.testing.assert_close(scores, continuous.flatten(2).amax(-1))


def test_sub_cell_offsets_on_borders_and_flat_maps():
    heatmaps = torch.zeros(1, 2, 5, 5)
    heatmaps[0, 0, 0, 0] = 1.0  # peak in the corner: no neighbour on two sides
    heatmaps[0, 1] = 1.0  # flat map: no direction
    peaks = torch.tensor([[[0.0, 0.0], [2.0, 2.0]]])
    assert torch.equal(quarter_offset(heatmaps, peaks), torch.zeros(1, 2, 2))
    assert torch.equal(dark_offset(heatmaps[:, 1:], peaks[:, 1:], sigma=1.0), torch.zeros(1, 1, 2))


def test_build_codec_and_default_sigma():
    assert default_gaussian_sigma(256) == 1.5 and default_gaussian_sigma(64) == 1.0
    assert default_gaussian_sigma(256, stride=8) == 0.75 and default_gaussian_sigma(256, 4, task="pose") == 2.0
    assert build_codec("gaussian", input_size=256).sigma == 1.5
    assert isinstance(build_codec("h3r"), H3RCodec)
    with pytest.raises(ValueError, match="codec: expected one of"):
        build_codec("dsnt")
    with pytest.raises(ValueError, match="sigma: give sigma, or input_size"):
        build_codec("gaussian")
    with pytest.raises(ValueError, match="refine: expected one of"):
        GaussianCodec(refine="taylor")
    with pytest.raises(ValueError, match="weights: expected"):
        H3RCodec(weights="uniform")


# ------------------------------------------------------------------------------------------
# Configuration


def test_configuration_files_load_and_validate():
    for dataset in ("synthetic-face", "synthetic-pose", "wflw", "300w", "cofw", "aflw", "mpii", "coco"):
        config = load_config(dataset)
        assert config.dataset == dataset and config.stride == 4
    merged = load_config("synthetic-face", train_options={"size": 10})
    assert merged.train_options == {**dataset_defaults("synthetic-face")["train_options"], "size": 10}


@pytest.mark.parametrize("changes, message", [
    ({"stride": 6}, "stride: expected one of 4, 8, 16, 32"),
    ({"input_size": 30}, "input_size: expected a multiple of the stride 4"),
    ({"input_size": 16, "stride": 16}, "at least 2x2 cells"),
    ({"codec": "dsnt"}, "codec: expected one of h3r, h3r-gaussian, gaussian, dark, integral, udp, got .dsnt."),
    ({"epochs": 0}, "epochs: expected a positive number"),
    ({"sigma": -1.0}, "sigma: expected a positive number"),
    ({"radius": 0.0}, "radius: expected at least √2/2"),
    ({"radius": 0.5}, "radius: expected at least √2/2"),
    ({"codec": "udp", "radius": 1e39}, r"radius: 1e\+39 cells is wider than the 16x16 heatmap"),
    ({"radius": True}, "radius: expected a number of heatmap cells, got bool"),
    ({"codec": "udp", "radius": 30.0}, "radius: 30.0 cells is wider than the 16x16 heatmap"),
    ({"learning_rate": 0.1}, "unknown setting.*learning_rate"),
])
def test_bad_settings_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict({**flat_settings(TrainConfig()), **changes}, source="test")


def test_a_radius_too_wide_for_the_map_is_only_refused_for_udp():
    assert config_from_dict({**flat_settings(TrainConfig()), "radius": 30.0}, source="test").radius == 30.0  # h3r
    udp = {**flat_settings(TrainConfig()), "codec": "udp", "radius": 30.0}
    assert config_from_dict({**udp, "input_size": 128}, source="test").radius == 30.0  # 32x32: diagonal 45.3


def test_amp_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="amp: mixed precision .* needs a CUDA device"):
        train(tiny_config(tmp_path, amp="bf16"), log=quiet)


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_learning_rate_warms_up_then_decays(schedule):
    config = TrainConfig(epochs=10, warmup_epochs=1, schedule=schedule, step_epochs=[5, 8], step_gamma=0.1,
                         min_lr_ratio=0.01)
    factor = learning_rate_factor(config, steps_per_epoch=10)
    warmup = [factor(step) for step in range(10)]
    assert warmup == sorted(warmup) and warmup[0] < 0.2 and factor(10) == pytest.approx(1.0)
    if schedule == "cosine":
        assert factor(55) == pytest.approx(0.505, abs=0.03) and factor(99) == pytest.approx(0.01, abs=1e-3)
    else:
        assert (factor(49), factor(50), factor(80)) == pytest.approx((1.0, 0.1, 0.01))


def test_rounding_seeds_differ_by_step_and_process():
    seeds = {rounding_seed(0, step, rank) for step in range(50) for rank in range(4)}
    assert len(seeds) == 200 and all(0 <= seed < 2**32 for seed in seeds)


def test_save_atomic_replaces_without_leftovers(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"value": torch.ones(2)}, path)
    save_atomic({"value": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["value"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ------------------------------------------------------------------------------------------
# Data pipeline, flip test and the mean-shape baseline


def test_crop_dataset_augmentation_depends_on_seed_epoch_and_index_only(tmp_path):
    faces = open_dataset("synthetic-face", split="train", size=4, image_size=48)
    config = tiny_config(tmp_path)
    crops = CropDataset(faces, config.crop, seed=3)
    first = crops[2]
    crops.epoch = 1
    other_epoch = crops[2]
    crops.epoch = 0
    again = crops[2]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["keypoints"], again["keypoints"])
    assert not torch.equal(first["image"], other_epoch["image"])
    plain = CropDataset(faces, eval_crop(config))[2]
    assert plain["index"] == 2 and not plain["flipped"]


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    faces = open_dataset("synthetic-face", split="train", size=8, image_size=48)
    batches = []
    for workers in (0, 2):
        config = tiny_config(tmp_path, workers=workers, batch_size=4)
        crops = CropDataset(faces, config.crop, seed=config.seed)
        sampler, loader = train_loader(config, crops, Processes(), torch.device("cpu"))
        sampler.set_epoch(1)
        crops.epoch = 1
        batches.append(next(iter(loader)))
    for key in ("image", "keypoints", "visible", "index"):
        assert torch.equal(batches[0][key], batches[1][key]), key


class OracleModel(torch.nn.Module):
    """Returns the log of the expected H3R target of the true keypoints of each crop it
    recognises, mirrored crops too: heatmaps that decode to the truth exactly."""

    stride = 4

    def __init__(self, crops: CropDataset, flip_pairs):
        super().__init__()
        items = [crops[i] for i in range(len(crops))]
        self.images = torch.stack([item["image"] for item in items])
        self.keypoints = torch.stack([item["keypoints"] for item in items])
        self.size = self.images.shape[-1]
        self.flip_pairs = flip_pairs
        self.codec = H3RCodec()

    def forward(self, images):
        keypoints = []
        for image in images:
            match = (self.images - image).flatten(1).abs().amax(1)
            mirrored = (self.images.flip(-1) - image).flatten(1).abs().amax(1)
            if match.min() < 1e-6:
                keypoints.append(self.keypoints[match.argmin()])
            else:
                assert mirrored.min() < 1e-6
                keypoints.append(flip_keypoints(self.keypoints[mirrored.argmin()], self.size, self.flip_pairs))
        side = self.size // self.stride
        probability = self.codec.targets(torch.stack(keypoints), (side, side), expected=True).clamp_min(1e-7)
        return torch.log(probability)  # softmax over the top-k then weighs by the probabilities


@pytest.mark.parametrize("flip_test", [False, True])
def test_predict_maps_perfect_heatmaps_back_to_the_image(flip_test):
    faces = open_dataset("synthetic-face", split="test", size=5, image_size=48)
    crop = eval_crop(config_from_dict({"input_size": 32}))
    oracle = OracleModel(CropDataset(faces, crop), faces.flip_pairs)
    predictions = predict(oracle, H3RCodec(), faces, crop, device=torch.device("cpu"), batch_size=2,
                          flip_test=flip_test)
    truth = np.stack([faces[i].keypoints for i in range(len(faces))])
    # Heatmap cell i sits on input pixel 4 i: the 8 cells cover input pixels [0, 28] of the 32.
    in_crop = np.stack([CropDataset(faces, crop)[i]["keypoints"].numpy() for i in range(len(faces))])
    inside = ((in_crop >= 0) & (in_crop <= 28)).all(-1)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(predictions.coords[inside], truth[inside], atol=0.02)
    assert predictions.indices.tolist() == list(range(5))
    assert dataset_metrics(faces, predictions)["nme"] < 0.01


def test_mean_shape_of_a_single_face_is_that_face():
    face = open_dataset("synthetic-face", split="test", size=1, image_size=48)
    crop = eval_crop(config_from_dict({"input_size": 32}))
    shape = mean_shape(face, crop)
    baseline = mean_shape_predictions(face, shape, crop)
    np.testing.assert_allclose(baseline.coords[0], face[0].keypoints, atol=1e-3)
    assert dataset_metrics(face, baseline)["nme"] < 1e-4


def test_head_start_at_sets_the_initial_output():
    from h3r.models import build_model

    for head in ("binary", "two-class"):
        model = build_model("small", 3, head=head).eval()
        model.head.start_at(-5.0)
        with torch.no_grad():
            logits = model(torch.randn(1, 3, 32, 32))
        assert (logits + 5).abs().max() < 0.1


# ------------------------------------------------------------------------------------------
# Training end to end


@pytest.mark.parametrize("codec", ["h3r", "gaussian"])
def test_training_writes_the_run_folder(tmp_path, codec):
    lines = []
    summary = train(tiny_config(tmp_path, codec=codec, epochs=2, eval_every=1), log=lines.append)
    out = tmp_path / "run"
    assert summary["finished"] and summary["epochs_completed"] == 2
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "curve.png",
                 "eval-synthetic-face-test/results.md", "eval-synthetic-face-test/results.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "eval-synthetic-face-test" / "images").glob("*.png"))) == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert record["images_per_s"] > 0 and 0 <= record["loader_wait_fraction"] <= 1
        assert math.isfinite(record["train_loss"]) and set(record["test"]) >= {"nme", "fr@0.1", "auc@0.1"}
    assert records == summary["history"]
    text = "\n".join(lines)
    assert "mean-shape baseline" in text and "test nme" in text and "| nme |" in text
    assert json.loads((out / "config.json").read_text())["codec"] == codec


def without_timings(records):
    timings = ("images_per_s", "loader_wait_fraction", "epoch_seconds")
    return [{key: value for key, value in record.items() if key not in timings} for record in records]


def test_resume_continues_exactly(tmp_path):
    straight = train(tiny_config(tmp_path / "a", epochs=2, eval_every=2), log=quiet)
    first = train(tiny_config(tmp_path / "b", epochs=2, eval_every=2), stop_after_epochs=1, log=quiet)
    assert not first["finished"] and first["epochs_completed"] == 1
    resumed = train(tiny_config(tmp_path / "b", epochs=2, eval_every=2, progress=True),
                    resume=str(tmp_path / "b" / "run"), log=quiet)
    assert resumed["finished"]
    straight_state = load_checkpoint(tmp_path / "a" / "run" / "last.pt")
    resumed_state = load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    for key, value in straight_state["model"].items():
        assert torch.equal(value, resumed_state["model"][key]), key
    assert without_timings(straight["history"]) == without_timings(resumed["history"])
    assert len((tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match=r"only device, workers, progress, draw, gpu_augment, data_root may change.*lr \(0.003 -> 0.1\)"):
        train(tiny_config(tmp_path / "b", epochs=2, eval_every=2, lr=0.1), resume=str(tmp_path / "b" / "run"),
              log=quiet)


def test_loading_a_foreign_file_is_refused(tmp_path):
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a checkpoint written by h3r train"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------------
# Every dataset format, from files written in the real layouts


def faces_with(count: int, num_keypoints: int, split: str, seed: int = 0) -> list[Sample]:
    """Generated faces keeping ``num_keypoints`` of their 98 landmarks (spread over the face)."""
    faces = open_dataset("synthetic-face", split=split, size=count, image_size=48, seed=seed)
    chosen = np.linspace(0, 97, num_keypoints).round().astype(int)
    samples = []
    for index in range(count):
        face = faces[index]
        keypoints = face.keypoints[chosen]
        samples.append(Sample(load_image=face.load_image, keypoints=keypoints,
                              visible=np.ones(num_keypoints, bool), box=face.box, box_p1=landmark_box(keypoints),
                              meta={}))
    return samples


def people_with(count: int, num_joints: int, split: str) -> list[Sample]:
    people = open_dataset("synthetic-pose", split=split, size=count, image_size=64)
    samples = []
    for index in range(count):
        person = people[index]
        keypoints, visible = person.keypoints[:num_joints], person.visible[:num_joints]
        head = landmark_box(person.keypoints[:5])
        meta = {"head_box": head + np.array([-3, -3, 3, 3], np.float32), "image_id": index + 1}
        samples.append(Sample(load_image=person.load_image, keypoints=keypoints, visible=visible, box=person.box,
                              box_p1=person.box_p1, meta=meta))
    return samples


def write_wflw_files(root):
    write_wflw(str(root), "train", faces_with(8, 98, "train"))
    write_wflw(str(root), "test", faces_with(4, 98, "test"))
    return {}


def write_300w_files(root):
    train, test = faces_with(9, 68, "train"), faces_with(4, 68, "test")
    for part, folder in enumerate(("afw", "helen/trainset", "lfpw/trainset")):
        write_300w(str(root), folder, train[3 * part: 3 * part + 3])
    write_300w(str(root), "helen/testset", test[:2])
    write_300w(str(root), "lfpw/testset", test[2:])
    return {"test_split": "common"}


def write_cofw_files(root):
    write_cofw(str(root), "train", faces_with(8, 29, "train"))
    write_cofw(str(root), "test", faces_with(4, 29, "test"))
    return {}


def write_aflw_files(root):
    write_aflw_mat(str(root), faces_with(8, 19, "train"), faces_with(4, 19, "test"))
    return {"train_options": {"train_size": 8}, "test_options": {"train_size": 8}}


def write_mpii_files(root):
    write_mpii(root, "train", people_with(8, 16, "train"))
    write_mpii(root, "valid", people_with(4, 16, "test"))
    return {}


def write_coco_files(root):
    write_coco(root, "train", people_with(8, 17, "train"))
    write_coco(root, "val", people_with(4, 17, "test"))
    return {}


FORMATS = {"wflw": (write_wflw_files, "nme"), "300w": (write_300w_files, "nme"), "cofw": (write_cofw_files, "nme"),
           "aflw": (write_aflw_files, "nme"), "mpii": (write_mpii_files, "Mean"), "coco": (write_coco_files, "AP")}


@pytest.mark.parametrize("dataset", sorted(FORMATS))
def test_training_on_each_dataset_format(tmp_path, dataset):
    writer, metric = FORMATS[dataset]
    root = tmp_path / dataset
    root.mkdir()
    changes = writer(root)
    defaults = dataset_defaults(dataset)
    settings = dict(dataset=dataset, data_root=str(root), epochs=1, batch_size=4, train_split=defaults["train_split"],
                    test_split=defaults["test_split"], train_options={}, test_options={}, metric=defaults["metric"],
                    higher_is_better=defaults["higher_is_better"], flip_test=True)
    summary = train(tiny_config(tmp_path, **{**settings, **changes}), log=quiet)
    logged = summary["history"][-1]["test"]
    assert summary["finished"] and metric in logged and metric in summary["baseline"]
    # Evaluating the saved checkpoint reproduces the metrics logged at training time.
    result = evaluate_checkpoint(tmp_path / "run" / "last.pt", out=str(tmp_path / "eval"), draw=1, progress=False)
    assert_same_metrics(result["metrics"], logged, rel=1e-6, abs=1e-9)
    assert_same_metrics(result["baseline"], summary["baseline"])
    assert result["settings"]["flip_test"] and (tmp_path / "eval" / "results.json").is_file()


def assert_same_metrics(got: dict, want: dict, **tolerance) -> None:
    """The same metrics, each None (undefined on this data, e.g. COCO's APl) where the other is, else close."""
    assert got.keys() == want.keys()
    assert {k for k, v in got.items() if v is None} == {k for k, v in want.items() if v is None}
    defined = [k for k, v in want.items() if v is not None]
    assert [got[k] for k in defined] == pytest.approx([want[k] for k in defined], nan_ok=True, **tolerance)


def test_training_on_synthetic_people(tmp_path):
    config = tiny_config(tmp_path, dataset="synthetic-pose", train_options={"size": 8, "image_size": 64},
                         test_options={"size": 4, "image_size": 64}, metric="AP", higher_is_better=True, epochs=1,
                         batch_size=4, codec="gaussian")
    summary = train(config, log=quiet)
    assert summary["finished"] and 0.0 <= summary["history"][-1]["test"]["AP"] <= 1.0


def test_dataset_metrics_passes_keypoint_scores_where_accepted():
    class Scored:
        num_keypoints = 2

        def __len__(self):
            return 3

        def evaluate(self, predictions, indices=None, keypoint_scores=None):
            return {"rows": float(len(predictions)), "indices": float(-1 if indices is None else sum(indices)),
                    "score": float(keypoint_scores.sum())}

    predictions = Predictions(coords=np.zeros((2, 2, 2)), scores=np.ones((2, 2)), indices=np.array([0, 2]))
    assert dataset_metrics(Scored(), predictions) == {"rows": 2.0, "indices": 2.0, "score": 4.0, "non_finite": 0}


@pytest.mark.parametrize("workers", [0, 2])
def test_gpu_augment_gives_the_same_run(tmp_path, workers):
    """--gpu-augment moves the warp and the colour jitter to the device: the same crops, so the same losses
    (the synthetic set sends no pixels: the device reads its copy of the image cache the workers fill)."""
    plain = train(tiny_config(tmp_path / "plain", epochs=2), log=quiet)
    moved = train(tiny_config(tmp_path / "moved", epochs=2, gpu_augment=True, workers=workers), log=quiet)
    for epoch in (0, 1):
        assert moved["history"][epoch]["train_loss"] == plain["history"][epoch]["train_loss"]
        assert moved["history"][epoch]["test"] == plain["history"][epoch]["test"]
