"""Face readers on files written in the real formats by h3r.data.writers_face:
write → read round trips, protocol conventions, and errors that name the bad file."""
import dataclasses
import os

import h5py
import numpy as np
import pytest
import scipy.io

from h3r import metrics
from h3r.data import DATASET_NAMES, open_dataset
from h3r.data.aflw import AFLW
from h3r.data.base import Sample
from h3r.data.cofw import COFW, COFW_FLIP_PAIRS, COFW_GREY_FILES, cofw_path, read_cofw_annotations
from h3r.data.pts import W300, PtsFolder, read_pts
from h3r.data.wflw import WFLW, WFLW_ATTRIBUTES
from h3r.data.writers_face import (
    write_300w,
    write_aflw_csv,
    write_aflw_mat,
    write_cofw,
    write_pts_images,
    write_wflw,
)

IMAGE_SIZE = 40


def make_samples(count, num_keypoints, seed=0, meta=None, grey=()):
    """Random faces: landmarks inside a box inside a small random image."""
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        shape = (IMAGE_SIZE, IMAGE_SIZE + 8) if index in grey else (IMAGE_SIZE, IMAGE_SIZE + 8, 3)
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        box = np.array([4.0, 5.0, 34.0, 35.0], dtype=np.float32) + index  # 30 × 30, integral
        keypoints = rng.uniform(box[:2] + 1, box[2:] - 1, size=(num_keypoints, 2)).astype(np.float32)
        samples.append(Sample(load_image=lambda image=image: image, keypoints=keypoints,
                              visible=np.ones(num_keypoints, bool), box=box, box_p1=box,
                              meta=dict(meta[index]) if meta else {}))
    return samples


def assert_same_faces(dataset, samples, atol=2e-5):
    assert len(dataset) == len(samples)
    for index, sample in enumerate(samples):
        item = dataset[index]
        np.testing.assert_allclose(item.keypoints, sample.keypoints, atol=atol)
        assert item.keypoints.dtype == np.float32 and item.visible.all() and item.visible.shape == (dataset.num_keypoints,)
        np.testing.assert_allclose(item.box_p1, [*sample.keypoints.min(0), *sample.keypoints.max(0)], atol=atol)


def check_image(item, expected=None):
    image = item.image()
    assert image.dtype == np.uint8 and image.shape == (IMAGE_SIZE, IMAGE_SIZE + 8, 3)
    if expected is not None:
        np.testing.assert_array_equal(image, expected)


# ---------------------------------------------------------------- WFLW


def wflw_attributes(count):
    return [{name: int((index + column) % 3 == 0) for column, name in enumerate(WFLW_ATTRIBUTES)} for index in range(count)]


@pytest.fixture
def wflw_root(tmp_path):
    train_meta = [{"image_path": "0--Parade/shared.jpg"}, {"image_path": "0--Parade/shared.jpg"}, {}]
    train = make_samples(3, 98, seed=1, meta=train_meta)
    train[1].load_image = train[0].load_image  # two faces on one image
    test = make_samples(5, 98, seed=2, meta=[{"attributes": a} for a in wflw_attributes(5)])
    write_wflw(str(tmp_path), "train", train)
    write_wflw(str(tmp_path), "test", test)
    return str(tmp_path), train, test


def test_wflw_round_trip(wflw_root):
    root, train, test = wflw_root
    dataset = open_dataset("wflw", root, "train")
    assert isinstance(dataset, WFLW) and dataset.name == "wflw" and len(dataset.flip_pairs) == 44
    assert_same_faces(dataset, train)
    item = dataset[1]
    np.testing.assert_array_equal(item.box, train[1].box)  # P2 = the file's rectangle
    assert item.meta["image_path"] == "0--Parade/shared.jpg"
    assert item.meta["normaliser"] == pytest.approx(np.linalg.norm(train[1].keypoints[60] - train[1].keypoints[72]))
    check_image(dataset[0])
    test_set = open_dataset("wflw", root, "test")
    assert_same_faces(test_set, test)
    assert [test_set[i].meta["attributes"] for i in range(5)] == wflw_attributes(5)


