"""``encode``: the Triton and CUDA C kernels against the reference on every device
(conftest.py: KERNEL_PAIRS) for every rounding, sigma and expected target over odd and 1x1
shapes and every map dtype, and the cells that randomized rounding draws for seeds up to
2**32 - 1; on every (backend, device) pair, the reference's too: zero maps for invisible and
off-map keypoints.

Binary and bilinear targets (sigma 0) are bit-identical to the reference; Gaussian ones agree
to the tolerance table (conftest.py). On the CPU the Triton backend runs in its interpreter:
shapes stay small; real shapes are in test_gpu_ops.py, the specification itself in
test_reference.py, Triton's block sizes in test_triton_internals.py.
"""
import itertools

import pytest
import torch

import h3r_kernels
from conftest import KERNEL_PAIRS, assert_close, make_keypoints, target_key
from h3r_kernels import spec

# NaN/inf keypoints: the interpreter's numpy warns on inf - inf, the kernels mask them.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SHAPES = [(1, 1), (5, 7), (17, 13), (16, 16)]


def shape_dtype_cases():
    """Every shape in float32, every other dtype at one odd shape (the dtype only changes the final cast)."""
    return [(shape, torch.float32) for shape in SHAPES] + [((5, 7), dtype) for dtype in DTYPES[1:]]


def target_cases():
    """Every (rounding, sigma, expected) the API accepts, sigma 0 and 1.5."""
    for rounding, sigma, expected in itertools.product(spec.names(spec.Rounding), [0.0, 1.5], [False, True]):
        if rounding == "none" and sigma == 0:
            continue  # rejected by the API: the continuous centre needs a Gaussian
        yield rounding, sigma, expected


@pytest.mark.parametrize("backend,device", KERNEL_PAIRS)
@pytest.mark.parametrize("rounding,sigma,expected", list(target_cases()))
def test_encode_matches_reference(backend, device, rounding, sigma, expected):
    keypoints, visible = make_keypoints(2, 7, 17, 13, device=device)
    seeds = [5, 2**32 - 1] if rounding == "random" else [5]
    for ((height, width), dtype), seed in itertools.product(shape_dtype_cases(), seeds):
        vis = None if height == 1 else visible  # None: the non-finite keypoints are visible
        args = dict(sigma=sigma, rounding=rounding, seed=seed, expected=expected, dtype=dtype)
        got = h3r_kernels.encode(keypoints, (height, width), vis, backend=backend, **args)
        want = h3r_kernels.encode(keypoints, (height, width), vis, backend="reference", **args)
        assert got.dtype == dtype and got.shape == (2, 7, height, width)
        mixture = expected and rounding == "random"
        # The Triton interpreter truncates float32 -> bfloat16 where torch rounds to nearest:
        # the bilinear mixture's weights then differ by an ULP.
        truncated = backend == "triton" and device == "cpu" and dtype == torch.bfloat16
        if sigma == 0 and not (mixture and truncated):
            assert torch.equal(got, want), f"{height}x{width} {dtype} seed={seed}"
        else:
            assert_close(got, want, target_key(dtype))


@pytest.mark.parametrize("backend,device", KERNEL_PAIRS)
@pytest.mark.parametrize("seed", [0, 7, 2**31, 2**32 - 1])
def test_random_rounding_draws_the_reference_cells(backend, device, seed):
    keypoints = (torch.rand(3, 11, 2) * 6 - 0.5).to(device)
    got = h3r_kernels.encode(keypoints, (6, 6), seed=seed, backend=backend)
    want = h3r_kernels.encode(keypoints, (6, 6), seed=seed, backend="reference")
    assert torch.equal(got, want)


def test_invisible_and_off_map_keypoints_give_zero_maps(backend, device):
    keypoints = torch.tensor([[[2.0, 1.0], [float("nan"), 0.0], [8.0, 1.0], [-1.0, 2.0]]], device=device)
    visible = torch.tensor([[False, False, True, True]], device=device)
    for sigma, expected in ((0.0, False), (0.0, True), (1.5, False), (1.5, True)):
        maps = h3r_kernels.encode(
            keypoints, (4, 8), visible, sigma=sigma, rounding="nearest" if not expected else "random",
            seed=1, expected=expected, backend=backend,
        )
        assert torch.equal(maps, torch.zeros_like(maps)), (sigma, expected)
