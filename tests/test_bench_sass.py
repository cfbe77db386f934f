"""The static profile of the Triton kernels (``python -m h3r.benchmark.sass``): the SASS and
resource parsers, the occupancy and budget arithmetic, and one real compile for sm_90 without a
GPU (in a subprocess: the tests run Triton interpreted, and interpreted kernels are not compiled)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from h3r.benchmark import sass

REPO = Path(__file__).resolve().parent.parent

LISTING = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   FFMA R2, R0, R3, R4 ;
        /*0030*/              @!P0 MUFU.EX2 R5, R2 ;
        /*0040*/                   LDG.E.128 R8, desc[UR4][R6.64] ;
        /*0050*/                   IMAD.WIDE R6, R0, 0x4, R6 ;
        /*0060*/               @P1 BRA 0x20 ;
        /*0070*/                   EXIT ;
"""


def test_sass_listing_is_counted_by_class():
    parsed = sass.parse_sass(LISTING)
    assert parsed["instructions"] == 8 and parsed["loops"] is True  # the BRA goes back to 0x20
    assert parsed["classes"] == {"memory": 2, sass.OTHER: 1, "FP32": 1, "MUFU": 1, "integer": 1, "control": 2}
    assert sass.parse_sass(LISTING.replace("BRA 0x20", "BRA 0x70"))["loops"] is False


def test_resource_line_is_read():
    text = " Function _loss_kernel:\n  REG:144 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:632 TEXTURE:0"
    assert sass.parse_resources(text) == {"registers": 144, "stack": 0, "shared_bytes": 1024, "local_bytes": 0}
    with pytest.raises(ValueError, match="no resource line"):
        sass.parse_resources("nothing")


@pytest.mark.parametrize("registers,warps,shared,blocks,limit", [
    (144, 8, 1024, 1, "registers"),  # 144 * 32 = 4608 per warp; 36864 per block of 8 warps
    (32, 8, 1024, 8, "registers"),
    (63, 8, 0, 4, "registers"),  # 63 rounds up to 64 registers (2048 per warp)
    (16, 1, 0, 32, "blocks"),
    (16, 8, 100 * 1024, 2, "shared memory"),
])
def test_occupancy(registers, warps, shared, blocks, limit):
    result = sass.occupancy(registers, warps, shared)
    assert result["blocks_per_sm"] == blocks and result["warps_per_sm"] == blocks * warps
    assert result["limited_by"] == limit


def test_budget_at_the_h200_copy_bandwidth():
    loss = sass.budget(8)  # float32 read + write
    assert loss["instructions_per_element"] == pytest.approx(132 * 128 * 1.98e9 / (4222.7e9 / 8))
    assert 60 < loss["instructions_per_element"] < 66 and 7 < loss["mufu_per_element"] < 9
    assert sass.budget(4)["instructions_per_element"] == pytest.approx(loss["instructions_per_element"] / 2)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("sass")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-m", "h3r.benchmark.sass", "--ops", "heatmap_loss", "--shapes",
                             "4x3x16x16", "--dtypes", "float32", "--tiles", "8192:32,4096:16", "--commit", "abc", "--out", str(out)],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, json.loads((out / "sass.json").read_text())


def test_the_loss_kernels_compile_for_sm90_without_a_gpu(compiled):
    out, report = compiled
    assert report["capability"] == 90 and report["commit"] == "abc"
    rows = {row["kernel"]: row for row in report["rows"] if row["tile"]["in_use"]}
    assert set(rows) == {"_cells_kernel", "_loss_kernel", "_scale_grad_kernel"}
    candidate = [row for row in report["rows"] if row["kernel"] == "_loss_kernel" and not row["tile"]["in_use"]]
    # the tile in use (4096/16) is not profiled twice; the former tile is a candidate
    assert [row["tile"] for row in candidate] == [{"elements": 8192, "per_thread": 32, "in_use": False}]
    # twice the elements per thread: more registers, half the warps for these 12 maps of 256
    assert candidate[0]["registers"] > rows["_loss_kernel"]["registers"]
    assert 2 * candidate[0]["num_warps"] == rows["_loss_kernel"]["num_warps"]
    loss = rows["_loss_kernel"]
    assert loss["registers"] > 0 and loss["instructions"] > 100 and not loss["loops"]
    assert 0 < loss["occupancy"] <= 1 and loss["warps_per_sm"] % loss["num_warps"] == 0
    # per element: exp and the sigmoid's reciprocal are special functions
    assert loss["per_element"]["MUFU"] >= 2 and loss["per_element"]["all"] > 10
    assert loss["budget"]["instructions_per_element"] == pytest.approx(sass.budget(8)["instructions_per_element"])
    assert rows["_cells_kernel"]["per_element"] is None  # it reads keypoints, not the maps
    page = (out / "sass.md").read_text()
    assert "| heatmap_loss | 4×3×16×16 | float32 | `_loss_kernel` | 4096/16 |" in page


def test_bad_tiles_are_refused():
    # a subprocess: importing the kernels here without TRITON_INTERPRET would compile them for a GPU
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-m", "h3r.benchmark.sass", "--tiles", "4096:3"], capture_output=True,
                            text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 2 and "--tiles: expected ELEMENTS:PER_THREAD" in result.stderr


def test_interpreted_triton_is_refused(capsys):
    # the tests run with TRITON_INTERPRET=1 (conftest.py)
    with pytest.raises(SystemExit):
        sass.main(["--ops", "encode"])
    assert "TRITON_INTERPRET is set" in capsys.readouterr().err