def test_wflw_line_layout(wflw_root):
    root, train, _ = wflw_root
    with open(os.path.join(root, "WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_train.txt")) as file:
        fields = file.readline().split()
    assert len(fields) == 207
    assert float(fields[0]) == pytest.approx(train[0].keypoints[0, 0], abs=1e-5)
    assert fields[196:200] == ["4", "5", "34", "35"] and fields[200:206] == ["0"] * 6
    assert fields[206] == "0--Parade/shared.jpg"


def test_wflw_subset_files_have_the_official_197_fields(wflw_root):
    """list_98pt_test/*.txt: 196 coordinates + image name (no rectangle, no flags), as the official files."""
    root, _, test = wflw_root
    folder = os.path.join(root, "WFLW_annotations", "list_98pt_test")
    with open(os.path.join(folder, "list_98pt_test.txt")) as file:
        lines = [line.split() for line in file]
    assert len(lines) == 5 and all(len(fields) == 197 for fields in lines)
    assert float(lines[2][1]) == pytest.approx(test[2].keypoints[0, 1], abs=1e-5)
    with open(os.path.join(folder, "list_98pt_test_largepose.txt")) as file:
        assert all(len(line.split()) == 197 for line in file)


@pytest.mark.parametrize("subset", WFLW_ATTRIBUTES)
def test_wflw_subsets(wflw_root, subset):
    root, _, test = wflw_root
    column = WFLW_ATTRIBUTES.index(subset)
    members = [sample for sample, flags in zip(test, wflw_attributes(5)) if flags[subset]]
    dataset = open_dataset("wflw", root, "test", subset=subset)
    assert dataset.subset == subset
    assert_same_faces(dataset, members)
    full = WFLW(root, "test")
    np.testing.assert_array_equal(full.subsets[subset], [flags[WFLW_ATTRIBUTES[column]] == 1 for flags in wflw_attributes(5)])


def test_wflw_evaluate(wflw_root):
    dataset = WFLW(wflw_root[0], "test")
    truth = dataset.keypoints.astype(np.float64)
    perfect = dataset.evaluate(truth)
    assert perfect["nme"] == 0.0 and perfect["fr@0.1"] == 0.0 and perfect["largepose/nme"] == 0.0
    assert perfect["nme_ip"] == 0.0 and "blur/auc@0.1" in perfect
    noisy = truth + np.random.default_rng(3).normal(0, 0.5, truth.shape)
    results = dataset.evaluate(noisy)
    expected = metrics.nme_per_image(noisy, truth, metrics.inter_ocular(truth, 60, 72))
    assert results["nme"] == pytest.approx(expected.mean(), rel=1e-5)
    largepose = np.array([flags["largepose"] for flags in wflw_attributes(5)], bool)
    assert results["largepose/nme"] == pytest.approx(expected[largepose].mean(), rel=1e-5)
    subset = dataset.evaluate(noisy[[4, 1]], indices=[4, 1])
    assert subset["nme"] == pytest.approx(expected[[4, 1]].mean(), rel=1e-5)
    with pytest.raises(ValueError, match=r"predictions: expected shape \(5, 98, 2\)"):
        dataset.evaluate(truth[:, :68])


def _edit_line(path, number, edit):
    with open(path) as file:
        lines = file.readlines()
    lines[number - 1] = edit(lines[number - 1])
    with open(path, "w") as file:
        file.writelines(lines)


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (lambda line: line.rsplit(" ", 1)[0] + "\n", ValueError, r"list_98pt_rect_attr_train.txt:2: expected 207 .*got 206"),
        (lambda line: "x" + line, ValueError, r"list_98pt_rect_attr_train.txt:2: non-numeric"),
        (lambda line: line.replace(" 0 0 0 0 0 0 ", " 0 0 2 0 0 0 "), ValueError, r"train.txt:2: attribute flags must be 0 or 1"),
        (lambda line: line.replace("shared.jpg", "gone.jpg"), FileNotFoundError, r"train.txt:2: image .*gone.jpg not found"),
    ],
)
def test_wflw_malformed_line_names_file_and_line(wflw_root, edit, error, message):
    root = wflw_root[0]
    _edit_line(os.path.join(root, "WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_train.txt"), 2, edit)
    with pytest.raises(error, match=message):
        WFLW(root, "train")


