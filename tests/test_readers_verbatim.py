"""Every reader on records written exactly as the published files have them, not only on our
writers' output (a reader and a writer can share a misreading of a format).

Where each record comes from:

- WFLW: the 98 coordinates of the test face on ``36--Football/36_Football_americanfootball_ball_36_415.jpg``
  as mmpose's test fixture ``tests/data/wflw/test_wflw.json`` carries them (printed back with the
  6 decimals of the official lists); rectangle and flags are illustrative values in the
  published 207-field layout. The ``list_98pt_test/`` line has the published 197-field layout
  (coordinates + image name), as the README of that folder describes.
- ``.pts``: ``tests/data/300vw/001/annot/000006.pts`` of mmpose, verbatim (68 points).
- COFW: the MATLAB v7.3 layout of ``COFW_train_color.mat`` (HDF5 user block with the MATLAB
  header, ``#refs#``, an N×1 cell of uint8 images, N×87 ``phisTr``, N×4 ``bboxesTr``), built
  here with h5py, not with our writer; values illustrative. And the grayscale release's
  ``COFW_test.mat`` (``IsT``, ``phisT``, ``bboxesT``) as a compressed MATLAB v5 file (what
  ``save -v7`` writes), built with ``scipy.io.savemat``.
- AFLW: the face of ``image22568.jpg`` from mmpose's ``tests/data/aflw/test_aflw.json`` (HRNet's
  csv values: centre, scale, box_size, 19 points) as an HRNet csv row, and the same face in the
  ``AFLWinfo_release.mat`` field layout (``bbox`` ``[x1 x2 y1 y2]``, ``data`` 19 x then 19 y,
  ``mask_new``, ``nameList`` cell, ``ra``).
- MPII: two records of mmpose's ``tests/data/mpii/test_mpii.json`` (HRNet's json), verbatim,
  and a ``gt_valid.mat`` with the published variable layout.
- COCO: image 40083 and its annotation 198196 from mmpose's ``tests/data/coco/test_coco.json``
  (a copy of ``person_keypoints_val2017.json`` records), verbatim, and a detection record in
  the layout of ``COCO_val2017_detections_AP_H_56_person.json``.
"""
import json
import os
import re
import textwrap

import h5py
import numpy as np
import pytest
import scipy.io

from h3r.data import open_dataset, verify_readable
from h3r.data.images import write_image

# ------------------------------------------------------------------------------------- WFLW

WFLW_COORDINATES = (
    '440.696106 132.732559 441.125309 138.208836 441.775067 143.662576 442.838757 149.050135 444.330483 154.335484 '
    '446.199104 159.499988 448.359594 164.549883 450.707972 169.515574 453.152313 174.434890 455.663647 179.320327 '
    '458.272826 184.154116 461.018412 188.911642 463.945670 193.559255 467.223430 197.963659 471.117738 201.826457 '
    '475.751887 204.749145 480.989902 206.343046 487.065598 206.402104 492.947114 204.866338 498.297161 201.969714 '
    '503.013751 198.118490 507.157957 193.652851 510.843251 188.799396 514.129700 183.667342 516.955071 178.268478 '
    '519.216470 172.610850 520.848493 166.740574 521.950267 160.746537 522.708073 154.698484 523.292433 148.630853 '
    '523.782152 142.554803 524.208992 136.473987 524.604004 130.391006 448.863007 130.600006 454.970001 126.268997 '
    '460.808960 127.033981 466.639008 127.488991 471.871002 128.024002 471.839966 131.306992 466.730011 130.602005 '
    '460.683014 129.841980 455.032990 128.447983 484.471008 126.532997 491.312988 124.467003 497.660980 122.172989 '
    '504.834991 123.182007 510.877014 127.148010 504.898010 125.372993 497.656982 124.851997 491.562012 127.464005 '
    '484.731995 129.934998 478.601990 137.615005 478.797445 144.648194 478.710781 151.672784 479.648263 158.477047 '
    '472.342987 162.587006 476.080474 163.443556 479.895523 163.767872 484.256557 162.987089 488.335907 161.220047 '
    '454.908997 139.330002 457.994713 139.253938 461.081185 139.258667 465.092628 138.585731 469.109314 137.906326 '
    '465.638515 140.893484 461.276336 142.038503 457.943840 141.053913 488.993011 136.039993 492.807490 136.399268 '
    '496.594490 136.981365 500.786029 137.416710 504.984009 137.048096 501.171214 139.364812 496.775512 139.941385 '
    '492.595083 138.593753 468.338989 177.639496 472.576080 175.232479 477.206920 173.776125 480.569762 173.825898 '
    '483.565578 174.109503 490.367366 175.431598 496.381042 178.965042 491.802489 182.339998 486.685901 184.599911 '
    '481.033928 184.016885 476.397867 182.850118 472.609444 179.868230 469.541992 177.462006 474.959022 175.385376 '
    '480.747386 175.489098 488.637565 175.736854 495.716522 179.025070 488.642736 177.624670 481.422413 177.622520 '
    '475.491142 176.514907 461.279777 140.890199 496.453474 137.763648 '
).strip()
WFLW_IMAGE = "36--Football/36_Football_americanfootball_ball_36_415.jpg"
WFLW_LINE_207 = f"{WFLW_COORDINATES} 421 102 547 223 0 0 0 0 0 1 {WFLW_IMAGE}\n"  # coords, rect, 6 flags, name
WFLW_LINE_197 = f"{WFLW_COORDINATES} {WFLW_IMAGE}\n"  # list_98pt_test/*.txt: coords, name


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        file.write(text)


def _image(path, height=24, width=32, grey=False):
    rng = np.random.default_rng(len(str(path)))
    shape = (height, width) if grey else (height, width, 3)
    write_image(path, rng.integers(0, 256, size=shape, dtype=np.uint8))