def test_tiles_parse_and_apply():
    from h3r.benchmark import tiles
    from h3r_kernels.triton import _common

    assert tiles.parse_tiles("4096:16, 2048:8") == [(4096, 16), (2048, 8)]
    for bad in ("4096", "4096:3", "16:1", "a:b", "4096:16:2"):
        with pytest.raises(ValueError, match="expected ELEMENTS:PER_THREAD"):
            tiles.parse_tiles(bad)
    before = dict(_common.GPU_TILES)
    assert tiles.tile_in_use("heatmap_loss") == before["heatmap_loss"]
    with tiles.triton_tile((2048, 8)):
        assert _common.GPU_TILES == {"encode": (2048, 8), "heatmap_loss": (2048, 8)}
        assert _common.map_tiling("heatmap_loss", 4, 64, 64).tiles_per_map == 1  # interpreter: its own tile
    assert _common.GPU_TILES == before


def test_report_times_candidate_tiles_on_cuda_only(capsys):
    from h3r.benchmark import cli

    with pytest.raises(SystemExit):
        cli.main(["--device", "cpu", "--triton-tiles", "4096:16"])
    assert "--triton-tiles: GPU tiles are timed on CUDA only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--device", "cpu", "--triton-tiles", "4096:5"])
    assert "expected ELEMENTS:PER_THREAD" in capsys.readouterr().err


def test_candidate_tile_rows_are_timed_under_their_tile(monkeypatch):
    import argparse

    import torch

    from h3r.benchmark import measure
    from h3r.benchmark.timing import Timer
    from h3r_kernels.triton import _common

    seen = []
    real_make_call = measure.make_call

    def make_call(op, impl, shape, dtype, device):
        seen.append((op, impl, _common.GPU_TILES["heatmap_loss"]))
        return real_make_call(op, impl, shape, dtype, device)

    monkeypatch.setattr(measure, "make_call", make_call)
    settings = argparse.Namespace(backends=["triton"], shapes=[(2, 3, 8, 8)], dtypes=["float32"],
                                  ops=["heatmap_loss", "decode"], device=torch.device("cpu"),
                                  triton_tiles=[(2048, 8), _common.GPU_TILES["heatmap_loss"]])  # the tile in use: no row
    rows = measure.measure_ops(settings, Timer(torch.device("cpu"), 1, 1), log=lambda message: None)
    assert [(row["op"], row["impl"]) for row in rows] == [
        ("heatmap_loss", "triton"), ("heatmap_loss", "triton tile 2048/8"), ("decode", "triton")]
    in_use = _common.GPU_TILES["heatmap_loss"]
    assert seen == [("heatmap_loss", "triton", in_use), ("heatmap_loss", "triton", (2048, 8)), ("decode", "triton", in_use)]
    assert all(row["median_ms"] and row["note"] == "Triton interpreter: not a performance claim" for row in rows)


NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.access("/usr/local/cuda/bin/nvcc", os.X_OK) else None)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH or at /usr/local/cuda/bin/nvcc")
def test_cuda_c_kernels_registers_and_occupancy():
    rows = sass.profile_csrc(90, NVCC)
    found = {(row["kernel"], row["dtype"]) for row in rows}
    for kernel in ("loss_kernel", "encode_kernel", "decode_kernel"):
        assert {(kernel, dtype) for dtype in ("float32", "float64", "float16", "bfloat16")} <= found, kernel
    for row in rows:
        assert 0 < row["registers"] <= 255 and row["num_warps"] == 8 and row["warps_per_sm"] % 8 == 0
    page = sass.markdown({"capability": 90, "commit": "abc", "triton": "t", "torch": "t", "elapsed_s": 1.0, "rows": [],
                          "csrc": rows})
    assert "| loss.cu | `loss_kernel` | float32 |" in page


def test_decode_compiles_once_for_every_map_size():
    """Compiled for sm_90 without a GPU: decode on maps of 1x1 to 64x64 (square or not, sizes
    equal to 1 or divisible by 16 or neither) compiles two ``_decode_kernel``s, one per tile
    (up to 32x32, beyond); the static profile counts their loops for each shape."""
    script = """
import torch
from h3r.benchmark import sass
from h3r_kernels.triton import decode
sizes = [(1, 1), (17, 13), (16, 16), (8, 8), (32, 32), (64, 48), (100, 37), (64, 64)]
with sass.compile_only(90) as compiled:
    for height, width in sizes:
        decode.decode(torch.zeros(3, 5, height, width), "topk", 9, "softmax", 3)
kernel_cache = decode._decode_kernel.device_caches[0][0]
assert len(compiled) == len(sizes) and len(kernel_cache) == 2, len(kernel_cache)
trips = [decode.loop_trips(arguments) for _, _, _, _, arguments in compiled]
assert trips[2] == (4,) + (1,) * 8 and trips[-1] == (16,) + (1,) * 8, trips
text = sass.inspect_cubin(compiled[0][1].asm["cubin"], trips[-1])
assert text["dynamic"] is not None and text["dynamic"]["instructions"] > text["instructions"]
print("ok")
"""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_dynamic_counts_multiply_loop_bodies():
    parsed = sass.dynamic_counts(LISTING, [5])  # the loop 0x20..0x60 holds 5 instructions
    assert parsed["instructions"] == 3 + 5 * 5
    assert sass.dynamic_counts(LISTING, [5, 1]) is None  # not the loops the launcher lists
    assert sass.parse_sass(LISTING)["loop_bodies"] == [[0x20, 0x60, 5]]