def test_wflw_bad_arguments(wflw_root, tmp_path):
    with pytest.raises(ValueError, match="WFLW subset"):
        WFLW(wflw_root[0], "train", subset="blur")
    with pytest.raises(ValueError, match="WFLW split"):
        WFLW(wflw_root[0], "val")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="WFLW test: neither the official list .*list_98pt_rect_attr_test.txt nor "
                                                "HRNet's .*face_landmarks_wflw_test.csv exists"):
        WFLW(str(tmp_path / "empty"), "test")
    with pytest.raises(FileNotFoundError, match="WFLW annotation list not found: .*list_98pt_rect_attr_test.txt"):
        WFLW(str(tmp_path / "empty"), "test", source="lists")
    with pytest.raises(ValueError, match="WFLW source: expected 'lists' .* or 'csv'"):
        WFLW(str(tmp_path / "empty"), "test", source="json")


# ---------------------------------------------------------------- 300W and .pts

W300_FOLDERS = {"afw": 2, "helen/trainset": 1, "lfpw/trainset": 1, "helen/testset": 1, "lfpw/testset": 2, "ibug": 2,
                "300W/01_Indoor": 1, "300W/02_Outdoor": 2}


@pytest.fixture
def w300_root(tmp_path):
    written = {}
    for seed, (folder, count) in enumerate(W300_FOLDERS.items()):
        written[folder] = make_samples(count, 68, seed=10 + seed, meta=[{"image_path": f"img_{i}"} for i in range(count)])
        write_300w(str(tmp_path), folder, written[folder])
    # a mirrored copy without .pts (as in some downloads) is skipped
    (tmp_path / "afw" / "img_0_mirror.jpg").write_bytes((tmp_path / "afw" / "img_0.jpg").read_bytes())
    return str(tmp_path), written


@pytest.mark.parametrize(
    "split, folders",
    [
        ("train", ["afw", "helen/trainset", "lfpw/trainset"]),
        ("common", ["helen/testset", "lfpw/testset"]),
        ("challenging", ["ibug"]),
        ("full", ["helen/testset", "lfpw/testset", "ibug"]),
        ("test", ["300W/01_Indoor", "300W/02_Outdoor"]),
    ],
)
def test_300w_splits(w300_root, split, folders):
    root, written = w300_root
    dataset = open_dataset("300w", root, split)
    assert isinstance(dataset, W300) and len(dataset.flip_pairs) == 29
    assert_same_faces(dataset, [sample for folder in folders for sample in written[folder]])
    assert [dataset[i].meta["folder"] for i in range(len(dataset))] == [f for f in folders for _ in written[f]]
    item = dataset[0]
    np.testing.assert_array_equal(item.box, item.box_p1)  # no box in .pts: P1
    assert item.meta["normaliser"] == pytest.approx(np.linalg.norm(item.keypoints[36] - item.keypoints[45]))
    check_image(item)


def test_300w_pts_on_disk_is_one_based(w300_root):
    root, written = w300_root
    with open(os.path.join(root, "lfpw/testset/img_1.pts")) as file:
        lines = file.read().splitlines()
    assert lines[:3] == ["version: 1", "n_points:  68", "{"] and lines[-1] == "}" and len(lines) == 72
    x, y = map(float, lines[3].split())
    np.testing.assert_allclose([x - 1, y - 1], written["lfpw/testset"][1].keypoints[0], atol=1e-5)
    assert os.path.isfile(os.path.join(root, "lfpw/testset/img_1.png")) and os.path.isfile(os.path.join(root, "ibug/img_0.jpg"))


def test_300w_evaluate_reports_subsets_and_thresholds(w300_root):
    root, written = w300_root
    dataset = W300(root, "full")
    truth = dataset.keypoints.astype(np.float64)
    noisy = truth + np.random.default_rng(4).normal(0, 1.0, truth.shape)
    results = dataset.evaluate(noisy)
    for key in ("fr@0.05", "auc@0.05", "fr@0.08", "auc@0.08", "fr@0.1", "auc@0.1", "nme_ip", "common/nme", "challenging/nme"):
        assert key in results
    per_image = metrics.nme_per_image(noisy, truth, metrics.inter_ocular(truth, 36, 45))
    assert results["challenging/nme"] == pytest.approx(per_image[3:].mean(), rel=1e-5)  # ibug is last: 1 + 2 common, 2 ibug
    pupils = metrics.inter_ocular(truth, list(range(36, 42)), list(range(42, 48)))
    assert results["nme_ip"] == pytest.approx(metrics.nme_per_image(noisy, truth, pupils).mean(), rel=1e-5)
    assert set(W300(root, "test").evaluate(W300(root, "test").keypoints)) >= {"indoor/nme", "outdoor/nme"}


