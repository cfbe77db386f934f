"""The eager fast path (h3r_kernels/eager.py), on every backend and device: the same bits as the
registered op, forward and backward; which calls take it and which go through ``torch.library``
(compile, FakeTensor, subclasses, functorch, ``fast_path(False)``); profiler names."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import h3r_kernels
from conftest import make_keypoints
from h3r_kernels import api, eager, ops

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy


def _both_paths(call):
    """``call()`` with the fast path, then with the registered op."""
    with eager.fast_path(True):
        fast = call()
    with eager.fast_path(False):
        registered = call()
    return fast, registered


def _assert_same_bits(fast, registered):
    for got, want in zip(fast, registered):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.nan_to_num(), want.nan_to_num()) and torch.equal(got.isnan(), want.isnan())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("loss,sigma,reduction", [("bce", 0.0, "mean"), ("bce", 0.0, "none"), ("mse", 1.5, "sum")])
@pytest.mark.parametrize("masks", ["none", "bool", "float+weight"])
def test_heatmap_loss_same_bits_both_paths(backend, device, dtype, loss, sigma, reduction, masks):
    keypoints, visible = make_keypoints(3, 7, 9, 11, device=device)
    logits = (torch.randn(3, 7, 9, 11, device=device) * 4).to(dtype)
    weight = None
    if masks == "float+weight":
        visible = visible.to(torch.float32)
        weight = torch.rand(3, 7, device=device) * 2 - 0.5
    elif masks == "none":
        visible = None

    def call():
        scores = logits.clone().requires_grad_()
        value = h3r_kernels.heatmap_loss(scores, keypoints, visible, weight=weight, sigma=sigma, seed=12345,
                                         loss=loss, reduction=reduction, backend=backend)
        (value * torch.linspace(0.5, 2.0, value.numel(), device=device).view(value.shape)).sum().backward()
        return value.detach(), scores.grad

    _assert_same_bits(*_both_paths(call))


def test_heatmap_loss_unit_incoming_gradient_and_retained_graph(backend, device):
    keypoints, visible = make_keypoints(2, 5, 8, 8, device=device)
    logits = torch.randn(2, 5, 8, 8, device=device)

    def call():
        scores = logits.clone().requires_grad_()
        value = h3r_kernels.heatmap_loss(scores, keypoints, visible, seed=7, backend=backend)
        value.backward()  # the incoming gradient is exactly 1: on CUDA the saved gradient is used in place
        return value.detach(), scores.grad.clone()

    _assert_same_bits(*_both_paths(call))
    if device == "cpu":  # a second backward through the same graph: a new tensor each time off CUDA
        scores = logits.clone().requires_grad_()
        value = h3r_kernels.heatmap_loss(scores, keypoints, visible, seed=7, backend=backend)
        value.backward(retain_graph=True)
        first = scores.grad.clone()
        value.backward()
        torch.testing.assert_close(scores.grad, 2 * first, rtol=0, atol=0)


def test_heatmap_loss_without_gradient(backend, device):
    keypoints, _ = make_keypoints(2, 3, 6, 6, device=device)
    logits = torch.randn(2, 3, 6, 6, device=device, requires_grad=True)
    with torch.no_grad():
        value = h3r_kernels.heatmap_loss(logits, keypoints, seed=3, backend=backend)
    assert value.grad_fn is None and not value.requires_grad
    plain = h3r_kernels.heatmap_loss(logits.detach(), keypoints, seed=3, backend=backend)
    assert plain.grad_fn is None and torch.equal(value, plain)


@pytest.mark.parametrize("method,weights", [("topk", "softmax"), ("topk", "linear"), ("local", "softmax"), ("argmax", "softmax")])
def test_decode_same_bits_both_paths(backend, device, method, weights):
    maps = torch.randn(3, 4, 10, 9, device=device, dtype=torch.float64)
    maps[0, 0, 2, 3] = float("nan")
    maps[1, 1, 4, 4] = float("inf")

    def call():
        heatmaps = maps.clone().requires_grad_()
        coords, scores = h3r_kernels.decode(heatmaps, method=method, k=5, weights=weights, backend=backend)
        (coords.nan_to_num(0.0) * torch.tensor([1.0, -2.0], device=device, dtype=coords.dtype)).sum().backward()
        return coords.detach(), scores.detach(), heatmaps.grad

    _assert_same_bits(*_both_paths(call))

    def no_grad_call():
        return h3r_kernels.decode(maps, method=method, k=5, weights=weights, backend=backend)

    _assert_same_bits(*_both_paths(no_grad_call))


def test_encode_same_bits_both_paths(backend, device):
    keypoints, visible = make_keypoints(2, 9, 7, 12, device=device)
    for sigma, rounding, expected in ((0.0, "random", False), (1.2, "nearest", True), (0.8, "none", False)):
        _assert_same_bits(*_both_paths(lambda: (h3r_kernels.encode(
            keypoints, (7, 12), visible.to(torch.int32), sigma=sigma, rounding=rounding, seed=99, expected=expected,
            dtype=torch.float16, backend=backend),)))


# --------------------------------------------------------------------------- which path


class _Counting:
    """Wraps ``h3r_kernels.ops.<name>`` (what api.py calls on the registered path) and counts calls."""

    def __init__(self, monkeypatch, name):
        self.calls = 0
        original = getattr(ops, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(ops, name, counted)


def _loss_inputs(cls=torch.Tensor):
    logits = torch.randn(2, 3, 5, 6).as_subclass(cls).requires_grad_()
    return logits, (torch.rand(2, 3, 2) * 4).as_subclass(cls)


def test_plain_eager_calls_skip_torch_library(monkeypatch):
    counts = {name: _Counting(monkeypatch, name) for name in ("encode", "heatmap_loss", "decode")}
    logits, keypoints = _loss_inputs()
    h3r_kernels.heatmap_loss(logits, keypoints, seed=1).backward()
    h3r_kernels.decode(logits)[0].sum().backward()
    h3r_kernels.encode(keypoints, (5, 6), seed=1)
    h3r_kernels.heatmap_loss(torch.nn.Parameter(logits.detach()), keypoints, seed=1).backward()
    assert {name: count.calls for name, count in counts.items()} == {"encode": 0, "heatmap_loss": 0, "decode": 0}
    with eager.fast_path(False):
        h3r_kernels.heatmap_loss(logits, keypoints, seed=1).backward()
        h3r_kernels.decode(logits)
        h3r_kernels.encode(keypoints, (5, 6), seed=1)
    assert {name: count.calls for name, count in counts.items()} == {"encode": 1, "heatmap_loss": 1, "decode": 1}
    assert eager._enabled[0] is True  # restored


class _Tagged(torch.Tensor):
    """A tensor subclass with a __torch_function__ override (as DTensor, MaskedTensor, ... have)."""


class _PassThrough(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_subclasses_fake_tensors_and_transforms_take_the_registered_op(monkeypatch):
    count = _Counting(monkeypatch, "heatmap_loss")
    logits, keypoints = _loss_inputs(_Tagged)
    assert not eager.takes_fast_path(logits, keypoints)
    h3r_kernels.heatmap_loss(logits, keypoints, seed=1)
    assert count.calls == 1
    with FakeTensorMode() as mode:
        fake_logits = mode.from_tensor(torch.randn(2, 3, 5, 6))
        fake_points = mode.from_tensor(torch.rand(2, 3, 2))
        value = h3r_kernels.heatmap_loss(fake_logits, fake_points, seed=1, reduction="none")
        assert value.shape == (2, 3)
    assert count.calls == 2
    assert not eager.takes_fast_path(fake_logits)
    seen = []

    def inside_transform(x):
        seen.append(eager.takes_fast_path(x))
        return x.sum()

    torch.func.grad(inside_transform)(torch.randn(3))
    with _PassThrough():
        seen.append(eager.takes_fast_path(torch.randn(3)))
    assert seen == [False, False]


def test_compile_traces_the_registered_op():
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    def step(logits, keypoints):
        return h3r_kernels.heatmap_loss(logits, keypoints, seed=5) + h3r_kernels.decode(logits)[0].sum()

    logits, keypoints = _loss_inputs()
    compiled = torch.compile(step, backend=recording_backend, fullgraph=True)
    got = compiled(logits.detach(), keypoints)
    targets = {str(node.target) for graph in graphs for node in graph.graph.nodes if node.op == "call_function"}
    assert "h3r.heatmap_loss.default" in targets and "h3r.decode.default" in targets, targets
    torch.testing.assert_close(got, step(logits.detach(), keypoints), rtol=0, atol=0)


def test_profiler_names_the_ops():
    logits, keypoints = _loss_inputs()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        h3r_kernels.heatmap_loss(logits, keypoints, seed=1).backward()
        h3r_kernels.decode(logits)[0].sum().backward()
        h3r_kernels.encode(keypoints, (5, 6), seed=1)
    names = {event.key for event in profile.key_averages()}
    expected = {"h3r::heatmap_loss", "h3r::heatmap_loss_backward", "h3r::decode", "h3r::decode_backward", "h3r::encode"}
    assert expected <= names, expected - names


def test_bad_inputs_fail_the_same_way_on_both_paths():
    logits, keypoints = _loss_inputs()
    for path in (True, False):
        with eager.fast_path(path):
            with pytest.raises(ValueError, match=r"keypoints: expected \(B, K\) = \(2, 3\) to match logits"):
                h3r_kernels.heatmap_loss(logits, keypoints[:, :2], seed=1)
            with pytest.raises(ValueError, match=r"k: expected 1 <= k <= H\*W = 30, got 31"):
                h3r_kernels.decode(logits, k=31)
    assert api.eager is eager
