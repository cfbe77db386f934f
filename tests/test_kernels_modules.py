"""The ``nn.Module`` front doors: HeatmapEncoder, HeatmapLoss, HeatmapDecoder."""
import numpy as np
import pytest
import torch
from torch import nn

import h3r_kernels
from conftest import available_backends

BACKENDS = available_backends("cpu")


def _keypoints(batch=2, num=3, height=6, width=7):
    return torch.rand(batch, num, 2) * torch.tensor([width - 1.0, height - 1.0])


def test_exported():
    assert {"HeatmapEncoder", "HeatmapLoss", "HeatmapDecoder"} <= set(h3r_kernels.__all__)
    for name in ("HeatmapEncoder", "HeatmapLoss", "HeatmapDecoder"):
        assert issubclass(getattr(h3r_kernels, name), nn.Module)


def test_extra_repr_shows_every_option():
    assert repr(h3r_kernels.HeatmapLoss(sigma=np.float32(1.5), rounding="nearest", loss="mse", reduction="sum")) == (
        "HeatmapLoss(loss='mse', reduction='sum', sigma=1.5, rounding='nearest', seed=None, backend='auto')"
    )
    assert repr(h3r_kernels.HeatmapDecoder(method="local", k=np.int64(4), weights="linear", window=5)) == (
        "HeatmapDecoder(method='local', k=4, weights='linear', window=5, backend='auto')"
    )
    assert repr(h3r_kernels.HeatmapEncoder((16, 12), sigma=2, seed=np.int64(3), expected=True)) == (
        "HeatmapEncoder(heatmap_size=(16, 12), sigma=2.0, rounding='random', seed=3, expected=True, "
        "dtype=torch.float32, backend='auto')"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_modules_equal_the_functions(backend):
    keypoints = _keypoints()
    visible = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, float("nan")]])
    weight = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.0, 1.0]])
    logits = torch.randn(2, 3, 6, 7, requires_grad=True)

    encoder = h3r_kernels.HeatmapEncoder((6, 7), sigma=1.5, rounding="nearest", backend=backend)
    want = h3r_kernels.encode(keypoints, (6, 7), visible, sigma=1.5, rounding="nearest", seed=0, backend=backend)
    assert torch.equal(encoder(keypoints, visible), want)

    criterion = h3r_kernels.HeatmapLoss(loss="mse", reduction="sum", seed=11, backend=backend)
    value = criterion(logits, keypoints, visible, weight)
    want = h3r_kernels.heatmap_loss(logits, keypoints, visible, weight=weight, loss="mse", reduction="sum", seed=11,
                                    backend=backend)
    assert torch.equal(value, want)
    assert torch.equal(criterion(logits, keypoints, visible, weight, seed=12),
                       h3r_kernels.heatmap_loss(logits, keypoints, visible, weight=weight, loss="mse",
                                                reduction="sum", seed=12, backend=backend))
    value.backward()
    assert logits.grad is not None

    decoder = h3r_kernels.HeatmapDecoder(method="local", weights="linear", window=3, backend=backend)
    probabilities = logits.detach().sigmoid()
    for got, expected in zip(decoder(probabilities), h3r_kernels.decode(probabilities, method="local",
                                                                         weights="linear", backend=backend)):
        assert torch.equal(got, expected)


def test_seed_none_draws_from_torch_generator():
    criterion = h3r_kernels.HeatmapLoss()
    logits, keypoints = torch.randn(2, 3, 6, 7), _keypoints() + 0.5
    torch.manual_seed(4)
    first = criterion(logits, keypoints)
    torch.manual_seed(4)
    assert torch.equal(criterion(logits, keypoints), first)
    torch.manual_seed(5)
    assert not torch.equal(criterion(logits, keypoints), first)


