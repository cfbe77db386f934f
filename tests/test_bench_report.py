"""The benchmark harness on the CPU: the report's files and columns, its argument errors, and
that the baselines it compares against compute the same targets and decodings as the ops."""
import json
import math

import numpy as np
import pytest
import torch

import h3r_kernels
from h3r_kernels.backends import interpreting
from h3r.benchmark import baselines, cases, cli, cpu_encoding, markdown, measure

SHAPE = (2, 3, 5, 7)  # B, K, H, W; H != W


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--device", "cpu", "--shapes", "2x3x5x7", "--repeats", "2", "--warmup", "1",
            "--copy-mib", "4", "--cpu-workers", "2", "--commit", "abc123", "--out", str(out)]
    returned = cli.main(argv)
    return out, returned


def test_report_writes_json_and_markdown(tiny_report, capsys):
    out, returned = tiny_report
    written = json.loads((out / "report.json").read_text())
    assert written == json.loads(json.dumps(returned))
    facts = written["facts"]
    for key in ("date", "git_commit", "device_name", "driver", "torch", "triton", "cupy", "backends"):
        assert key in facts
    assert facts["device"] == "cpu" and written["performance_claim"] is False
    assert facts["git_commit"] == "abc123"
    assert written["copy_bandwidth"]["gbps"] > 0
    assert written["settings"]["backends"] == ["reference", "naive", "cpu_workers"]

    rows = written["rows"]
    expected = {(op, impl, dtype) for op in cases.OPS for impl in ("reference", "naive")
                for dtype in ("float32", "bfloat16")}
    expected |= {("encode", "cpu_workers", "float32"), ("encode_gaussian", "cpu_workers", "float32")}
    assert {(r["op"], r["impl"], r["dtype"]) for r in rows} == expected
    assert len(rows) == len(expected)
    for row in rows:
        assert row["shape"] == list(SHAPE)
        assert row["median_ms"] > 0, row["note"]
        assert row["host_ms"] is None and row["host_sync"] is None  # CUDA only


def test_report_derived_columns(tiny_report):
    _, written = tiny_report
    rows = written["rows"]
    by_key = {(r["op"], r["impl"], r["dtype"]): r for r in rows}
    copy_gbps = written["copy_bandwidth"]["gbps"]
    for row in rows:
        spec = cases.OPS[row["op"]]
        itemsize = 2 if row["dtype"] == "bfloat16" else 4
        assert row["bytes"] == spec.counted_passes * math.prod(SHAPE) * itemsize
        assert row["op_bytes"] == spec.op_passes * math.prod(SHAPE) * itemsize
        assert row["gbps"] == pytest.approx(row["bytes"] / (row["median_ms"] * 1e6))
        assert row["pct_copy_bandwidth"] == pytest.approx(100 * row["gbps"] / copy_gbps)
        assert row["samples_per_s"] == pytest.approx(SHAPE[0] * 1e3 / row["median_ms"])
        reference = by_key[(row["op"], "reference", row["dtype"])]
        if row["impl"] == "reference":
            assert row["x_vs_reference"] is None
        else:
            assert row["x_vs_reference"] == pytest.approx(reference["median_ms"] / row["median_ms"])
        cpu = by_key.get((row["op"], "cpu_workers", "float32"))
        if cpu is None or row["impl"] == "cpu_workers":
            assert row["x_vs_cpu_encoding"] is None
        else:
            assert row["x_vs_cpu_encoding"] == pytest.approx(cpu["median_ms"] / row["median_ms"])
    assert by_key[("heatmap_loss", "reference", "float32")]["x_vs_naive"] == pytest.approx(
        by_key[("heatmap_loss", "naive", "float32")]["median_ms"]
        / by_key[("heatmap_loss", "reference", "float32")]["median_ms"]
    )


def test_report_markdown(tiny_report):
    out, written = tiny_report
    page = (out / "report.md").read_text()
    assert "| " + " | ".join(markdown.TABLE_HEADER) + " |" in page
    table_rows = [line for line in page.splitlines() if line.startswith("| ") and "×".join(map(str, SHAPE)) in line]
    assert len(table_rows) == len(written["rows"])
    assert all(line.count("|") == len(markdown.TABLE_HEADER) + 1 for line in table_rows)
    assert "not a performance claim" in page
    assert f"{written['copy_bandwidth']['gbps']:.1f} GB/s" in page
    for spec in cases.OPS.values():
        assert f"| {spec.name} | {spec.what} | {spec.counted_passes}·N | {spec.op_passes}·N |" in page


@pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1 (tests/conftest.py sets it without CUDA)")
def test_report_marks_the_triton_interpreter(tmp_path, monkeypatch):
    """Rows run by the Triton interpreter are marked (the call is stubbed: this tests the report, not Triton)."""
    make_call = cases.make_call
    monkeypatch.setattr(measure, "make_call", lambda op, impl, *rest: (lambda: None) if impl == "triton"
                        else make_call(op, impl, *rest))
    argv = ["--device", "cpu", "--shapes", "2x3x5x7", "--ops", "encode", "--dtypes", "float32",
            "--backends", "reference,triton", "--repeats", "2", "--warmup", "1", "--copy-mib", "1", "--out", str(tmp_path)]
    written = cli.main(argv)
    triton_row, = [r for r in written["rows"] if r["impl"] == "triton"]
    assert triton_row["median_ms"] > 0 and triton_row["note"] == "Triton interpreter: not a performance claim"
    reference_row, = [r for r in written["rows"] if r["impl"] == "reference"]
    assert reference_row["note"] == ""
    assert written["performance_claim"] is False


def test_report_records_a_failing_implementation_and_goes_on(tmp_path, monkeypatch):
    make_call = cases.make_call

    def failing_naive(op, impl, *rest):
        if impl == "naive":
            raise RuntimeError("boom\nsecond line")
        return make_call(op, impl, *rest)

    monkeypatch.setattr(measure, "make_call", failing_naive)
    argv = ["--device", "cpu", "--shapes", "2x3x5x7", "--ops", "decode", "--dtypes", "float32",
            "--backends", "reference,naive", "--repeats", "2", "--warmup", "1", "--copy-mib", "1", "--out", str(tmp_path)]
    written = cli.main(argv)
    rows = {r["impl"]: r for r in written["rows"]}
    assert rows["naive"]["note"] == "RuntimeError: boom" and rows["naive"]["median_ms"] is None
    assert rows["naive"]["gbps"] is None and rows["naive"]["x_vs_reference"] is None
    assert rows["reference"]["median_ms"] > 0 and rows["reference"]["x_vs_naive"] is None
    assert "| decode | naive | 2×3×5×7 | float32 | — |" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shapes", "2x3x5"], "expected shapes BxKxHxW"),
        (["--shapes", "2x3x0x7"], "expected shapes BxKxHxW"),
        (["--dtypes", "float8"], "comma-separated subset of float32"),
        (["--ops", "encode,softmax"], "comma-separated subset of encode"),
        (["--backends", "cuda"], "needs --device cuda"),
        (["--cpu-rounds", "1"], "expected >= 2"),
        (["--repeats", "0"], "expected a positive integer"),
    ],
)
def test_report_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.parse_settings(["--device", "cpu", *argv])
    assert message in capsys.readouterr().err


def test_make_call_rejects_unknown_op_and_impl():
    with pytest.raises(ValueError, match="op: expected one of encode"):
        cases.make_call("softmax", "reference", SHAPE, torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="impl: expected one of reference"):
        cases.make_call("encode", "cpu_workers", SHAPE, torch.float32, torch.device("cpu"))


# --------------------------------------------------------------------------- the baselines match the ops


