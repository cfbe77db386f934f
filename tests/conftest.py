"""Test set-up shared by the op tests: backends x devices, one tolerance table, one keypoint
factory with the edge cases, and the one way GPU tests are skipped.

* ``TRITON_INTERPRET`` is read when a kernel is defined, so it is set here (no GPU: Triton
  runs in its CPU interpreter), before any test module imports ``h3r_kernels``.
* GPU tests: mark them ``@pytest.mark.gpu`` (pytest.ini); without a CUDA device they are
  collected and skipped (:func:`pytest_collection_modifyitems`). Nothing else skips on CUDA.
* Backends: a test with ``backend`` and ``device`` arguments runs on every (backend, device)
  pair of :data:`BACKEND_DEVICES` (:func:`pytest_generate_tests`); the pairs that cannot run
  here are collected and skipped with the reason (``cuda`` ones are marked ``gpu``). A test
  with a ``backend`` argument alone runs on every backend of the tests' device, :data:`DEVICE`.
  A test whose only check is agreement with the reference takes :data:`KERNEL_PAIRS` instead
  (``@pytest.mark.parametrize("backend,device", KERNEL_PAIRS)``): the reference against itself
  could not fail.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import h3r_kernels  # noqa: E402  (after TRITON_INTERPRET)
from h3r_kernels.backends import interpreting  # noqa: E402

# Where tests that take no device argument put their tensors.
DEVICE = "cuda" if HAS_CUDA else "cpu"
BACKENDS = ("reference", "triton", "cuda")
# Every pair a backend can serve: the reference anywhere, Triton on CUDA or in the CPU
# interpreter, CUDA C on CUDA tensors.
BACKEND_DEVICES = (
    ("reference", "cpu"), ("reference", "cuda"), ("triton", "cpu"), ("triton", "cuda"), ("cuda", "cuda"),
)


def why_not(backend: str, device: str):
    """None when ``backend`` can run on ``device`` tensors here, else the reason."""
    if device == "cuda" and not HAS_CUDA:
        return "needs a CUDA device"
    info = h3r_kernels.backends()[backend]
    if not info["available"]:
        return f"{backend} backend unavailable: {info['reason']}"
    if backend == "triton" and device == "cpu" and not interpreting():
        return "triton on CPU tensors needs TRITON_INTERPRET=1 (set only without a GPU)"
    return None


def backend_device_params(backends=BACKENDS, devices=("cpu", "cuda")) -> list:
    """``pytest.param((backend, device))`` for the pairs of :data:`BACKEND_DEVICES` asked for;
    CUDA pairs are marked ``gpu``, pairs that cannot run here are skipped with the reason."""
    params = []
    for backend, device in BACKEND_DEVICES:
        if backend not in backends or device not in devices:
            continue
        marks = [pytest.mark.gpu] if device == "cuda" else []
        reason = why_not(backend, device)
        if reason is not None:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(backend, device, marks=marks, id=f"{backend}-{device}"))
    return params


def available_backends(device: str = DEVICE) -> list[str]:
    """Backends that can run on ``device`` here (the Triton interpreter counts on the CPU)."""
    return [backend for backend, pair_device in BACKEND_DEVICES if pair_device == device and why_not(backend, device) is None]


def gpu_backends() -> list[str]:
    """The GPU backends (``triton``, ``cuda``) as ``pytest.param``s, skipped when they cannot run on CUDA here."""
    return [pytest.param(p.values[0], marks=p.marks, id=p.values[0]) for p in backend_device_params(("triton", "cuda"), ("cuda",))]


# The (backend, device) pairs of the kernels, Triton and CUDA C: what a comparison with the reference tests.
KERNEL_PAIRS = backend_device_params(("triton", "cuda"))


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    if "backend" in names and "device" in names and not _parametrized(metafunc, "backend"):
        metafunc.parametrize("backend,device", backend_device_params())


def _parametrized(metafunc, name: str) -> bool:
    return any(name in [n.strip() for n in mark.args[0].split(",")] if isinstance(mark.args[0], str) else name in mark.args[0]
               for mark in metafunc.definition.iter_markers("parametrize"))


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------- tolerances

# The one tolerance table: key -> (rtol, atol as a fraction of the largest expected magnitude),
# read by assert_close.
#
# A dtype key: the dtype of the compared arithmetic. Both sides compute in float32 (float64 for
# float64 data) and round once to the stored dtype, so a rounding difference is at most an ULP
# or two of the value itself, which rtol covers at every magnitude: 2 ULPs for float16 (2**-10)
# and bfloat16 (2**-7; the Triton interpreter truncates float32 -> bfloat16 where torch rounds
# to nearest). atol only absorbs float32-level differences of values near 0 (sums in another
# order, exp to an ULP), far below 1e-3 of the largest value: bfloat16 takes 1e-3, not 8e-3 (a
# full bfloat16 ULP of the largest value, which would pass a cell that should be 0 as anything
# below 1/128 of it). Quantities computed from a float32 target (encode's maps; losses with
# sigma > 0) are compared under the float32 entry even for float64 data.
#
# (NONNEGATIVE_SUM, accumulation dtype): sums of non-negative terms, which round relative to
# their own value however small it is next to the largest, so rtol alone (no atol): decode's
# coordinates (weights >= 0 times cell indices; the backends differ by summation order and
# exp's last bits) and per-keypoint loss values with weights >= 0 (bce, mse >= 0).
#
# (DECODE_GRAD, map dtype): decode's gradient. Stored in the maps' dtype, rounded once from
# float32 (float64 for float64 maps): 1 ULP of float16 is below 1e-3 (the dtype row allows
# 2e-3 for the loss gradient, which may be rounded twice); bfloat16 keeps 2 ULPs (the
# interpreter's truncation); float64 is computed in float64 by every backend. Its absolute
# error is not a fraction of the largest value but decode_grad_floor (pass it as atol_floor).
NONNEGATIVE_SUM, DECODE_GRAD = "sum of non-negative terms", "decode gradient"
TOLERANCE = {
    torch.float32: (1e-5, 1e-6),
    torch.float64: (1e-10, 1e-12),
    torch.float16: (2e-3, 1e-4),
    torch.bfloat16: (1.6e-2, 1e-3),
    (NONNEGATIVE_SUM, torch.float32): (1e-5, 0.0),
    (NONNEGATIVE_SUM, torch.float64): (1e-12, 0.0),
    (DECODE_GRAD, torch.float32): (1e-5, 0.0),
    (DECODE_GRAD, torch.float16): (1e-3, 0.0),
    (DECODE_GRAD, torch.bfloat16): (1.6e-2, 0.0),
    (DECODE_GRAD, torch.float64): (1e-12, 0.0),
}


def target_key(dtype):
    """The tolerance key of encode's maps of ``dtype``: the target is float32 for float64 maps too."""
    return torch.float32 if dtype == torch.float64 else dtype