@pytest.fixture
def wflw_root(tmp_path):
    annotations = tmp_path / "WFLW_annotations"
    _write(annotations / "list_98pt_rect_attr_train_test" / "list_98pt_rect_attr_train.txt", WFLW_LINE_207)
    _write(annotations / "list_98pt_rect_attr_train_test" / "list_98pt_rect_attr_test.txt", WFLW_LINE_207)
    _write(annotations / "list_98pt_test" / "list_98pt_test.txt", WFLW_LINE_197)
    _write(annotations / "list_98pt_test" / "list_98pt_test_blur.txt", WFLW_LINE_197)
    _image(tmp_path / "WFLW_images" / WFLW_IMAGE)
    return tmp_path


def test_wflw_official_lines(wflw_root):
    assert len(WFLW_LINE_207.split()) == 207 and len(WFLW_LINE_197.split()) == 197
    dataset = open_dataset("wflw", str(wflw_root), "train")
    item = dataset[0]
    np.testing.assert_allclose(item.keypoints[0], [440.696106, 132.732559], atol=1e-4)
    np.testing.assert_allclose(item.keypoints[97], [496.453474, 137.763648], atol=1e-4)
    np.testing.assert_array_equal(item.box, [421, 102, 547, 223])
    assert item.meta["attributes"] == {"largepose": 0, "expression": 0, "illumination": 0, "makeup": 0,
                                       "occlusion": 0, "blur": 1}
    assert item.meta["image_path"] == WFLW_IMAGE
    verify_readable(dataset)


def test_wflw_official_subset_list_has_197_fields(wflw_root):
    """The published list_98pt_test_<attribute>.txt: coordinates + image name, no rectangle or flags.
    (Before: "expected 207 fields, got 197".)"""
    dataset = open_dataset("wflw", str(wflw_root), "test", subset="blur")
    assert len(dataset) == 1 and dataset.subset == "blur"
    item = dataset[0]
    np.testing.assert_allclose(item.keypoints[60], [454.908997, 139.330002], atol=1e-4)
    np.testing.assert_array_equal(item.box, [421, 102, 547, 223])  # from the matching test line
    assert item.meta["attributes"]["blur"] == 1
    assert "list_98pt_test_blur.txt:1" in item.meta["annotation"]
    assert "list_98pt_rect_attr_test.txt:1" in item.meta["annotation"]


def test_wflw_subset_line_without_match_names_itself(wflw_root):
    moved = WFLW_LINE_197.replace("440.696106 132.732559", "450.696106 132.732559", 1)
    _write(wflw_root / "WFLW_annotations" / "list_98pt_test" / "list_98pt_test_blur.txt", WFLW_LINE_197 + moved)
    with pytest.raises(ValueError, match=r"list_98pt_test_blur.txt:2: no face of .*list_98pt_rect_attr_test.txt "
                                         r"on image 36--Football/.* has these landmarks .*line 1.* differs by 10 px"):
        open_dataset("wflw", str(wflw_root), "test", subset="blur")
    other = WFLW_LINE_197.replace(WFLW_IMAGE, "0--Parade/elsewhere.jpg")
    _write(wflw_root / "WFLW_annotations" / "list_98pt_test" / "list_98pt_test_blur.txt", other)
    with pytest.raises(ValueError, match=r"list_98pt_test_blur.txt:1: image 0--Parade/elsewhere.jpg is not in "):
        open_dataset("wflw", str(wflw_root), "test", subset="blur")


def test_wflw_subset_list_with_the_main_layout_is_rejected(wflw_root):
    _write(wflw_root / "WFLW_annotations" / "list_98pt_test" / "list_98pt_test_blur.txt", WFLW_LINE_207)
    with pytest.raises(ValueError, match=r"list_98pt_test_blur.txt:1: expected 197 .*got 207"):
        open_dataset("wflw", str(wflw_root), "test", subset="blur")


# ---------------------------------------------------------------------------------- .pts

PTS_300VW_000006 = """version: 1
n_points: 68
{
743.224 197.764
744.067 213.767
747.494 229.362
752.659 245.009
758.92 259.223
767.901 272.356
778.802 283.44
791.215 292.702
805.644 296.179
822.777 294.269
840.544 285.779
855.834 273.961
867.449 258.999
873.996 241.046
876.935 222.009
878.567 202.398
878.29 182.498
744.007 167.503
750.098 162.094
758.537 160.906
767.509 162.778
775.861 167.055
801.008 165.555
812.685 160.407
825.422 158.165
838.176 160.521
849.128 166.753
789.759 186.16
789.699 198.174
789.273 210.165
788.975 222.281
782.603 232.478
787.429 234.27
792.678 235.337
798.527 234.133
804.664 232.902
755.736 189.198
761.237 184.449
769.829 184.474
778 190.301
769.807 192.891
761.326 193.176
811.185 189.658
818.224 183.243
827.82 183.095
836.647 187.198
829.057 191.518
819.507 191.948
778.412 257.689
782.738 250.599
789.035 246.573
794.615 248.185
800.403 246.606
811.204 250.488
822.537 256.574
813.083 264.925
803.39 268.215
796.966 268.73
790.759 267.758
784.142 264.276
782.377 257.528
789.969 255.358
795.418 255.634
801.363 255.421
817.652 256.63
801.613 256.589
795.658 256.775
790.094 256.132
}
"""


def test_300w_reads_a_published_pts_file(tmp_path):
    _write(tmp_path / "ibug" / "image_006.pts", PTS_300VW_000006)
    _image(tmp_path / "ibug" / "image_006.jpg")
    dataset = open_dataset("300w", str(tmp_path), "challenging")
    item = dataset[0]
    np.testing.assert_allclose(item.keypoints[0], [742.224, 196.764], atol=1e-3)  # 1-based in the file
    np.testing.assert_allclose(item.keypoints[39], [777.0, 189.301], atol=1e-3)  # the integer token "778"
    assert item.meta["normaliser"] == pytest.approx(np.hypot(836.647 - 755.736, 187.198 - 189.198), rel=1e-5)