def _keypoints(batch=3, num=5, height=6, width=9, seed=0):
    """Keypoints on the map, plus a few just outside it, so clipping is exercised."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.rand(batch, num, 2, generator=generator) * torch.tensor([width + 1.0, height + 1.0]) - 1.0
    points[0, 0] = torch.tensor([-0.7, 2.2])
    points[0, 1] = torch.tensor([width - 0.2, height - 0.4])
    return points


def test_naive_expected_encode_matches_reference():
    points = _keypoints()
    ours = baselines.dense_bilinear_expected(points, 6, 9)
    spec = h3r_kernels.encode(points, (6, 9), expected=True, backend="reference")
    torch.testing.assert_close(ours, spec)


def test_naive_gaussian_matches_reference():
    points = _keypoints()
    ours = baselines.dense_gaussian(points, 6, 9, sigma=2.0)
    spec = h3r_kernels.encode(points, (6, 9), sigma=2.0, rounding="nearest", backend="reference")
    torch.testing.assert_close(ours, spec)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_naive_one_hot_is_a_random_rounding(dtype):
    points = _keypoints()
    maps = baselines.random_rounding_one_hot(points, 6, 9, dtype=dtype)
    assert maps.dtype == dtype and maps.shape == (3, 5, 6, 9)
    _check_one_hot(maps.float().numpy(), points.numpy())


def test_naive_topk_decode_matches_reference():
    heatmaps = torch.randn(2, 4, 6, 9, generator=torch.Generator().manual_seed(1))
    coords, scores = baselines.topk_decode(heatmaps, k=9)
    spec_coords, spec_scores = h3r_kernels.decode(heatmaps, method="topk", k=9, weights="softmax", backend="reference")
    torch.testing.assert_close(coords, spec_coords)
    torch.testing.assert_close(scores, spec_scores)


def test_naive_loss_is_bce_on_a_one_hot_target():
    logits = torch.full((2, 3, 5, 7), -1.5)
    points = torch.rand(2, 3, 2) * torch.tensor([6.0, 4.0])
    value = baselines.one_hot_bce_loss(logits, points)
    # one positive pixel per map: loss = mean over pixels of softplus(z) - z * target
    expected = (torch.nn.functional.softplus(torch.tensor(-1.5)) * 35 + 1.5) / 35
    torch.testing.assert_close(value, expected)


# --------------------------------------------------------------------------- CPU encoding


def _check_one_hot(maps: np.ndarray, points: np.ndarray) -> None:
    """Each map: a single 1 at floor or floor + 1 of the keypoint per axis, or all zero if that cell is off the map."""
    height, width = maps.shape[-2:]
    for b in range(points.shape[0]):
        for k in range(points.shape[1]):
            ones = np.argwhere(maps[b, k] == 1)
            assert maps[b, k].sum() == len(ones)
            x, y = points[b, k]
            candidates = {(r, c) for r in (math.floor(y), math.floor(y) + 1) for c in (math.floor(x), math.floor(x) + 1)}
            if len(ones):
                assert len(ones) == 1 and tuple(ones[0]) in candidates
            else:
                assert any(not (0 <= r < height and 0 <= c < width) for r, c in candidates)


def test_cpu_one_hot_is_a_random_rounding():
    points = _keypoints().numpy()
    rng = np.random.default_rng(0)
    maps = np.stack([cpu_encoding.random_rounding_one_hot(p, 6, 9, rng) for p in points])
    _check_one_hot(maps, points)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_cpu_gaussian_patch_is_the_gaussian_within_three_sigma(sigma):
    """HRNet's patch: the Gaussian at the nearest cell within 3 sigma of it; the same as the op's
    target there when that cell is on the map (HRNet keeps the visible part of a patch whose
    centre is just off the map, where the op gives an all-zero map)."""
    points = _keypoints(height=12, width=10)
    patch = cpu_encoding.gaussian_patch(sigma)
    maps = np.stack([cpu_encoding.gaussian_patch_paste(p, 12, 10, patch) for p in points.numpy()])
    centres = np.floor(points.numpy() + 0.5)
    dy = np.arange(12)[None, None, :] - centres[..., 1:2]
    dx = np.arange(10)[None, None, :] - centres[..., 0:1]
    radius = int(3 * sigma)
    window = (np.abs(dy) <= radius)[..., :, None] & (np.abs(dx) <= radius)[..., None, :]
    gaussian = np.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2) / (2 * sigma * sigma))
    np.testing.assert_allclose(maps, gaussian * window, rtol=1e-6, atol=1e-7)

    spec = h3r_kernels.encode(points, (12, 10), sigma=sigma, rounding="nearest", backend="reference").numpy()
    on_map = (centres[..., 0] >= 0) & (centres[..., 0] < 10) & (centres[..., 1] >= 0) & (centres[..., 1] < 12)
    assert 0 < on_map.sum() < on_map.size
    np.testing.assert_allclose(maps[on_map], (spec * window)[on_map], rtol=1e-6, atol=1e-7)


def test_cpu_dataset_samples_are_reproducible():
    dataset = cpu_encoding.NumpyTargetDataset(4, 3, 5, 7, target="gaussian", sigma=1.0, seed=3)
    assert len(dataset) == 4 and dataset[2].shape == (3, 5, 7) and dataset[2].dtype == np.float32
    np.testing.assert_array_equal(dataset[2], dataset[2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target="mse"), "target: expected one of 'random_rounding', 'gaussian'"),
        (dict(target="gaussian", sigma=0.0), "sigma: expected > 0"),
        (dict(num_keypoints=0), "expected all >= 1"),
    ],
)
def test_cpu_dataset_rejects_bad_arguments(kwargs, message):
    arguments = dict(num_samples=2, num_keypoints=3, height=5, width=7) | kwargs
    with pytest.raises(ValueError, match=message):
        cpu_encoding.NumpyTargetDataset(**arguments)


@pytest.mark.parametrize("kwargs, message", [(dict(rounds=1), "rounds: expected >= 2"), (dict(workers=0), "workers")])
def test_time_cpu_encoding_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cpu_encoding.time_cpu_encoding(SHAPE, "random_rounding", torch.device("cpu"), **kwargs)