def _write_text(path, text):
    with open(path, "w") as file:
        file.write(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("version: 1\nn_points: 2\n{\n1 2\n3 4\n", r"img_0.pts:5: expected 2 point lines"),
        ("n_points: 2\n{\n1 2\n3 4\n}\n", r"img_0.pts:1: expected the header"),
        ("version: 1\nn_points: two\n{\n1 2\n}\n", r"img_0.pts:2: n_points is not an integer"),
        ("version: 1\nn_points: 2\n{\n1 2\n3\n}\n", r"img_0.pts:5: expected 2 values"),
        ("version: 1\nn_points: 2\n{\n1 2\n3 y\n}\n", r"img_0.pts:5: could not convert"),
        ("version: 1\nn_points: 2\n{\n1 2\n3 4\n}\n", r"img_0.pts: expected 68 points for 300W, got 2"),
    ],
)
def test_300w_malformed_pts_names_the_file(w300_root, text, message):
    root = w300_root[0]
    _write_text(os.path.join(root, "ibug/img_0.pts"), text)
    with pytest.raises(ValueError, match=message):
        W300(root, "challenging")


def test_300w_pts_without_image(w300_root):
    root = w300_root[0]
    os.remove(os.path.join(root, "ibug/img_1.jpg"))
    with pytest.raises(FileNotFoundError, match=r"ibug/img_1.pts: no image img_1"):
        W300(root, "full")


def test_read_pts_reads_sample_file(tmp_path):
    _write_text(tmp_path / "a.pts", "version: 1\nn_points:  2\n{\n1283.598566 276.387616\n1.5 2\n}\n\n")
    np.testing.assert_allclose(read_pts(str(tmp_path / "a.pts")), [[1282.598566, 275.387616], [0.5, 1.0]], atol=1e-4)


@pytest.mark.parametrize("num_keypoints, flip_pairs", [(29, COFW_FLIP_PAIRS), (5, ())])
def test_pts_folder_tree(tmp_path, num_keypoints, flip_pairs):
    first = make_samples(2, num_keypoints, seed=5)
    second = make_samples(1, num_keypoints, seed=6)
    write_pts_images(str(tmp_path / "a"), first, ".png")
    write_pts_images(str(tmp_path / "b" / "deeper"), second)
    dataset = open_dataset("pts", str(tmp_path))
    assert isinstance(dataset, PtsFolder) and dataset.num_keypoints == num_keypoints and dataset.flip_pairs == flip_pairs
    assert_same_faces(dataset, first + second)
    assert dataset[2].meta["image_path"] == os.path.join("b", "deeper", "image_0000.jpg")
    keypoints = dataset[0].keypoints
    if num_keypoints == 29:
        expected = np.linalg.norm(keypoints[8] - keypoints[9])
    else:
        width, height = keypoints.max(0) - keypoints.min(0)
        expected = np.sqrt(width * height)
    assert dataset[0].meta["normaliser"] == pytest.approx(expected, rel=1e-5)
    check_image(dataset[0], first[0].image())  # PNG is lossless


def test_pts_folder_rejects_mixed_layouts(tmp_path):
    write_pts_images(str(tmp_path / "a"), make_samples(1, 68))
    write_pts_images(str(tmp_path / "b"), make_samples(1, 98))
    with pytest.raises(ValueError, match=r"b/image_0000.pts: 98 points, but .*a/image_0000.pts has 68"):
        PtsFolder(str(tmp_path))


# ---------------------------------------------------------------- COFW


@pytest.fixture
def cofw_root(tmp_path):
    occluded = [np.arange(29) % 4 == index for index in range(3)]
    samples = make_samples(3, 29, seed=7, meta=[{"occluded": flags} for flags in occluded], grey=(1,))
    write_cofw(str(tmp_path), "train", samples)
    write_cofw(str(tmp_path), "test", samples[:2])
    return str(tmp_path), samples