@pytest.mark.parametrize("extension", [".ppm", ".pgm", ".tif", ".tiff", ".gif", ".webp", ".JPG", ".PNG", ".bmp"])
def test_pts_folder_finds_any_pillow_image(tmp_path, extension):
    """A .pts beside a .ppm (or .tif, .gif, .webp, an upper-case .JPG ...) is read.
    (Before: only jpg/jpeg/png/bmp, and a .pts next to a .ppm was an error.)"""
    _write(tmp_path / "faces" / "einstein.pts", PTS_300VW_000006)
    _image(tmp_path / "faces" / f"einstein{extension}", grey=extension == ".pgm")
    dataset = open_dataset("pts", str(tmp_path))
    assert dataset[0].meta["image_path"] == os.path.join("faces", f"einstein{extension}")
    assert dataset.num_keypoints == 68
    verify_readable(dataset)


def test_pts_with_two_images_of_one_stem_is_ambiguous(tmp_path):
    _write(tmp_path / "a.pts", PTS_300VW_000006)
    _image(tmp_path / "a.jpg")
    _image(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"a.pts: several images share its stem: a.jpg, a.png"):
        open_dataset("pts", str(tmp_path))


# ------------------------------------------------------------------------------------- COFW

MATLAB_73_HEADER = ("MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Oct  7 12:00:00 2013 "
                    "HDF5 schema 1.00 .").encode("ascii").ljust(116, b" ") + b" " * 8 + b"\x00\x02IM"


def write_matlab_cofw(path, images, phis, boxes, row_cell=False):
    """What MATLAB's ``save -v7.3`` writes for IsTr (N×1 cell; ``row_cell``: a 1×N one), phisTr
    (N×87), bboxesTr (N×4)."""
    with h5py.File(path, "w", userblock_size=512) as file:
        refs = file.create_group("#refs#")
        cell = file.create_dataset("IsTr", (len(images), 1) if row_cell else (1, len(images)), dtype=h5py.ref_dtype)
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
        for index, image in enumerate(images):
            stored = refs.create_dataset("abcdefgh"[index], data=image.T)  # MATLAB H×W×3 → HDF5 (3, W, H)
            stored.attrs["MATLAB_class"] = np.bytes_("uint8")
            cell[(index, 0) if row_cell else (0, index)] = stored.ref
        for name, matrix in (("phisTr", phis), ("bboxesTr", boxes)):
            dataset = file.create_dataset(name, data=np.asarray(matrix, dtype=np.float64).T)
            dataset.attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as file:
        file.write(MATLAB_73_HEADER)


def cofw_phis(seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(10, 30, 29), rng.uniform(8, 20, 29)
    occluded = (np.arange(29) % 5 == 0).astype(float)
    return np.concatenate([x, y, occluded])  # one MATLAB row: x1..x29 y1..y29 occ1..occ29


def assert_cofw_faces(dataset, phis: np.ndarray, images: list, second_box: list) -> None:
    """The two faces of ``phis`` (MATLAB rows, 1-based), their images (a 2-D one is grey) and the
    second face's box (x1, y1, x2, y2, 0-based)."""
    assert len(dataset) == 2
    np.testing.assert_allclose(dataset[1].keypoints[:, 0], phis[1, :29] - 1, atol=1e-5)
    np.testing.assert_allclose(dataset[1].keypoints[:, 1], phis[1, 29:58] - 1, atol=1e-5)
    np.testing.assert_array_equal(dataset[0].meta["occluded"], phis[0, 58:] == 1)
    np.testing.assert_allclose(dataset[1].box, second_box)
    for index, image in enumerate(images):
        expected = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
        np.testing.assert_array_equal(dataset[index].image(), expected)
    verify_readable(dataset, count=2)


@pytest.mark.parametrize("row_cell", [False, True])
def test_cofw_matlab_v73_layout(tmp_path, row_cell):
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (24, 32), dtype=np.uint8)  # some "color" images are grey
    phis = np.stack([cofw_phis(0), cofw_phis(1)])
    boxes = np.array([[8.0, 6.0, 24.0, 16.0], [9.5, 7.0, 20.0, 15.0]])  # x, y, w, h (1-based)
    write_matlab_cofw(str(tmp_path / "COFW_train_color.mat"), [colour, grey], phis, boxes, row_cell=row_cell)
    assert_cofw_faces(open_dataset("cofw", str(tmp_path), "train"), phis, [colour, grey], [8.5, 6.0, 28.5, 21.0])


def test_cofw_grayscale_release_as_matlab_v7(tmp_path):
    rng = np.random.default_rng(2)
    greys = [rng.integers(0, 256, (24, 32), dtype=np.uint8), rng.integers(0, 256, (20, 30), dtype=np.uint8)]
    cell = np.empty((2, 1), dtype=object)  # MATLAB N×1 cell
    cell[0, 0], cell[1, 0] = greys
    phis = np.stack([cofw_phis(2), cofw_phis(3)])
    boxes = np.array([[8.0, 6.0, 24.0, 16.0], [9.5, 7.0, 20.0, 12.0]])  # x, y, w, h (1-based)
    scipy.io.savemat(tmp_path / "COFW_test.mat", {"IsT": cell, "phisT": phis, "bboxesT": boxes}, do_compression=True)
    assert_cofw_faces(open_dataset("cofw", str(tmp_path), "test"), phis, greys, [8.5, 6.0, 28.5, 18.0])


# ----------------------------------------------------------------- HRNet csv files of 300W and WFLW

# ChoiDM/PIPnet data/300w/face_landmarks_300w_valid_challenge.csv (HRNet's file): the header and the first row.
W300_CSV_HEADER = "image_name,scale,center_w,center_h," + ",".join(
    f"original_{index}_{axis}" for index in range(68) for axis in "xy")
