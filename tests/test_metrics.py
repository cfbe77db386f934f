"""h3r.metrics: known values on hand-computed cases, perfect predictions, bad input."""
import numpy as np
import pytest

from h3r import metrics


def test_nme_per_image_hand_computed():
    gt = np.array([[[0.0, 0.0], [10.0, 0.0]], [[0.0, 0.0], [0.0, 20.0]]])
    pred = gt.copy()
    pred[0, 0] = [3.0, 4.0]  # error 5 on a normaliser of 10 → 0.5, other point exact → mean 0.25
    pred[1, 1] = [0.0, 22.0]  # error 2 / 20 = 0.1, mean with the exact point → 0.05
    np.testing.assert_allclose(metrics.nme_per_image(pred, gt, np.array([10.0, 20.0])), [0.25, 0.05])
    np.testing.assert_allclose(metrics.nme_per_image(pred, gt, 10.0), [0.25, 0.1])


def test_visible_mask_and_pooled_nme():
    gt = np.zeros((2, 2, 2))
    pred = np.zeros((2, 2, 2))
    pred[0, 0] = [5.0, 0.0]  # image 0: errors 0.5 and 0 (normaliser 10)
    pred[1, 0] = [2.0, 0.0]  # image 1: error 0.2 on its only visible point
    pred[1, 1] = [100.0, 0.0]  # invisible, ignored
    visible = np.array([[True, True], [True, False]])
    np.testing.assert_allclose(metrics.nme_per_image(pred, gt, 10.0, visible), [0.25, 0.2])
    assert metrics.nme_pooled(pred, gt, 10.0, visible) == pytest.approx((0.5 + 0.0 + 0.2) / 3)


def test_inter_ocular_points_and_groups():
    gt = np.array([[[0.0, 0.0], [2.0, 0.0], [6.0, 0.0], [10.0, 0.0]]])
    np.testing.assert_allclose(metrics.inter_ocular(gt, 0, 3), [10.0])
    np.testing.assert_allclose(metrics.inter_ocular(gt, [0, 1], [2, 3]), [7.0])  # centroids 1 and 8


@pytest.mark.parametrize("threshold, expected", [(0.1, 0.5), (0.15, 0.25), (0.2, 0.0)])
def test_failure_rate_counts_strictly_above(threshold, expected):
    assert metrics.failure_rate(np.array([0.05, 0.1, 0.15, 0.2]), threshold) == expected


@pytest.mark.parametrize(
    "nmes, threshold, expected",
    [
        ([0.0, 0.0], 0.1, 1.0),  # perfect
        ([0.2, 0.3], 0.1, 0.0),  # every image failed
        ([0.0, 0.05], 0.1, 0.75),  # CED 0.5 on [0, 0.05), 1 on [0.05, 0.1]
        ([0.025], 0.05, 0.5),  # CED steps from 0 to 1 half way
    ],
)
def test_auc_of_step_ced(nmes, threshold, expected):
    assert metrics.auc(np.array(nmes), threshold) == pytest.approx(expected, abs=2e-3)


def test_face_metrics_perfect_and_keys():
    gt = np.random.default_rng(0).uniform(0, 100, size=(5, 98, 2))
    results = metrics.face_metrics(gt, gt, metrics.inter_ocular(gt, 60, 72), thresholds=(0.05, 0.1))
    assert results == {"nme": 0.0, "nme_pooled": 0.0, "fr@0.05": 0.0, "auc@0.05": pytest.approx(1.0),
                       "fr@0.1": 0.0, "auc@0.1": pytest.approx(1.0)}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.nme_per_image(np.zeros((2, 3, 2)), np.zeros((2, 4, 2)), 1.0), "same shape"),
        (lambda: metrics.nme_per_image(np.zeros((2, 3)), np.zeros((2, 3)), 1.0), r"pred: expected an \(N, K, 2\)"),
        (lambda: metrics.nme_per_image(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), [1.0, 0.0]), "normaliser: must be positive.*image 1"),
        (lambda: metrics.nme_per_image(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), [1.0]), "normaliser: expected one value per image"),
        (lambda: metrics.nme_pooled(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), 1.0, np.zeros((2, 3), bool)), "image 0 has no visible"),
        (lambda: metrics.nme_per_image(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), 1.0, np.ones((3, 2), bool)), "visible: expected shape"),
        (lambda: metrics.auc(np.array([]), 0.1), "nmes: expected a non-empty"),
        (lambda: metrics.failure_rate(np.array([0.1]), 0.0), "threshold: must be positive"),
        (lambda: metrics.inter_ocular(np.zeros((1, 3, 2)), 0, 3), "right: landmark index 3 out of range"),
        (lambda: metrics.mpii_head_size(np.zeros((2, 3))), "head_boxes"),
    ],
)
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_mpii_head_size_is_0_6_of_the_diagonal():
    np.testing.assert_allclose(metrics.mpii_head_size(np.array([[1.0, 1.0, 4.0, 5.0]])), [3.0])
    np.testing.assert_allclose(metrics.mpii_head_size(np.array([[[1.0, 1.0], [4.0, 5.0]]])), [3.0])


def test_pckh_perfect_is_100():
    gt = np.random.default_rng(1).uniform(0, 200, size=(3, 16, 2))
    results = metrics.pckh(gt, gt, np.ones((3, 16), bool), np.full(3, 30.0))
    assert set(results) == {"Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean", "Mean@0.1"}
    assert all(value == 100.0 for value in results.values())


