"""No silent NaN, and the same answer on every backend (fault-probe findings).

* Masked keypoints (invisible, weight 0, target off the map) contribute nothing, whatever
  their logits hold: a NaN or inf there leaves loss and gradient finite and bit-identical to
  the same call with those logits zeroed.
* Non-finite maps decode by one rule for every method, weighting and backend: any NaN gives
  NaN coordinates and a NaN score; +inf/-inf are weighed as limits (see ``decode``).
Every backend available here runs (the Triton interpreter on the CPU, CUDA C on a GPU).
"""
import math

import pytest
import torch

import h3r_kernels
from conftest import available_backends

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = available_backends(DEVICE)
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),  # the interpreter's numpy
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]
NAN, INF = float("nan"), float("inf")


# --------------------------------------------------------------------------- masked keypoints


def _masked_case(dtype, with_weight=True):
    """(logits, keypoints, visible, weight, masked (B, K) bool) with poison in every masked map:
    keypoint (0, 1) is invisible, (1, 0) has weight 0 (is invisible when not ``with_weight``:
    weight None), (1, 2) lies off the map."""
    keypoints = torch.tensor(
        [[[1.2, 2.7], [3.0, 1.0], [4.4, 0.2]], [[2.0, 2.0], [0.6, 3.1], [30.0, 1.0]]], device=DEVICE
    )
    visible = torch.tensor([[True, False, True], [True, True, True]], device=DEVICE)
    weight = torch.tensor([[1.0, 1.0, 0.5], [0.0, 2.0, 1.0]], device=DEVICE)
    masked = torch.tensor([[False, True, False], [True, False, True]], device=DEVICE)
    if not with_weight:
        visible[1, 0] = False
        weight = None
    logits = torch.randn(2, 3, 5, 6, device=DEVICE).to(dtype)
    logits[0, 1, 2, 2] = NAN
    logits[0, 1, 0, 0] = INF
    logits[1, 0] = NAN
    logits[1, 2, 4, 5] = -INF
    logits[1, 2, 1, 1] = NAN
    return logits, keypoints, visible, weight, masked


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss,sigma", [("bce", 0.0), ("mse", 1.5)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_weight", [False, True], ids=["visible", "weight"])
def test_non_finite_logits_of_masked_keypoints_change_nothing(backend, loss, sigma, reduction, dtype, with_weight):
    logits, keypoints, visible, weight, masked = _masked_case(dtype, with_weight)
    clean = torch.where(masked[..., None, None], torch.zeros_like(logits), logits)
    results = []
    for z in (logits, clean):
        z = z.clone().requires_grad_()
        weighting = {} if weight is None else {"weight": weight}
        value = h3r_kernels.heatmap_loss(z, keypoints, visible, sigma=sigma, seed=7, loss=loss, reduction=reduction,
                                         backend=backend, **weighting)
        value.sum().backward()
        results.append((value.detach(), z.grad))
    (value, grad), (want_value, want_grad) = results
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    assert torch.equal(value, want_value) and torch.equal(grad, want_grad)
    assert (grad[masked] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_logits_of_a_contributing_keypoint_show(backend):
    """The other side of the rule: a NaN in a contributing keypoint's map is not hidden."""
    logits, keypoints, visible, _, _ = _masked_case(torch.float32, with_weight=False)
    logits[0, 0, 3, 3] = NAN
    value = h3r_kernels.heatmap_loss(logits, keypoints, visible, seed=7, reduction="none", backend=backend)
    assert torch.isnan(value[0, 0]) and torch.isfinite(value.flatten()[1:]).all()


# --------------------------------------------------------------------------- non-finite decode


def _non_finite_maps():
    """Four 4x5 maps: 0 holds a NaN (not at the finite maximum); 1 has +inf at cells 6 and 7
    ((x, y) = (1, 1) and (2, 1)); 2 is all -inf; 3 is finite but for one -inf cell."""
    maps = torch.linspace(0.05, 0.95, 20).reshape(4, 5).repeat(1, 4, 1, 1).reshape(1, 4, 4, 5).clone()
    maps[0, 0, 3, 4] = 5.0
    maps[0, 0, 0, 2] = NAN
    maps[0, 1, 1, 1] = INF
    maps[0, 1, 1, 2] = INF
    maps[0, 2] = -INF
    maps[0, 3, 3, 3] = -INF
    return maps.to(DEVICE)


# (method, weights) -> expected coordinates of maps 1 (+inf) and 2 (all -inf), k=4, window=3.
EXPECTED = {
    ("topk", "softmax"): ((1.5, 1.0), (1.5, 0.0)),   # -inf: the 4 first cells, equal weights
    ("topk", "linear"): ((1.5, 1.0), (0.0, 0.0)),    # -inf: nothing positive, the peak cell
    ("local", "softmax"): ((1.5, 1.0), (0.5, 0.5)),  # -inf: the 4 window cells on the map
    ("local", "linear"): ((1.5, 1.0), (0.0, 0.0)),
    ("argmax", "softmax"): ((1.0, 1.0), (0.0, 0.0)),
    ("argmax", "linear"): ((1.0, 1.0), (0.0, 0.0)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method,weights", sorted(EXPECTED))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_non_finite_maps_decode_by_one_rule(backend, method, weights, dtype):
    maps = _non_finite_maps().to(dtype).requires_grad_()
    coords, scores = h3r_kernels.decode(maps, method=method, k=4, weights=weights, window=3, backend=backend)
    assert torch.isnan(coords[0, 0]).all() and torch.isnan(scores[0, 0])
    plus, minus = EXPECTED[method, weights]
    assert coords[0, 1].tolist() == list(plus) and scores[0, 1] == INF
    assert coords[0, 2].tolist() == list(minus) and scores[0, 2] == -INF
    assert torch.isfinite(coords[0, 3]).all() and math.isclose(scores[0, 3].item(), 0.95, rel_tol=1e-3)
    # Maps whose maximum is not finite get no coordinate gradient; the score's goes to the peak.
    grad_coords = torch.ones_like(coords)
    grad_scores = torch.tensor([[2.0, 3.0, 4.0, 0.0]], dtype=scores.dtype, device=DEVICE)
    (grad,) = torch.autograd.grad((coords, scores), maps, (grad_coords, grad_scores))
    flat = grad.detach().flatten(-2).double().cpu()
    peaks = {0: 2, 1: 6, 2: 0}
    for m, peak in peaks.items():
        want = torch.zeros(20, dtype=torch.float64)
        want[peak] = grad_scores[0, m].item()
        assert torch.equal(flat[0, m], want), (m, flat[0, m])
    assert torch.isfinite(flat[0, 3]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method,weights", sorted(EXPECTED))
def test_decode_never_returns_the_nan_cell_as_a_location(backend, method, weights):
    """The fault probe: linear weights on a NaN map used to fall back to the NaN cell's coordinates."""
    maps = torch.rand(2, 3, 6, 7, device=DEVICE)
    maps[0, 1, 2, 5] = NAN
    maps[1, 2, 0, 0] = NAN
    maps[1, 2, 4, 4] = NAN
    coords, scores = h3r_kernels.decode(maps, method=method, k=5, weights=weights, backend=backend)
    nan_maps = torch.zeros(2, 3, dtype=torch.bool, device=DEVICE)
    nan_maps[0, 1] = nan_maps[1, 2] = True
    assert torch.isnan(coords[nan_maps]).all() and torch.isnan(scores[nan_maps]).all()
    assert torch.isfinite(coords[~nan_maps]).all() and torch.isfinite(scores[~nan_maps]).all()
    want = h3r_kernels.decode(maps, method=method, k=5, weights=weights, backend="reference")
    torch.testing.assert_close((coords, scores), want, equal_nan=True)


# --------------------------------------------------------------------------- autograd (second fault probe)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "registered-op"])
def test_float16_loss_gradient_survives_the_mean(backend, fast):
    """float16 logits: the forward keeps its 1/(count*H*W)-scaled gradient in float32, so a
    GradScaler-sized incoming gradient gives the float32 gradient to float16 precision (saved in
    float16 it underflowed to 0 at 85% of the pixels, 51% relative error)."""
    torch.manual_seed(0)
    base = torch.randn(8, 17, 32, 24, device=DEVICE) - 4
    keypoints = torch.rand(8, 17, 2, device=DEVICE) * torch.tensor([23.0, 31.0], device=DEVICE)
    grads = {}
    for dtype in (torch.float32, torch.float16):
        logits = base.to(dtype, copy=True).requires_grad_()
        with h3r_kernels.eager.fast_path(fast):
            (h3r_kernels.heatmap_loss(logits, keypoints, seed=3, backend=backend) * 2.0**14).backward()
        assert logits.grad.dtype == dtype
        grads[dtype] = logits.grad.float()
    want, got = grads[torch.float32], grads[torch.float16]
    assert (got == 0).float().mean() <= (want == 0).float().mean() + 0.001
    assert torch.linalg.vector_norm(got - want) <= 2e-3 * torch.linalg.vector_norm(want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "registered-op"])
@pytest.mark.parametrize("logits_grad", [True, False], ids=["logits-trained", "logits-frozen"])
def test_no_gradient_reaches_keypoints_or_weight(backend, fast, logits_grad):
    """``weight`` and ``keypoints`` are constants on every path, whether or not the logits need a gradient."""
    logits = torch.randn(1, 2, 6, 6, device=DEVICE, requires_grad=logits_grad)
    keypoints = (torch.rand(1, 2, 2, device=DEVICE) * 5).requires_grad_()
    weight = torch.ones(1, 2, device=DEVICE, requires_grad=True)
    with h3r_kernels.eager.fast_path(fast):
        value = h3r_kernels.heatmap_loss(logits, keypoints, weight=weight, sigma=1.5, rounding="none", seed=1,
                                         loss="mse", backend=backend)
        maps = h3r_kernels.encode(keypoints, (6, 6), sigma=1.5, rounding="none", backend=backend)
    assert value.requires_grad == logits_grad and not maps.requires_grad
    if logits_grad:
        value.backward()
        assert logits.grad is not None
    assert keypoints.grad is None and weight.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "registered-op"])
def test_second_derivatives_are_refused_not_wrong(backend, fast):
    """The backward passes have no derivative of their own: differentiating them raises on every path
    (a gradient that silently did not require one dropped a gradient penalty)."""
    logits = torch.randn(1, 2, 5, 5, device=DEVICE, requires_grad=True)
    keypoints = torch.rand(1, 2, 2, device=DEVICE) * 4
    with h3r_kernels.eager.fast_path(fast):
        for value in (h3r_kernels.heatmap_loss(logits, keypoints, seed=0, backend=backend),
                      h3r_kernels.decode(logits, backend=backend)[0].sum()):
            (grad,) = torch.autograd.grad(value, logits, create_graph=True)
            with pytest.raises(RuntimeError):
                torch.autograd.grad(grad.pow(2).sum(), logits)
        # torch.autograd.functional differentiates the gradient with strict=False: it gave zeros on the fast path
        for function in (lambda z: h3r_kernels.heatmap_loss(z, keypoints, seed=0, backend=backend),
                         lambda z: h3r_kernels.decode(z, backend=backend)[0].sum()):
            for second in (torch.autograd.functional.hessian, torch.autograd.functional.hvp, torch.autograd.functional.jvp):
                with pytest.raises(RuntimeError, match="first-order only" if fast else "no autograd formula"):
                    second(function, logits.detach(), *([torch.ones_like(logits)] if second != torch.autograd.functional.hessian else []))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["topk", "local"])
def test_linear_weights_of_values_whose_sum_overflows(backend, method):
    """Cells of 3e38 and 3 x 2e38 sum past the float32 maximum; the linear weights are still 3/9 and
    2/9 (the values are divided by the peak before they are summed): they decoded to (0, 0) before."""
    maps = torch.zeros(1, 1, 8, 8, device=DEVICE)
    maps[0, 0, 5:7, 3:5] = 2e38
    maps[0, 0, 5, 3] = 3e38
    maps = maps.requires_grad_()
    coords, _ = h3r_kernels.decode(maps, method=method, k=4, weights="linear", backend=backend)
    w = torch.tensor([3.0, 2.0, 2.0, 2.0]) / 9.0  # (5,3) (5,4) (6,3) (6,4)
    want = torch.tensor([[[float(w @ torch.tensor([3.0, 4, 3, 4])), float(w @ torch.tensor([5.0, 5, 6, 6]))]]],
                        device=DEVICE)
    torch.testing.assert_close(coords, want, rtol=1e-6, atol=1e-5)
    coords.sum().backward()
    assert torch.isfinite(maps.grad).all()