W300_CSV_ROW = (
    "ibug/image_99.jpg,0.55,364.5,112.0,327.832346,57.357609,318.69515099999995,73.466566,312.411702,93.417362,"
    "312.79627999999997,114.89344399999999,319.824966,130.47247099999998,332.187777,144.28698400000002,"
    "348.94809399999997,155.75739199999998,361.894127,163.463176,375.252293,166.942542,383.557961,163.77598600000002,"
    "387.517597,154.936757,391.937212,143.273153,398.818731,131.898435,405.337777,122.507168,411.9083,"
    "110.93925300000001,412.077574,99.733811,410.822699,90.04821,346.48618999999997,65.173606,356.749569,"
    "59.473378000000004,368.803199,57.493561,379.767599,61.745716,389.18642,69.186534,401.83448799999996,72.421227,"
    "406.52088399999997,70.029276,410.45659700000004,67.90229000000001,414.224851,66.187438,416.56895699999995,"
    "68.045827,395.994354,78.91272,397.20138399999996,88.524739,399.085511,97.94355999999999,401.236419,107.555578,"
    "380.102517,109.125079,386.26090800000003,113.859321,392.879276,116.97621399999998,398.529842,115.237439,"
    "402.800475,111.90523999999999,355.058639,73.048664,364.839932,68.722925,372.69106800000003,70.09196700000001,"
    "377.375648,80.39016099999999,370.32122400000003,76.693674,362.54548700000004,74.61635,397.1278,82.852065,"
    "402.875874,78.360682,408.436872,77.48719,410.024173,82.633129,407.391179,83.140953,402.465556,82.923833,"
    "354.455124,122.190726,371.601837,120.49979599999999,385.92417400000005,120.306599,391.022702,122.481429,"
    "396.38074900000004,121.65898,397.924512,124.244128,396.285058,130.448548,391.477234,138.492881,387.784378,"
    "142.814989,382.59015899999997,142.743221,376.262494,140.205918,365.735966,135.088913,357.11204100000003,"
    "123.204558,383.31510299999997,125.861474,389.353879,126.46498899999999,393.433129,127.16601000000001,"
    "394.835171,130.03823,389.762381,136.077008,385.029955,136.560908,378.821904,134.846055")


def test_300w_hrnet_csv_row(tmp_path):
    _write(tmp_path / "face_landmarks_300w_valid_challenge.csv", W300_CSV_HEADER + "\n" + W300_CSV_ROW + "\n")
    _image(tmp_path / "images" / "ibug" / "image_99.jpg", height=240, width=480)
    dataset = open_dataset("300w", str(tmp_path), "challenging")
    assert dataset.source == "csv" and len(dataset) == 1
    item = dataset[0]
    points = np.array(W300_CSV_ROW.split(",")[4:], dtype=np.float64).reshape(68, 2)
    np.testing.assert_allclose(item.keypoints, points, rtol=1e-6)  # as written, as HRNet reads them
    assert tuple(item.keypoints[0]) == pytest.approx((327.832346, 57.357609))
    # HRNet's box: side 200 * scale around the centre, the tight landmark box's larger side rounded outwards
    np.testing.assert_allclose(item.box, [364.5 - 55, 112 - 55, 364.5 + 55, 112 + 55])
    low, high = np.floor(points.min(axis=0)), np.ceil(points.max(axis=0))
    assert (high - low).max() == 110 and tuple((low + high) / 2) == (364.5, 112.0)
    assert item.meta["normaliser"] == pytest.approx(np.linalg.norm(points[36] - points[45]), rel=1e-6)
    assert item.meta["annotation"].endswith("face_landmarks_300w_valid_challenge.csv:2")
    verify_readable(dataset)


def test_300w_hrnet_csv_full_split_reports_its_subsets(tmp_path):
    helen = W300_CSV_ROW.replace("ibug/image_99.jpg", "helen/testset/296814969_3.jpg", 1)
    _write(tmp_path / "face_landmarks_300w_valid.csv", "\n".join([W300_CSV_HEADER, helen, W300_CSV_ROW]) + "\n")
    _image(tmp_path / "images" / "ibug" / "image_99.jpg")
    _image(tmp_path / "images" / "helen" / "testset" / "296814969_3.jpg")
    full = open_dataset("300w", str(tmp_path), "full")
    assert {name: mask.tolist() for name, mask in full.subsets.items()} == {
        "common": [True, False], "challenging": [False, True]}
    results = full.evaluate(np.stack([full[0].keypoints, full[1].keypoints + 1.0]))
    assert results["common/nme"] == 0.0 and results["challenging/nme"] > 0
    with pytest.raises(FileNotFoundError, match="300W test: neither the iBUG folders .* nor HRNet's .*face_landmarks_300w_test.csv exist"):
        open_dataset("300w", str(tmp_path), "test")
    with pytest.raises(ValueError, match="300W source: expected 'pts' .* or 'csv'"):
        open_dataset("300w", str(tmp_path), "full", source="json")
    _write(tmp_path / "face_landmarks_300w_valid.csv", W300_CSV_HEADER + "\n" + W300_CSV_ROW.rsplit(",", 1)[0] + "\n")
    with pytest.raises(ValueError, match=r"face_landmarks_300w_valid.csv:2: expected 140 columns, got 139"):
        open_dataset("300w", str(tmp_path), "full")