def test_pckh_hand_computed():
    gt = np.zeros((2, 16, 2))
    pred = gt.copy()
    visible = np.ones((2, 16), bool)
    head_size = np.array([10.0, 10.0])  # threshold 0.5 → 5 px, Mean@0.1 → 1 px
    pred[0, 0] = [6.0, 0.0]  # r_ankle wrong in image 0
    visible[1, 0] = False  # r_ankle missing in image 1
    pred[1, 5] = [3.0, 4.0]  # l_ankle exactly at 5 px: correct at 0.5, wrong at 0.1
    pred[:, 6] = [100.0, 0.0]  # pelvis and thorax far off: excluded from the mean and from every group
    pred[:, 7] = [100.0, 0.0]
    results = metrics.pckh(pred, gt, visible, head_size)
    assert results["Ankle"] == pytest.approx(50.0)  # r_ankle 0/1, l_ankle 2/2
    assert results["Head"] == results["Knee"] == results["Wrist"] == 100.0
    assert results["Mean"] == pytest.approx(100.0 * 26 / 27)  # 14 joints × 2 − 1 missing = 27, one wrong
    assert results["Mean@0.1"] == pytest.approx(100.0 * 25 / 27)


def test_pckh_threshold_argument_moves_the_mean_only():
    gt = np.zeros((1, 16, 2))
    pred = gt.copy()
    pred[0, 9] = [4.0, 0.0]  # head top 4 px off, head size 10
    visible = np.ones((1, 16), bool)
    assert metrics.pckh(pred, gt, visible, [10.0], threshold=0.5)["Head"] == 100.0
    strict = metrics.pckh(pred, gt, visible, [10.0], threshold=0.3)
    assert strict["Head"] == 0.0 and strict["Mean"] == pytest.approx(100.0 * 13 / 14)


def test_pckh_needs_mpii_joints():
    with pytest.raises(ValueError, match="16 MPII joints"):
        metrics.pckh(np.zeros((1, 17, 2)), np.zeros((1, 17, 2)), np.ones((1, 17), bool), [1.0])


def _coco_ground_truth():
    rng = np.random.default_rng(2)

    def person(annotation_id, image_id, box, labelled=17, crowd=0):
        x, y, w, h = box
        points = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), np.full(17, 2.0)], axis=1)
        points[labelled:] = 0.0
        return {"id": annotation_id, "image_id": image_id, "category_id": 1, "bbox": list(box), "area": w * h * 0.8,
                "iscrowd": crowd, "num_keypoints": labelled, "keypoints": points.reshape(-1).tolist(),
                "segmentation": [[x, y, x + w, y, x + w, y + h]]}

    annotations = [
        person(1, 10, (10, 20, 60, 120)),
        person(2, 10, (100, 30, 50, 110), labelled=11),  # some joints unlabelled (v = 0)
        person(3, 10, (0, 0, 200, 200), crowd=1),  # crowd: ignored
        person(4, 11, (40, 40, 80, 150)),
        person(5, 11, (150, 10, 40, 40), labelled=0),  # no labelled joints: ignored
    ]
    return {
        "images": [{"id": 10, "file_name": "a.jpg", "width": 220, "height": 220},
                   {"id": 11, "file_name": "b.jpg", "width": 220, "height": 220}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }


def _detections(ground_truth, shift=0.0):
    detections = []
    for annotation in ground_truth["annotations"]:
        if annotation["iscrowd"] or annotation["num_keypoints"] == 0:
            continue
        points = np.array(annotation["keypoints"], dtype=float).reshape(17, 3)
        points[:, :2] += shift
        points[:, 2] = 1.0
        detections.append({"image_id": annotation["image_id"], "category_id": 1,
                           "keypoints": points.reshape(-1).tolist(), "score": 0.9})
    return detections


def test_coco_ap_of_ground_truth_is_one_and_quiet(capsys):
    ground_truth = _coco_ground_truth()
    detections = _detections(ground_truth)
    results = metrics.coco_keypoint_ap(ground_truth, detections)
    assert list(results) == list(metrics.COCO_STAT_NAMES)
    assert results["AP"] == pytest.approx(1.0) and results["AP50"] == pytest.approx(1.0) and results["AR"] == pytest.approx(1.0)
    assert capsys.readouterr().out == ""
    assert "bbox" not in detections[0]  # the caller's list is not modified


def test_coco_ap_drops_for_shifted_keypoints():
    ground_truth = _coco_ground_truth()
    results = metrics.coco_keypoint_ap(ground_truth, _detections(ground_truth, shift=6.0))
    assert 0.0 <= results["AP"] < 0.9


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda gt, det: det.clear(), "detections: empty"),
        (lambda gt, det: det[0].update(image_id=99), r"detections\[0\]: image_id 99 is not in"),
        (lambda gt, det: det[1].pop("score"), r"detections\[1\]: missing \['score'\]"),
        (lambda gt, det: gt.pop("categories"), "coco_gt: missing the 'categories'"),
    ],
)
def test_coco_ap_bad_input(change, message):
    ground_truth = _coco_ground_truth()
    detections = _detections(ground_truth)
    change(ground_truth, detections)
    with pytest.raises(ValueError, match=message):
        metrics.coco_keypoint_ap(ground_truth, detections)


def test_coco_stats_without_ground_truth_in_their_range_are_none():
    """COCOeval's -1 ("no ground truth in this area range") is None, shown as n/a, not a score of -1."""
    from h3r.evaluate import markdown_table

    ground_truth = _coco_ground_truth()
    ground_truth["annotations"] = [a for a in ground_truth["annotations"] if a["area"] < 96**2]  # no large person
    results = metrics.coco_keypoint_ap(ground_truth, _detections(ground_truth))
    assert results["APl"] is None and results["ARl"] is None
    assert results["AP"] == pytest.approx(1.0) and results["APm"] == pytest.approx(1.0)
    assert "| APl | n/a |" in markdown_table(results)