def test_cofw_round_trip(cofw_root):
    root, samples = cofw_root
    dataset = open_dataset("cofw", root, "train")
    assert isinstance(dataset, COFW) and len(dataset.flip_pairs) == 11
    assert_same_faces(dataset, samples, atol=1e-5)
    for index, sample in enumerate(samples):
        item = dataset[index]
        np.testing.assert_allclose(item.box, sample.box, atol=1e-5)
        np.testing.assert_array_equal(item.meta["occluded"], sample.meta["occluded"])
        assert item.meta["normaliser"] == pytest.approx(np.linalg.norm(sample.keypoints[8] - sample.keypoints[9]), rel=1e-5)
    check_image(dataset[0], samples[0].image())
    grey = dataset[1].image()
    check_image(dataset[1], np.repeat(samples[1].image()[:, :, None], 3, axis=2))
    assert (grey[..., 0] == grey[..., 2]).all()
    assert len(open_dataset("cofw", root, "test")) == 2


def test_cofw_file_has_matlab_v73_layout(cofw_root):
    root, samples = cofw_root
    path = os.path.join(root, "COFW_train_color.mat")
    with open(path, "rb") as file:
        header = file.read(128)
    assert header.startswith(b"MATLAB 7.3 MAT-file") and header[-4:] == b"\x00\x02IM"
    with h5py.File(path, "r") as file:
        assert file["phisTr"].shape == (87, 3) and file["bboxesTr"].shape == (4, 3) and file["IsTr"].shape == (1, 3)
        assert file["phisTr"].attrs["MATLAB_class"] == b"double"
        np.testing.assert_allclose(file["phisTr"][0, 2], samples[2].keypoints[0, 0] + 1, atol=1e-5)  # 1-based x1
        np.testing.assert_allclose(file["phisTr"][58:, 0], samples[0].meta["occluded"])
        np.testing.assert_allclose(file["bboxesTr"][:, 0], [5, 6, 30, 30])  # x, y (1-based), w, h
        assert file[file["IsTr"][0, 0]].shape == (3, IMAGE_SIZE + 8, IMAGE_SIZE)  # MATLAB H×W×3
        assert file[file["IsTr"][0, 1]].shape == (IMAGE_SIZE + 8, IMAGE_SIZE)  # grey H×W


def test_cofw_evaluate_has_inter_pupil(cofw_root):
    dataset = COFW(cofw_root[0], "train")
    truth = dataset.keypoints.astype(np.float64)
    noisy = truth + 0.3
    results = dataset.evaluate(noisy)
    pupils = metrics.inter_ocular(truth, 16, 17)
    assert results["nme_ip"] == pytest.approx(metrics.nme_per_image(noisy, truth, pupils).mean(), rel=1e-4)
    assert results["nme"] == pytest.approx(metrics.nme_per_image(noisy, truth, metrics.inter_ocular(truth, 8, 9)).mean(), rel=1e-4)


def _rewrite_cofw(path, edit):
    with h5py.File(path, "r+") as file:
        edit(file)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.__delitem__("phisTr"), r"COFW_train_color.mat: variable 'phisTr' missing"),
        (lambda f: (f.__delitem__("bboxesTr"), f.create_dataset("bboxesTr", data=np.zeros((3, 3)))), r"'bboxesTr' has h5py shape \(3, 3\)"),
        (lambda f: f["phisTr"].__setitem__((60, 1), 3.0), r"'phisTr' record 2: occlusion flag of point 3 is 3.0"),
        (lambda f: (f.__delitem__("IsTr"), f.create_dataset("IsTr", data=np.zeros((1, 3)))), r"'IsTr' should be an N×1 cell"),
    ],
)
def test_cofw_malformed_mat_names_file_and_variable(cofw_root, edit, message):
    root = cofw_root[0]
    _rewrite_cofw(os.path.join(root, "COFW_train_color.mat"), edit)
    with pytest.raises(ValueError, match=message):
        COFW(root, "train")