def test_300w_hrnet_csv_finds_the_images_the_ibug_download_names_otherwise(tmp_path):
    """HRNet's csv names ibug/image_092_01.jpg and Test/0{1,2}_*/; the iBUG download has
    "ibug/image_092 _01.jpg" (a space) and 300W/0{1,2}_*/: images/ may hold the download as it is."""
    renamed = W300_CSV_ROW.replace("ibug/image_99.jpg", "ibug/image_092_01.jpg", 1)
    _write(tmp_path / "face_landmarks_300w_valid_challenge.csv", W300_CSV_HEADER + "\n" + renamed + "\n")
    _image(tmp_path / "images" / "ibug" / "image_092 _01.jpg")
    challenging = open_dataset("300w", str(tmp_path), "challenging")
    assert challenging[0].meta["image_path"] == "ibug/image_092_01.jpg"  # as the csv writes it
    np.testing.assert_array_equal(challenging[0].image().shape, (24, 32, 3))

    rows = [W300_CSV_ROW.replace("ibug/image_99.jpg", f"Test/{folder}", 1)
            for folder in ("01_Indoor/indoor_001.png", "02_Outdoor/outdoor_044.png")]
    _write(tmp_path / "face_landmarks_300w_test.csv", "\n".join([W300_CSV_HEADER, *rows]) + "\n")
    _image(tmp_path / "images" / "300W" / "01_Indoor" / "indoor_001.png")
    _image(tmp_path / "images" / "Test" / "02_Outdoor" / "outdoor_044.png")  # as the csv names it: read so
    test = open_dataset("300w", str(tmp_path), "test")
    assert {name: mask.tolist() for name, mask in test.subsets.items()} == {"indoor": [True, False],
                                                                           "outdoor": [False, True]}
    verify_readable(test, count=None)
    os.remove(tmp_path / "images" / "300W" / "01_Indoor" / "indoor_001.png")
    with pytest.raises(FileNotFoundError, match=r"face_landmarks_300w_test.csv:2: image .*images/Test/01_Indoor/"
                                                r"indoor_001.png not found \(nor .*images/300W/01_Indoor/indoor_001.png\)"):
        open_dataset("300w", str(tmp_path), "test")


# ------------------------------------------------- the same files as other tools save them