def loss_keys(dtype, sigma):
    """Tolerance keys of a loss value and its gradient on logits of ``dtype``: float64 arithmetic
    only with the binary target (a Gaussian target is float32); gradients are stored in ``dtype``."""
    value_key = torch.float64 if dtype == torch.float64 and sigma == 0 else torch.float32
    return value_key, (value_key if dtype in (torch.float32, torch.float64) else dtype)


def assert_close(actual, expected, key, atol_floor: float = 0.0):
    """``torch.testing.assert_close`` with :data:`TOLERANCE` of ``key`` (a dtype or a
    ``(quantity, dtype)`` row; NaN equal to NaN); ``atol_floor``: an absolute error the
    quantity is known to carry (decode's gradients: :func:`decode_grad_floor`)."""
    rtol, atol = TOLERANCE[key]
    finite = expected.detach().abs().float().nan_to_num(posinf=0.0, neginf=0.0) if expected.numel() else None
    scale = float(finite.max()) if finite is not None else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=max(atol * scale, atol_floor, 1e-30), equal_nan=True)


def decode_grad_floor(dtype, height: int, width: int) -> float:
    """The absolute error of decode's gradient: it holds ``(x_j - x)`` with ``x`` the decoded
    coordinate, whose rounding (an ULP of max(H, W), summed in another order) shows up absolutely:
    8 epsilons of the accumulation dtype per cell of max(H, W) (float32: 9.5e-7 per cell; float64:
    1.8e-15), for incoming coordinate gradients of order 1 (the tests draw them from randn)."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.finfo(acc).eps * max(height, width) * 8


# --------------------------------------------------------------------------- keypoints


def make_keypoints(batch, num, height, width, seed=0, device=DEVICE):
    """``(keypoints (B, K, 2), visible (B, K) bool)``: uniform over [-1.5, W + 0.5] x [-1.5, H + 0.5],
    a quarter invisible, and the edge cases first (row-major over b, k):

    exact border cells, half-integers (rounding ties), points rounding just on or just off the
    map, a tiny negative x whose fraction rounds to 1 in float32, and non-finite points (NaN,
    +-inf), which are invisible.
    """
    generator = torch.Generator().manual_seed(seed)
    size = torch.tensor([width + 2.0, height + 2.0])
    keypoints = torch.rand(batch, num, 2, generator=generator) * size - 1.5
    visible = torch.rand(batch, num, generator=generator) > 0.25
    w, h = float(width), float(height)
    specials = [
        ((0.0, 0.0), True), ((w - 1, h - 1), True), ((-0.5, 0.0), True), ((w - 0.5, h - 1), True),
        ((-0.01, h - 0.7), True), ((w - 0.02, 0.3), True), ((-1.0, 1.0), True), ((0.2, h), True),
        ((w / 2 + 0.5, h / 2 - 0.5), True), ((-1e-9, 0.25), True), ((-0.5, -0.5), True),
        ((float("nan"), 1.0), False), ((float("inf"), float("-inf")), False), ((0.0, float("nan")), False),
        ((1.0, float("inf")), False),
    ]
    flat_points, flat_visible = keypoints.view(-1, 2), visible.view(-1)
    for index, (point, seen) in enumerate(specials[: flat_points.shape[0]]):
        flat_points[index] = torch.tensor(point)
        flat_visible[index] = seen
    return keypoints.to(device), visible.to(device)


# --------------------------------------------------------------------------- decode


def assert_decoded_close(got, expected):
    """decode's ``(coords, scores, indices, grad of the maps)`` against the reference's: the same
    cells in the same order, the same scores (the maximum, exactly), coordinates under
    :data:`NONNEGATIVE_SUM` and the gradient under :data:`DECODE_GRAD` with :func:`decode_grad_floor`."""
    coords, scores, indices, grad = got
    want_coords, want_scores, want_indices, want_grad = expected
    assert torch.equal(indices, want_indices), f"indices differ:\n{indices}\nvs the reference's\n{want_indices}"
    torch.testing.assert_close(scores, want_scores, rtol=0, atol=0, equal_nan=True)
    assert_close(coords, want_coords, (NONNEGATIVE_SUM, want_coords.dtype))
    height, width = want_grad.shape[-2:]
    assert_close(grad, want_grad, (DECODE_GRAD, want_grad.dtype), atol_floor=decode_grad_floor(want_grad.dtype, height, width))


def decode_with_grads(maps, backend, method, k, weights, window, grad_coords, grad_scores):
    """``(coords, scores, indices, d(coords . grad_coords + scores . grad_scores)/d maps)``."""
    maps = maps.detach().clone().requires_grad_()
    coords, scores, indices = torch.ops.h3r.decode(maps, method, k, weights, window, backend)
    (grad,) = torch.autograd.grad((coords, scores), maps, (grad_coords, grad_scores))
    return coords, scores, indices, grad


def assert_decode_matches_reference(maps, backend, method, k, weights, window):
    """decode on ``backend`` and its gradient for random incoming gradients, against the
    reference (:func:`assert_decoded_close`); returns the backend's ``(coords, scores, indices, grad)``."""
    acc = torch.float64 if maps.dtype == torch.float64 else torch.float32
    batch, num = maps.shape[:2]
    grad_coords = torch.randn(batch, num, 2, dtype=acc).to(maps.device)
    grad_scores = torch.randn(batch, num, dtype=acc).to(maps.device)
    got = decode_with_grads(maps, backend, method, k, weights, window, grad_coords, grad_scores)
    want = decode_with_grads(maps, "reference", method, k, weights, window, grad_coords, grad_scores)
    assert_decoded_close(got, want)
    return got
