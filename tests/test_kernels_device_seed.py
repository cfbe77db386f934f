"""Seeds given as 0-d integer tensors on the keypoints' device: the same draws as the int seed,
bit for bit, on every backend and device, through the functions, the modules, torch.compile and
(on a GPU) a captured CUDA graph that re-draws at every replay."""
import pytest
import torch

import h3r_kernels
from conftest import make_keypoints
from h3r_kernels import rng

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy
SEEDS = [0, 7, 0xDEADBEEF, 2**32 - 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_uniforms_from_a_tensor_seed_are_the_int_draws(seed):
    want = rng.uniforms(seed, 5, 9)
    for dtype in (torch.int64, torch.int32 if seed < 2**31 else torch.int64):
        assert torch.equal(rng.uniforms(torch.tensor(seed, dtype=dtype), 5, 9), want)


@pytest.mark.parametrize("seed", SEEDS)
def test_encode_with_a_tensor_seed(backend, device, seed):
    keypoints, visible = make_keypoints(3, 8, 9, 10, device=device)
    seed_tensor = torch.tensor(seed, device=device)
    for sigma, rounding, expected in ((0.0, "random", False), (1.5, "random", False), (0.0, "random", True),
                                      (1.0, "nearest", False)):
        options = dict(sigma=sigma, rounding=rounding, expected=expected, backend=backend)
        want = h3r_kernels.encode(keypoints, (9, 10), visible, seed=seed, **options)
        got = h3r_kernels.encode(keypoints, (9, 10), visible, seed=seed_tensor, **options)
        assert torch.equal(got, want), (sigma, rounding, expected)


@pytest.mark.parametrize("loss,sigma", [("bce", 0.0), ("mse", 2.0)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_heatmap_loss_with_a_tensor_seed(backend, device, loss, sigma, reduction):
    keypoints, visible = make_keypoints(2, 9, 7, 8, device=device)
    logits = torch.randn(2, 9, 7, 8, device=device)
    results = []
    for seed in (0xDEADBEEF, torch.tensor(0xDEADBEEF, device=device)):
        scores = logits.clone().requires_grad_()
        value = h3r_kernels.heatmap_loss(scores, keypoints, visible, sigma=sigma, seed=seed, loss=loss,
                                         reduction=reduction, backend=backend)
        value.sum().backward()
        results.append((value.detach(), scores.grad))
    (want_value, want_grad), (got_value, got_grad) = results
    assert torch.equal(got_value, want_value) and torch.equal(got_grad, want_grad)


def test_modules_take_a_tensor_seed_per_call():
    keypoints, visible = make_keypoints(2, 6, 8, 8)
    logits = torch.randn(2, 6, 8, 8)
    loss = h3r_kernels.HeatmapLoss()
    encoder = h3r_kernels.HeatmapEncoder((8, 8))
    assert torch.equal(loss(logits, keypoints, visible, seed=torch.tensor(11)), loss(logits, keypoints, visible, seed=11))
    assert torch.equal(encoder(keypoints, visible, seed=torch.tensor(11)), encoder(keypoints, visible, seed=11))


def test_compiled_call_redraws_with_the_tensor():
    keypoints, visible = make_keypoints(2, 6, 8, 8)
    logits = torch.randn(2, 6, 8, 8)

    def step(seed):
        return h3r_kernels.heatmap_loss(logits, keypoints, visible, seed=seed, reduction="none")

    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compiled = torch.compile(step, backend=recording_backend, fullgraph=True)
    seed = torch.tensor(0)
    for value in (3, 0xDEADBEEF, 3, 7):
        seed.fill_(value)
        assert torch.equal(compiled(seed), step(value)), value
    assert len(graphs) == 1  # one graph for every seed: nothing recompiles
    assert not torch.equal(step(3), step(0xDEADBEEF))  # the draws do change with the seed


@pytest.mark.parametrize(
    "seed,error,match",
    [
        (torch.tensor(2**32), ValueError, r"seed: expected None or an integer in \[0, 2\*\*32\), got 4294967296"),
        (torch.tensor(-1), ValueError, r"seed: expected None or an integer in \[0, 2\*\*32\), got -1"),
        (torch.tensor([3]), TypeError, r"seed: .*got a 1-d torch.int64 tensor"),
        (torch.tensor(True), TypeError, r"seed: .*got a 0-d torch.bool tensor"),
        (torch.tensor(3.0), TypeError, r"seed: .*got a 0-d torch.float32 tensor"),
    ],
)
def test_bad_tensor_seeds(seed, error, match):
    keypoints, _ = make_keypoints(1, 2, 4, 4)
    with pytest.raises(error, match=match):
        h3r_kernels.encode(keypoints, (4, 4), seed=seed)
    with pytest.raises(error, match=match):
        h3r_kernels.heatmap_loss(torch.zeros(1, 2, 4, 4), keypoints, seed=seed)


@pytest.mark.gpu
def test_captured_graph_redraws_at_every_replay():
    keypoints, visible = make_keypoints(4, 17, 16, 16, device="cuda")
    logits = torch.randn(4, 17, 16, 16, device="cuda", requires_grad=True)
    seed = torch.zeros((), dtype=torch.int64, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (compiles the kernels) off the capturing stream
        h3r_kernels.heatmap_loss(logits, keypoints, visible, seed=seed).backward()
    torch.cuda.current_stream().wait_stream(stream)
    logits.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        value = h3r_kernels.heatmap_loss(logits, keypoints, visible, seed=seed)
        value.backward()
    for draw in (5, 0xDEADBEEF, 5):
        seed.fill_(draw)
        graph.replay()
        torch.cuda.synchronize()
        fresh = logits.detach().clone().requires_grad_()
        want = h3r_kernels.heatmap_loss(fresh, keypoints, visible, seed=draw)
        want.backward()
        assert torch.equal(value, want) and torch.equal(logits.grad, fresh.grad), draw