def test_decoder_in_sequential():
    head = nn.Conv2d(4, 3, 1)
    model = nn.Sequential(head, nn.Sigmoid(), h3r_kernels.HeatmapDecoder(weights="linear", k=4))
    features = torch.randn(2, 4, 6, 7)
    coords, scores = model(features)
    want = h3r_kernels.decode(head(features).sigmoid(), weights="linear", k=4)
    torch.testing.assert_close((coords, scores), want)
    coords.sum().backward()
    assert head.weight.grad is not None
    encoder = nn.Sequential(h3r_kernels.HeatmapEncoder((6, 7), seed=3))
    assert encoder(_keypoints()).shape == (2, 3, 6, 7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_modules_compile_fullgraph(backend):
    criterion = h3r_kernels.HeatmapLoss(seed=5, backend=backend)
    encoder = h3r_kernels.HeatmapEncoder((6, 7), seed=5, backend=backend)
    decoder = h3r_kernels.HeatmapDecoder(weights="linear", backend=backend)

    def step(logits, keypoints, visible, weight):
        return criterion(logits, keypoints, visible, weight), encoder(keypoints, visible), decoder(logits.sigmoid())

    logits = torch.randn(2, 3, 6, 7, requires_grad=True)
    args = (logits, _keypoints(), torch.tensor([[1, 0, 1], [1, 1, 1]]), torch.tensor([[1.0, 2.0, 0.0], [0.5, 1.0, 1.0]]))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got, want = compiled(*args), step(*args)
    torch.testing.assert_close(got, want)
    got[0].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: h3r_kernels.HeatmapLoss(loss="l1"), ValueError, "loss: expected one of 'bce', 'mse'"),
        (lambda: h3r_kernels.HeatmapLoss(reduction="max"), ValueError, "reduction: expected one of"),
        (lambda: h3r_kernels.HeatmapLoss(sigma=True), TypeError, "sigma: .*got bool True"),
        (lambda: h3r_kernels.HeatmapLoss(rounding="none"), ValueError, "rounding: 'none' .* needs sigma > 0"),
        (lambda: h3r_kernels.HeatmapLoss(seed=-1), ValueError, r"seed: expected None or an integer in \[0, 2\*\*32\)"),
        (lambda: h3r_kernels.HeatmapLoss(backend="gpu"), ValueError, "backend: expected one of"),
        (lambda: h3r_kernels.HeatmapEncoder((0, 4)), ValueError, r"heatmap_size: expected \(H, W\) with H, W >= 1"),
        (lambda: h3r_kernels.HeatmapEncoder((4, 4), dtype=torch.int32), TypeError, "dtype: expected torch.float32"),
        (lambda: h3r_kernels.HeatmapDecoder(method="mean"), ValueError, "method: expected one of"),
        (lambda: h3r_kernels.HeatmapDecoder(weights="uniform"), ValueError, "weights: expected one of"),
        (lambda: h3r_kernels.HeatmapDecoder(k=33), ValueError, r"k: expected an integer in \[1, 32\]"),
        (lambda: h3r_kernels.HeatmapDecoder(k=True), TypeError, r"k: expected an integer in \[1, 32\], got bool"),
        (lambda: h3r_kernels.HeatmapDecoder(window=4), ValueError, "window: expected an odd integer >= 1"),
        (lambda: h3r_kernels.HeatmapDecoder(window=33), ValueError, r"window: expected window\*window <= 1024"),
    ],
)
def test_bad_options_fail_at_construction(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_with_a_seed_that_changes_between_calls(backend):
    """A compiled step gets a new seed each call: after the first recompile torch.compile makes
    the seed a symbolic integer, which the fake kernels' checks accept (the real op checks it)."""
    criterion = h3r_kernels.HeatmapLoss(backend=backend)
    encoder = h3r_kernels.HeatmapEncoder((5, 6), sigma=1.0, backend=backend)

    def step(logits, keypoints, seed):
        return criterion(logits, keypoints, seed=seed), encoder(keypoints, seed=seed)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    logits, keypoints = torch.randn(2, 3, 5, 6), _keypoints(2, 3, 5, 6) + 0.3
    for seed in (1, 2, 3, 2**32 - 1):
        got, want = compiled(logits, keypoints, seed), step(logits, keypoints, seed)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