def test_cofw_unreadable_or_missing(tmp_path):
    _write_text(tmp_path / "COFW_train_color.mat", "MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(ValueError, match=r"COFW_train_color.mat: cannot read as a MATLAB .mat file"):
        COFW(str(tmp_path), "train")
    with pytest.raises(FileNotFoundError, match=r"COFW .mat file not found: .*COFW_test_color.mat "
                                                r"\(nor the grayscale release's .*COFW_test.mat\)"):
        COFW(str(tmp_path), "test")


@pytest.mark.parametrize("mat_format", ["5", "7"])
def test_cofw_pre_hdf5_file_reads_as_the_v73_file(cofw_root, mat_format):
    """The same faces (a grey image, occ = 1 flags) written both ways read back bit for bit alike."""
    root, samples = cofw_root
    assert samples[1].image().ndim == 2 and samples[0].meta["occluded"].any()
    other = os.path.join(root, f"v{mat_format}")
    path = write_cofw(other, "train", samples, mat_format=mat_format)
    write_cofw(other, "test", samples[:2], mat_format=mat_format)
    with open(path, "rb") as file:
        assert file.read(19) == b"MATLAB 5.0 MAT-file"
    assert not h5py.is_hdf5(path) and h5py.is_hdf5(os.path.join(root, "COFW_train_color.mat"))
    expected = read_cofw_annotations(os.path.join(root, "COFW_train_color.mat"), "train")
    actual = read_cofw_annotations(path, "train")
    assert actual.keys() == expected.keys()
    for key, values in expected.items():
        assert actual[key].dtype == values.dtype
        np.testing.assert_array_equal(actual[key], values)
    for split in ("train", "test"):
        hdf5, pre_hdf5 = COFW(root, split), COFW(other, split)
        for attribute in ("keypoints", "boxes", "normalisers", "inter_pupil"):
            np.testing.assert_array_equal(getattr(pre_hdf5, attribute), getattr(hdf5, attribute))
        for index in range(len(hdf5)):
            np.testing.assert_array_equal(pre_hdf5[index].meta["occluded"], hdf5[index].meta["occluded"])
            image, reference = pre_hdf5[index].image(), hdf5[index].image()
            assert image.dtype == reference.dtype and image.shape == reference.shape
            np.testing.assert_array_equal(image, reference)


def test_cofw_pre_hdf5_file_has_matlab_layout(cofw_root):
    root, samples = cofw_root
    path = write_cofw(os.path.join(root, "v5"), "train", samples, mat_format="5")
    mat = scipy.io.loadmat(path)
    assert mat["IsTr"].shape == (3, 1) and mat["IsTr"].dtype == object
    assert mat["IsTr"][0, 0].shape == (IMAGE_SIZE, IMAGE_SIZE + 8, 3) and mat["IsTr"][0, 0].dtype == np.uint8  # H×W×3
    assert mat["IsTr"][1, 0].shape == (IMAGE_SIZE, IMAGE_SIZE + 8)  # grey H×W
    assert mat["phisTr"].shape == (3, 87) and mat["phisTr"].dtype == np.float64 and mat["bboxesTr"].shape == (3, 4)
    np.testing.assert_allclose(mat["phisTr"][2, 0], samples[2].keypoints[0, 0] + 1, atol=1e-5)  # 1-based x1
    np.testing.assert_allclose(mat["phisTr"][0, 58:], samples[0].meta["occluded"])
    np.testing.assert_allclose(mat["bboxesTr"][0], [5, 6, 30, 30])  # x, y (1-based), w, h


@pytest.mark.parametrize("mat_format", ["7.3", "5"])
def test_cofw_rgba_cell_reads_as_rgb_in_both_kinds(tmp_path, mat_format):
    samples = make_samples(2, 29, seed=12)
    rgba = np.dstack([samples[1].image(), np.full((IMAGE_SIZE, IMAGE_SIZE + 8), 7, np.uint8)])
    samples[1] = dataclasses.replace(samples[1], load_image=lambda: rgba)
    write_cofw(str(tmp_path), "train", samples, mat_format=mat_format)
    check_image(COFW(str(tmp_path), "train")[1], rgba[:, :, :3])


def test_cofw_grayscale_release_file_names(tmp_path):
    samples = make_samples(3, 29, seed=9, grey=(0, 1, 2))
    write_cofw(str(tmp_path), "test", samples, mat_format="5", file_name=COFW_GREY_FILES["test"])
    assert cofw_path(str(tmp_path), "test") == str(tmp_path / "COFW_test.mat")
    dataset = COFW(str(tmp_path), "test")
    assert_same_faces(dataset, samples, atol=1e-5)
    check_image(dataset[2], np.repeat(samples[2].image()[:, :, None], 3, axis=2))
    write_cofw(str(tmp_path), "test", samples[:2])  # the color file, once there, is the one read
    assert cofw_path(str(tmp_path), "test") == str(tmp_path / "COFW_test_color.mat")
    assert len(COFW(str(tmp_path), "test")) == 2


def test_cofw_pre_hdf5_file_is_loaded_once_per_process(tmp_path, monkeypatch):
    loads = []
    loadmat = scipy.io.loadmat
    monkeypatch.setattr(scipy.io, "loadmat", lambda path, **options: loads.append(path) or loadmat(path, **options))
    samples = make_samples(3, 29, seed=10)
    path = write_cofw(str(tmp_path), "train", samples, mat_format="5")
    dataset = COFW(str(tmp_path), "train")
    images = [dataset[index].image() for index in range(len(dataset))]
    assert len(loads) == 1
    images[0][:] = 0  # the caller's copy: the cached pixels stay as they were
    check_image(dataset[0], samples[0].image())
    assert len(loads) == 1
    changed = make_samples(3, 29, seed=11)
    write_cofw(str(tmp_path), "train", changed, mat_format="5")  # the same size: only the mtime tells
    status = os.stat(path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))  # a new mtime even on a coarse clock
    check_image(dataset[1], changed[1].image())
    assert len(loads) == 2