def _variants(text: str) -> dict[str, bytes]:
    """``text`` as Windows editors (a byte-order mark, CRLF) and old Mac tools (CR) may save it."""
    data = text.encode()
    return {"bom+crlf": b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n"), "cr": data.replace(b"\n", b"\r")}


@pytest.mark.parametrize("variant", ["bom+crlf", "cr"])
def test_text_files_saved_with_a_byte_order_mark_or_other_line_ends_read_the_same(tmp_path, variant):
    plain, saved = tmp_path / "plain", tmp_path / "saved"
    for root in (plain, saved):
        _image(root / "WFLW_images" / WFLW_IMAGE)
        _image(root / "ibug" / "image_006.jpg")
        _image(root / "csv" / "images" / "ibug" / "image_99.jpg")
        _image(root / "coco" / "val2017" / "000000040083.jpg")
    files = {
        "WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_train.txt": WFLW_LINE_207 * 2,
        "ibug/image_006.pts": PTS_300VW_000006,
        "csv/face_landmarks_300w_valid_challenge.csv": W300_CSV_HEADER + "\n" + W300_CSV_ROW + "\n",
        "coco/annotations/person_keypoints_val2017.json": json.dumps(
            {"images": [COCO_IMAGE], "annotations": [COCO_ANNOTATION], "categories": [COCO_CATEGORY]}, indent=1),
    }
    for name, text in files.items():
        _write(plain / name, text)
        os.makedirs(os.path.dirname(saved / name), exist_ok=True)
        (saved / name).write_bytes(_variants(text)[variant])
    for dataset, folder, split in (("wflw", "", "train"), ("300w", "", "challenging"), ("300w", "csv", "challenging"),
                                   ("coco", "coco", "val")):
        expected, got = (open_dataset(dataset, str(root / folder), split) for root in (plain, saved))
        assert len(got) == len(expected) > 0, dataset
        for index in range(len(got)):
            np.testing.assert_array_equal(got[index].keypoints, expected[index].keypoints)
            np.testing.assert_array_equal(got[index].box, expected[index].box)


def test_pts_folders_skip_what_macos_archives_add(tmp_path):
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\xff\xfe"  # a ._name file's start
    _write(tmp_path / "faces" / "einstein.pts", PTS_300VW_000006)
    _image(tmp_path / "faces" / "einstein.jpg")
    for name in ("faces/._einstein.pts", "faces/._einstein.jpg", "__MACOSX/faces/._einstein.pts",
                 "__MACOSX/faces/._einstein.jpg"):
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        (tmp_path / name).write_bytes(apple_double)
    dataset = open_dataset("pts", str(tmp_path))
    assert len(dataset) == 1 and dataset[0].meta["image_path"] == os.path.join("faces", "einstein.jpg")


WFLW_CSV_HEADER = "image_name,scale,center_w,center_h," + ",".join(
    f"original_{index}_{axis}" for index in range(98) for axis in "xy")


def _wflw_csv_row(name, points):
    """A row as HRNet's WFLW csv writes it: centre and scale from the landmark box rounded outwards."""
    low, high = np.floor(points.min(axis=0)), np.ceil(points.max(axis=0))
    centre, scale = (low + high) / 2, (high - low).max() / 200
    return ",".join([name, repr(float(scale)), repr(float(centre[0])), repr(float(centre[1]))]
                    + [repr(float(value)) for value in points.reshape(-1)])


def test_wflw_hrnet_csv_rows_and_subsets(tmp_path):
    points = np.array(WFLW_COORDINATES.split(), dtype=np.float64).reshape(98, 2)
    other = "2--Demonstration/2_Demonstration_Demonstrators_2_1.jpg"
    rows = [_wflw_csv_row(WFLW_IMAGE, points), _wflw_csv_row(other, points + 3)]
    _write(tmp_path / "face_landmarks_wflw_test.csv", "\n".join([WFLW_CSV_HEADER, *rows]) + "\n")
    _write(tmp_path / "face_landmarks_wflw_test_blur.csv", "\n".join([WFLW_CSV_HEADER, rows[1]]) + "\n")
    _image(tmp_path / "images" / WFLW_IMAGE)
    _image(tmp_path / "images" / other)
    test = open_dataset("wflw", str(tmp_path), "test")
    assert test.source == "csv" and len(test) == 2
    np.testing.assert_allclose(test[0].keypoints, points, rtol=1e-6)
    assert test.subsets == {"blur": test.subsets["blur"]} and test.subsets["blur"].tolist() == [False, True]
    assert test[0].meta["normaliser"] == pytest.approx(np.linalg.norm(points[60] - points[72]), rel=1e-6)
    blur = open_dataset("wflw", str(tmp_path), "test", subset="blur")
    assert len(blur) == 1 and blur[0].meta["image_path"] == other
    verify_readable(test, None)
    _write(tmp_path / "face_landmarks_wflw_test_blur.csv",
           "\n".join([WFLW_CSV_HEADER, _wflw_csv_row(other, points + 9)]) + "\n")
    with pytest.raises(ValueError, match="face_landmarks_wflw_test_blur.csv:2: no face of .*face_landmarks_wflw_test.csv"):
        open_dataset("wflw", str(tmp_path), "test")
    with pytest.raises(FileNotFoundError, match="WFLW train: neither the official list .* nor HRNet's .*face_landmarks_wflw_train.csv exists"):
        open_dataset("wflw", str(tmp_path), "train")


# ------------------------------------------------------------------------------------- AFLW

AFLW_IMAGE = "3/image22568.jpg"
AFLW_POINTS = [  # mmpose tests/data/aflw/test_aflw.json, face 3 (x, y)
    (337.28341384863, 205.78904991948002), (370.46215780998, 203.18679549113997), (400.38808373591, 210.99355877617),
    (481.70853462158, 217.49919484702), (518.7906602254401, 210.99355877617), (549.3671497584501, 223.35426731079),
    (359.40257648952996, 253.28019323671), (391.28019323671, 254.58132045089002), (419.25442834138, 261.08695652174),
    (479.10628019324, 259.78582930757005), (507.08051529790976, 255.88244766506), (533.10305958132, 258.4847020934),
    (404.29146537842, 323.54106280192997), (443.32528180354007, 338.5040257649), (483.66022544283, 327.44444444444),
    (381.52173913043, 374.28502415459), (443.32528180354007, 376.23671497584996), (507.73107890499, 372.98389694042),
    (451.0, 478.0),
]
AFLW_CSV_HEADER = "image_name,scale,box_size,center_w,center_h," + ",".join(
    f"original_{index}_{axis}" for index in range(19) for axis in "xy")
AFLW_CSV_ROW = f"flickr/{AFLW_IMAGE},1.81,362.0,449.0,321.0," + ",".join(f"{x!r},{y!r}" for x, y in AFLW_POINTS)


def test_aflw_hrnet_csv_row(tmp_path):
    _write(tmp_path / "face_landmarks_aflw_test.csv", AFLW_CSV_HEADER + "\n" + AFLW_CSV_ROW + "\n")
    _image(tmp_path / "images" / "flickr" / AFLW_IMAGE)
    dataset = open_dataset("aflw", str(tmp_path), "test")
    item = dataset[0]
    np.testing.assert_allclose(item.keypoints, AFLW_POINTS, rtol=1e-6)
    np.testing.assert_allclose(item.box, [449 - 181, 321 - 181, 449 + 181, 321 + 181])
    assert item.meta["normaliser"] == 362.0  # box_size, as HRNet / mmpose
    verify_readable(dataset)


def test_aflw_info_release_mat_layout(tmp_path):
    points = np.array(AFLW_POINTS)
    data = np.stack([np.concatenate([points[:, 0], points[:, 1]]),
                     np.concatenate([points[:, 0] + 5, points[:, 1] + 5])])  # N×38: 19 x, then 19 y
    names = np.empty((2, 1), dtype=object)
    names[:, 0] = [AFLW_IMAGE, "0/image00002.jpg"]
    mask = np.ones((2, 19))
    mask[1, 4] = 0
    scipy.io.savemat(tmp_path / "AFLWinfo_release.mat", {
        "bbox": np.array([[268.0, 630.0, 140.0, 502.0], [273.0, 635.0, 145.0, 507.0]]),  # x1 x2 y1 y2
        "data": data, "mask_new": mask, "nameList": names, "ra": np.array([[2.0, 1.0]])})
    _image(tmp_path / "flickr" / AFLW_IMAGE)
    _image(tmp_path / "flickr" / "0" / "image00002.jpg")
    train = open_dataset("aflw", str(tmp_path), "train", train_size=1)  # ra(1) = 2: the second face
    np.testing.assert_allclose(train[0].keypoints, points + 5, rtol=1e-6)
    assert train[0].meta["occluded"][4] and train[0].meta["image_path"] == "0/image00002.jpg"
    test = open_dataset("aflw", str(tmp_path), "test", train_size=1)
    np.testing.assert_allclose(test[0].box, [268, 140, 630, 502])
    assert test[0].meta["normaliser"] == pytest.approx(362.0)


def _aflw_mat(folder, names, points=np.array(AFLW_POINTS), box=(268.0, 630.0, 140.0, 502.0)):
    cell = np.empty((len(names), 1), dtype=object)
    cell[:, 0] = names
    data = np.tile(np.concatenate([points[:, 0], points[:, 1]]), (len(names), 1))
    scipy.io.savemat(folder / "AFLWinfo_release.mat", {
        "bbox": np.tile(np.array(box), (len(names), 1)), "data": data, "mask_new": np.ones((len(names), 19)),
        "nameList": cell, "ra": np.arange(1.0, len(names) + 1)[None]})


def test_aflw_mat_image_names_are_read_as_written_else_as_jpg(tmp_path):
    """``nameList`` lists some images as ``.png`` (the raw AFLW flickr copies have them so); SAN's
    converted copies are all ``.jpg``: the name as written first, then its ``.jpg``, else an error naming both."""
    _aflw_mat(tmp_path, ["0/image00013.png", "2/image04010.jpg", "3/image20001.png"])
    _image(tmp_path / "flickr" / "0" / "image00013.png")
    _image(tmp_path / "flickr" / "2" / "image04010.jpg")
    _image(tmp_path / "flickr" / "3" / "image20001.jpg")  # listed as .png, converted to .jpg
    train = open_dataset("aflw", str(tmp_path), "train", train_size=2)
    assert [train[i].meta["image_path"] for i in range(2)] == ["0/image00013.png", "2/image04010.jpg"]
    test = open_dataset("aflw", str(tmp_path), "test", train_size=2)
    assert test[0].meta["image_path"] == "3/image20001.jpg"
    verify_readable(train, None), verify_readable(test, None)
    os.remove(tmp_path / "flickr" / "3" / "image20001.jpg")
    missing = re.escape(f"AFLWinfo_release.mat: nameList{{3}}: image {tmp_path / 'flickr' / '3' / 'image20001.png'} "
                        f"not found (nor {tmp_path / 'flickr' / '3' / 'image20001.jpg'})")
    with pytest.raises(FileNotFoundError, match=missing):
        open_dataset("aflw", str(tmp_path), "test", train_size=2)


def test_aflw_frontal_rule_in_the_files_float64(tmp_path):
    """SAN's check_front compares the .mat's float64 values: a landmark 1e-5 px inside the box edge
    is inside (in float32 it would round onto the edge, and the face would leave AFLW-Frontal)."""
    points = np.array(AFLW_POINTS)
    points[3, 0] = 629.99999  # the box's x2 is 630
    _aflw_mat(tmp_path, [AFLW_IMAGE, AFLW_IMAGE], points)
    _image(tmp_path / "flickr" / AFLW_IMAGE)
    assert len(open_dataset("aflw", str(tmp_path), "frontal", train_size=1)) == 1
    test = open_dataset("aflw", str(tmp_path), "test", train_size=1)
    assert test.subsets["frontal"].tolist() == [True]


# ------------------------------------------------------------------------------------- MPII

MPII_RECORDS = textwrap.dedent("""\
    [
        {
            "joints_vis": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            "joints": [
                [804.0, 711.0], [816.0, 510.0], [908.0, 438.0], [1040.0, 454.0], [906.0, 528.0], [883.0, 707.0],
                [974.0, 446.0], [985.0, 253.0], [982.7591, 235.9694], [962.2409, 80.0306], [869.0, 214.0],
                [798.0, 340.0], [902.0, 253.0], [1067.0, 253.0], [1167.0, 353.0], [1142.0, 478.0]
            ],
            "image": "005808361.jpg",
            "scale": 4.718488,
            "center": [966.0, 340.0]
        },
        {
            "joints_vis": [0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            "joints": [
                [-1.0, -1.0], [1033.0, 649.0], [1072.0, 474.0], [973.0, 496.0], [961.0, 650.0], [-1.0, -1.0],
                [1023.0, 485.0], [1031.0, 295.0], [1026.998, 281.6248], [997.002, 181.3752], [988.0, 294.0],
                [1018.0, 317.0], [1070.0, 290.0], [991.0, 300.0], [912.0, 345.0], [842.0, 330.0]
            ],
            "image": "051423444.jpg",
            "scale": 3.139233,
            "center": [1030.0, 396.0]
        }
    ]
""")


@pytest.fixture
def mpii_root(tmp_path):
    _write(tmp_path / "annot" / "valid.json", MPII_RECORDS)
    records = json.loads(MPII_RECORDS)
    joints = np.array([record["joints"] for record in records])  # (N, 16, 2), 1-based
    missing = np.array([[1 - v for v in record["joints_vis"]] for record in records])
    names = np.empty((1, 16), dtype=object)
    names[0] = ["rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck", "head",
                "rwri", "relb", "rsho", "lsho", "lelb", "lwri"]
    heads = np.array([[[940.0, 60.0], [1000.0, 250.0]], [[980.0, 170.0], [1040.0, 290.0]]])  # (N, 2, 2)
    scipy.io.savemat(tmp_path / "annot" / "gt_valid.mat", {
        "dataset_joints": names, "jnt_missing": missing.T, "pos_gt_src": joints.transpose(1, 2, 0),
        "headboxes_src": heads.transpose(1, 2, 0)})
    for record in records:
        _image(tmp_path / "images" / record["image"])
    return tmp_path


def test_mpii_hrnet_json_records(mpii_root):
    dataset = open_dataset("mpii", str(mpii_root), "valid")
    first, second = dataset[0], dataset[1]
    np.testing.assert_allclose(first.keypoints[9], [961.2409, 79.0306], atol=1e-4)  # 1-based in the file
    assert first.visible.all()
    np.testing.assert_array_equal(second.visible, [0, 1, 1, 1, 1, 0] + [1] * 10)
    np.testing.assert_array_equal(second.keypoints[0], [0, 0])  # [-1, -1], joints_vis 0: not annotated
    np.testing.assert_allclose(second.meta["center"], [1029.0, 395.0])
    half = 100 * 3.139233
    np.testing.assert_allclose(second.box, [1029 - half, 395 + 15 * 3.139233 - half,
                                            1029 + half, 395 + 15 * 3.139233 + half], rtol=1e-6)
    truth = np.stack([dataset[i].keypoints for i in range(2)])
    assert dataset.evaluate(truth)["Mean"] == pytest.approx(100.0)
    verify_readable(dataset, count=2)


# ------------------------------------------------------------------------------------- COCO

COCO_CATEGORY = {
    "supercategory": "person", "id": 1, "name": "person",
    "keypoints": ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle"],
    "skeleton": [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                 [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]],
}
COCO_IMAGE = {"license": 3, "file_name": "000000040083.jpg",
              "coco_url": "http://images.cocodataset.org/val2017/000000040083.jpg", "height": 333, "width": 500,
              "date_captured": "2013-11-18 03:30:24",
              "flickr_url": "http://farm1.staticflickr.com/116/254881838_e21c6d17b8_z.jpg", "id": 40083}
COCO_ANNOTATION = {
    "segmentation": [[98.56, 273.72, 132.9, 267, 140.37, 281.93, 165.75, 285.66, 156.79, 264.01, 170.23, 261.02,
                      177.7, 272.97, 182.18, 279.69, 200.85, 268.49, 212.79, 255.05, 188.9, 256.54, 164.26, 240.12,
                      139.62, 212.49, 109.01, 221.45, 103.04, 220.71, 122.45, 202.04, 113.49, 196.07, 96.32, 168.44,
                      97.06, 162.47, 110.5, 136.34, 112, 124.39, 91.09, 110.95, 80.64, 114.68, 71.68, 131.86, 62.72,
                      147.54, 57.49, 156.5, 48.53, 168.44, 41.07, 180.39, 38.08, 193.08, 40.32, 205.03, 47.04,
                      213.24, 54.5, 216.23, 82.13, 252.06, 91.09, 271.48]],
    "num_keypoints": 14, "area": 11025.219, "iscrowd": 0,
    "keypoints": [99, 144, 2, 104, 141, 2, 96, 137, 2, 0, 0, 0, 78, 133, 2, 56, 161, 2, 81, 162, 2, 0, 0, 0,
                  103, 208, 2, 116, 204, 2, 0, 0, 0, 57, 246, 1, 82, 259, 1, 137, 219, 2, 138, 247, 2, 177, 256, 2,
                  158, 296, 1],
    "image_id": 40083, "bbox": [38.08, 110.95, 174.71, 174.71], "category_id": 1, "id": 198196,
}
COCO_DETECTION = {"bbox": [38.08, 110.95, 174.71, 174.71], "category_id": 1, "image_id": 40083, "score": 0.99997}


@pytest.fixture
def coco_root(tmp_path):
    content = {"info": {"description": "COCO 2017 Dataset"}, "licenses": [], "images": [COCO_IMAGE],
               "annotations": [COCO_ANNOTATION], "categories": [COCO_CATEGORY]}
    _write(tmp_path / "annotations" / "person_keypoints_val2017.json", json.dumps(content))
    _image(tmp_path / "val2017" / "000000040083.jpg")
    return tmp_path


def test_coco_person_keypoints_record(coco_root):
    dataset = open_dataset("coco", str(coco_root), "val")
    item = dataset[0]
    np.testing.assert_array_equal(item.keypoints[0], [99, 144])  # 0-based pixels already
    np.testing.assert_array_equal(item.meta["keypoint_flags"][[3, 11, 12]], [0, 1, 1])
    np.testing.assert_array_equal(item.visible, np.array(COCO_ANNOTATION["keypoints"][2::3]) > 0)
    np.testing.assert_allclose(item.box, [38.08, 110.95, 38.08 + 174.71, 110.95 + 174.71], rtol=1e-6)
    assert item.meta["area"] == 11025.219 and item.meta["ann_id"] == 198196
    assert dataset.evaluate(item.keypoints[None].astype(np.float64))["AP"] == pytest.approx(1.0)
    verify_readable(dataset)


def test_coco_detection_record(coco_root):
    _write(coco_root / "detections.json", json.dumps([COCO_DETECTION]))
    dataset = open_dataset("coco", str(coco_root), "val", detections=str(coco_root / "detections.json"))
    assert dataset[0].meta["detection_score"] == 0.99997 and not dataset[0].visible.any()
    np.testing.assert_allclose(dataset[0].box, [38.08, 110.95, 212.79, 285.66], rtol=1e-6)


def test_aflw_info_release_mat_as_matlab_v73(tmp_path):
    """A v7.3 (HDF5) copy of AFLWinfo_release.mat, as PIPNet's hdf5storage.loadmat also reads."""
    points = np.array(AFLW_POINTS)
    with h5py.File(tmp_path / "AFLWinfo_release.mat", "w", userblock_size=512) as file:
        refs = file.create_group("#refs#")
        for name, matrix in (("bbox", [[268.0, 630.0, 140.0, 502.0]] * 2),
                             ("data", [np.concatenate([points[:, 0], points[:, 1]])] * 2),
                             ("mask_new", np.ones((2, 19))), ("ra", [[1.0, 2.0]])):
            file.create_dataset(name, data=np.asarray(matrix, dtype=np.float64).T).attrs["MATLAB_class"] = b"double"
        cell = file.create_dataset("nameList", (1, 2), dtype=h5py.ref_dtype)  # MATLAB N×1 cell
        for index, text in enumerate([AFLW_IMAGE, "0/image00002.jpg"]):
            chars = refs.create_dataset(f"n{index}", data=np.array([[ord(c) for c in text]], dtype=np.uint16).T)
            chars.attrs["MATLAB_class"] = b"char"
            cell[0, index] = chars.ref
    with open(tmp_path / "AFLWinfo_release.mat", "r+b") as file:
        file.write(MATLAB_73_HEADER)
    _image(tmp_path / "flickr" / AFLW_IMAGE)
    _image(tmp_path / "flickr" / "0" / "image00002.jpg")
    test = open_dataset("aflw", str(tmp_path), "test", train_size=1)
    assert test[0].meta["image_path"] == "0/image00002.jpg"
    np.testing.assert_allclose(test[0].keypoints, points, rtol=1e-6)
    np.testing.assert_allclose(test[0].box, [268, 140, 630, 502])


def test_mpii_gt_valid_with_nested_cell_joint_names(mpii_root):
    """dataset_joints as a 1×16 cell of 1×1 cells: scipy loads nested object arrays."""
    path = mpii_root / "annot" / "gt_valid.mat"
    mat = {key: value for key, value in scipy.io.loadmat(path).items() if not key.startswith("__")}
    nested = np.empty((1, 16), dtype=object)
    for index, name in enumerate(np.ravel(mat["dataset_joints"])):
        inner = np.empty((1, 1), dtype=object)
        inner[0, 0] = name
        nested[0, index] = inner
    mat["dataset_joints"] = nested
    scipy.io.savemat(path, mat)
    dataset = open_dataset("mpii", str(mpii_root), "valid")
    assert len(dataset) == 2
