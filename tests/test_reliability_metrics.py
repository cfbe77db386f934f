"""Non-finite predictions are failures in every metric, and reports count them (fault probe, issue 11 group 6)."""
import numpy as np
import pytest

from h3r import metrics
from h3r.data import open_dataset
from h3r.evaluate import Predictions, dataset_metrics, markdown_table
from tests.test_metrics import _coco_ground_truth, _detections


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_failure_rate_and_auc_count_non_finite_as_failures(bad):
    nmes = np.array([bad, bad, 0.0, 0.2])
    assert metrics.failure_rate(nmes, 0.1) == 0.75  # was 0.25 for NaN: NaN > t is False
    assert metrics.auc(np.array([bad, bad])) == 0.0


def test_face_metrics_of_all_nan_predictions_are_failures():
    gt = np.random.default_rng(0).uniform(0, 100, size=(4, 5, 2))
    results = metrics.face_metrics(np.full_like(gt, np.nan), gt, 10.0, thresholds=(0.05, 0.1))
    assert results["fr@0.1"] == 1.0 and results["fr@0.05"] == 1.0
    assert results["auc@0.1"] == 0.0 and np.isnan(results["nme"]) and np.isnan(results["nme_pooled"])


def test_an_invisible_landmark_predicted_nan_is_ignored():
    gt = np.zeros((1, 2, 2))
    pred = np.array([[[1.0, 0.0], [np.nan, np.nan]]])
    visible = np.array([[True, False]])
    np.testing.assert_allclose(metrics.nme_per_image(pred, gt, 10.0, visible), [0.1])


def test_pckh_scores_non_finite_joints_incorrect():
    gt = np.zeros((1, 16, 2))
    pred = gt.copy()
    pred[0, 9] = np.nan  # head top
    pred[0, 0] = np.inf  # right ankle
    results = metrics.pckh(pred, gt, np.ones((1, 16), bool), [10.0])
    assert results["Head"] == 0.0 and results["Ankle"] == 50.0
    assert results["Mean"] == pytest.approx(100.0 * 12 / 14)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_coco_ap_never_matches_non_finite_keypoints(bad):
    ground_truth = _coco_ground_truth()
    detections = _detections(ground_truth)
    for detection in detections:
        points = np.array(detection["keypoints"]).reshape(17, 3)
        points[:, :2] = bad
        detection["keypoints"] = points.reshape(-1).tolist()
        detection["score"] = float("nan")
    results = metrics.coco_keypoint_ap(ground_truth, detections)
    assert results["AP"] == 0.0 and results["AR"] == 0.0  # NaN OKS used to match: AP 1.0
    assert np.isnan(detections[0]["keypoints"][0]) or np.isinf(detections[0]["keypoints"][0])  # input unchanged


def test_coco_ap_one_nan_keypoint_costs_only_that_keypoint():
    ground_truth = _coco_ground_truth()
    exact = metrics.coco_keypoint_ap(ground_truth, _detections(ground_truth))["AP"]
    detections = _detections(ground_truth)
    points = np.array(detections[0]["keypoints"]).reshape(17, 3)
    points[3, :2] = np.nan
    detections[0]["keypoints"] = points.reshape(-1).tolist()
    partly = metrics.coco_keypoint_ap(ground_truth, detections)["AP"]
    assert 0.0 < partly < exact


@pytest.mark.parametrize("dataset", ["synthetic-face", "synthetic-pose"])
def test_dataset_metrics_count_non_finite_items_and_the_report_shows_them(dataset):
    data = open_dataset(dataset, split="test", size=3, image_size=48)
    coords = np.stack([np.asarray(data[index].keypoints, np.float64) for index in range(3)])
    coords[1, 0] = np.nan
    coords[2] = np.inf
    results = dataset_metrics(data, Predictions(coords=coords, scores=np.ones(coords.shape[:2]),
                                                indices=np.arange(3)))
    assert results["non_finite"] == 2
    if dataset == "synthetic-face":
        assert results["fr@0.1"] == pytest.approx(2 / 3) and np.isnan(results["nme"])
    else:
        assert results["AR"] <= 2 / 3 + 1e-9 and results["AP"] < 1.0  # the all-inf item never matches
    assert "| non_finite | 2 |" in markdown_table(results)