# ---------------------------------------------------------------- AFLW


@pytest.fixture
def aflw_samples():
    names = [{"image_path": f"{i % 2}/image{i:05d}.jpg"} for i in range(7)]
    samples = make_samples(7, 19, seed=8, meta=names)
    samples[4].meta["occluded"] = np.arange(19) == 3  # not frontal: a hidden landmark
    samples[5].keypoints[2] = samples[5].box[2:] + 1.0  # not frontal: a landmark outside the box
    return samples[:3], samples[3:]


def test_aflw_mat_round_trip_and_frontal(tmp_path, aflw_samples):
    train, test = aflw_samples
    write_aflw_mat(str(tmp_path), train, test, seed=1)
    dataset = open_dataset("aflw", str(tmp_path), "train", train_size=3)
    assert isinstance(dataset, AFLW) and dataset.source == "mat" and len(dataset.flip_pairs) == 8
    assert_same_faces(dataset, train)
    test_set = AFLW(str(tmp_path), "test", train_size=3)
    assert_same_faces(test_set, test)
    np.testing.assert_array_equal(test_set.subsets["frontal"], [True, False, False, True])
    np.testing.assert_array_equal(test_set[1].meta["occluded"], test[1].meta["occluded"])
    np.testing.assert_allclose(test_set[0].box, test[0].box)
    assert test_set[0].meta["normaliser"] == pytest.approx(30.0)  # √(w·h) of a 30 × 30 box
    frontal = AFLW(str(tmp_path), "frontal", train_size=3)
    assert_same_faces(frontal, [test[0], test[3]])
    results = test_set.evaluate(test_set.keypoints + np.array([3.0, 4.0]))
    assert results["nme"] == pytest.approx(5.0 / 30.0, rel=1e-5) and results["frontal/nme"] == pytest.approx(5.0 / 30.0, rel=1e-5)
    check_image(frontal[1])


def test_aflw_mat_layout(tmp_path, aflw_samples):
    train, test = aflw_samples
    write_aflw_mat(str(tmp_path), train, test, seed=1)
    mat = scipy.io.loadmat(str(tmp_path / "AFLWinfo_release.mat"))
    first = int(mat["ra"][0, 0]) - 1  # row of the first training face
    np.testing.assert_allclose(mat["bbox"][first], [4, 34, 5, 35])  # [x1, x2, y1, y2]
    np.testing.assert_allclose(mat["data"][first, 19], train[0].keypoints[0, 1], rtol=1e-6)  # 19 x, then 19 y
    assert mat["nameList"][first, 0][0] == "0/image00000.jpg"
    assert os.path.isfile(tmp_path / "flickr" / "1" / "image00001.jpg")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda mat: mat.update(ra=mat["ra"] * 0 + 1), r"'ra' must be a permutation of 1..7"),
        (lambda mat: mat.pop("mask_new"), r"field 'mask_new' missing"),
        (lambda mat: mat.update(data=mat["data"][:, :30]), r"'data' has shape \(7, 30\), expected \(7, 38\)"),
    ],
)
def test_aflw_malformed_mat(tmp_path, aflw_samples, change, message):
    path = write_aflw_mat(str(tmp_path), *aflw_samples)
    mat = {key: value for key, value in scipy.io.loadmat(path).items() if not key.startswith("__")}
    change(mat)
    scipy.io.savemat(path, mat)
    with pytest.raises(ValueError, match="AFLWinfo_release.mat: " + message):
        AFLW(str(tmp_path), "train", train_size=3)


def test_aflw_bad_train_size(tmp_path, aflw_samples):
    write_aflw_mat(str(tmp_path), *aflw_samples)
    with pytest.raises(ValueError, match="train_size: 20000 does not split the 7 faces"):
        AFLW(str(tmp_path), "train")


@pytest.mark.parametrize("content", [b"garbage", b"MATLAB 5.0 MAT-file".ljust(200, b" "), b"\x00" * 300])
def test_aflw_unreadable_mat(tmp_path, content):
    (tmp_path / "AFLWinfo_release.mat").write_bytes(content)
    with pytest.raises(ValueError, match=r"AFLWinfo_release.mat: cannot read as a MATLAB .mat file"):
        AFLW(str(tmp_path), "train", train_size=3)


def test_aflw_csv_round_trip(tmp_path, aflw_samples):
    train, test = aflw_samples
    write_aflw_csv(str(tmp_path), "train", train)
    write_aflw_csv(str(tmp_path), "frontal", test[:2])
    dataset = open_dataset("aflw", str(tmp_path), "train")
    assert dataset.source == "csv"
    assert_same_faces(dataset, train)
    np.testing.assert_allclose(dataset[1].box, train[1].box, atol=1e-5)  # square boxes survive centre + box_size
    assert dataset[1].meta["normaliser"] == pytest.approx(30.0)
    assert len(AFLW(str(tmp_path), "frontal", source="csv")) == 2
    check_image(dataset[2])
    with open(tmp_path / "face_landmarks_aflw_train.csv") as file:
        header = file.readline().strip().split(",")
    assert header[:6] == ["image_name", "scale", "box_size", "center_w", "center_h", "original_0_x"] and len(header) == 43


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (lambda line: line.rsplit(",", 1)[0] + "\n", ValueError, r"face_landmarks_aflw_train.csv:3: expected 43 columns, got 42"),
        (lambda line: line.replace(",30.000000,", ",-1,", 1), ValueError, r"face_landmarks_aflw_train.csv:3: box_size must be positive"),
        (lambda line: line.replace("image00001", "missing"), FileNotFoundError, r"train.csv:3: image .*missing.jpg not found"),
    ],
)
def test_aflw_malformed_csv(tmp_path, aflw_samples, edit, error, message):
    path = write_aflw_csv(str(tmp_path), "train", aflw_samples[0])
    _edit_line(path, 3, edit)
    with pytest.raises(error, match=message):
        AFLW(str(tmp_path), "train")


def test_aflw_without_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"AFLW: neither .*AFLWinfo_release.mat nor .*face_landmarks_aflw_test.csv"):
        AFLW(str(tmp_path), "test")


# ---------------------------------------------------------------- open_dataset


def test_open_dataset_names_and_errors(tmp_path):
    assert DATASET_NAMES == ("wflw", "300w", "pts", "cofw", "aflw", "mpii", "coco", "synthetic-face", "synthetic-pose")
    with pytest.raises(ValueError, match="dataset name: expected one of"):
        open_dataset("lfw", str(tmp_path))
    with pytest.raises(ValueError, match="wflw: root is required: .*WFLW_annotations"):
        open_dataset("wflw")
    with pytest.raises(FileNotFoundError, match="cofw: data root .*nowhere is not a folder; .*COFW_train_color.mat"):
        open_dataset("cofw", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="synthetic-face is generated in memory and takes no root"):
        open_dataset("synthetic-face", str(tmp_path))


def test_samples_decode_lazily(tmp_path):
    samples = make_samples(1, 68, meta=[{"image_path": "img_0"}])
    write_300w(str(tmp_path), "ibug", samples)
    dataset = W300(str(tmp_path), "challenging")
    os.remove(tmp_path / "ibug" / "img_0.jpg")  # nothing was decoded at construction ...
    item = dataset[0]
    with pytest.raises(FileNotFoundError, match="image not found: .*img_0.jpg"):  # ... only when asked
        item.image()
    with pytest.raises(IndexError, match="300w challenging: index 1 out of range for 1 items"):
        dataset[1]
