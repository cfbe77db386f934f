"""``heatmap_loss`` and ``decode`` under functorch transforms and forward-mode AD
(h3r_kernels/transforms.py), on every (backend, device) pair: ``torch.func.grad`` gives autograd's
bits, ``vmap(grad)`` the per-sample gradients, ``jvp``/``jacfwd``/``forward_ad`` the Jacobian
that ``jacrev`` gives (a custom op's tangent used to come out as 0 or None), and every second
derivative raises. Plain eager calls do not take this path.
"""
import pytest
import torch
from torch.autograd import forward_ad

import h3r_kernels
from conftest import make_keypoints
from h3r_kernels import transforms

# vmap runs the ops per sample (torch's fallback) and says so; torch's first forward-AD call
# scripts its own decompositions with the deprecated torch.jit.script.
pytestmark = [pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")]

DECODE_CASES = [("topk", "softmax"), ("topk", "linear"), ("local", "softmax"), ("argmax", "softmax")]


def _inputs(device, dtype=torch.float64, shape=(2, 3, 6, 7)):
    batch, num, height, width = shape
    logits = torch.randn(shape, dtype=torch.float64).to(device=device, dtype=dtype)
    keypoints, visible = make_keypoints(batch, num, height, width, seed=3, device=device)
    return logits, keypoints, visible


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_loss_grad_and_per_sample_grads_are_autograds(backend, device, reduction):
    logits, keypoints, visible = _inputs(device)

    def loss(z, points, seen):
        return h3r_kernels.heatmap_loss(z, points, seen, seed=7, reduction=reduction, backend=backend).sum()

    z = logits.clone().requires_grad_()
    (want,) = torch.autograd.grad(loss(z, keypoints, visible), z)
    assert torch.equal(torch.func.grad(loss)(logits, keypoints, visible), want)
    # per-sample gradients: each sample is batch 1 (so b = 0 in the rounding's key)
    per_sample = torch.func.vmap(torch.func.grad(lambda z, p, v: loss(z[None], p[None], v[None])))(logits, keypoints, visible)
    for b in range(logits.shape[0]):
        zb = logits[b:b + 1].clone().requires_grad_()
        (one,) = torch.autograd.grad(loss(zb, keypoints[b:b + 1], visible[b:b + 1]), zb)
        torch.testing.assert_close(per_sample[b], one[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_loss_forward_mode_is_the_jacobian(backend, device, reduction):
    logits, keypoints, visible = _inputs(device)
    tangent = torch.randn_like(logits)

    def loss(z):
        return h3r_kernels.heatmap_loss(z, keypoints, visible, seed=7, reduction=reduction, backend=backend)

    jacobian = torch.func.jacrev(loss)(logits)
    want = (jacobian * tangent).flatten(-4).sum(-1)
    assert want.abs().max() > 0
    torch.testing.assert_close(torch.func.jvp(loss, (logits,), (tangent,))[1], want, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(torch.func.jacfwd(loss)(logits), jacobian, rtol=1e-10, atol=1e-14)
    with forward_ad.dual_level():
        value = loss(forward_ad.make_dual(logits, tangent))
        torch.testing.assert_close(forward_ad.unpack_dual(value).tangent, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method,weights", DECODE_CASES)
def test_decode_derivatives_under_transforms(backend, device, method, weights):
    maps = _inputs(device)[0]
    maps[0, 0, 2, 3] = 4.0  # a clear peak, and one map with ties
    maps[1, 2] = 1.0

    def decoded(m):
        coords, scores = h3r_kernels.decode(m, method=method, k=5, weights=weights, backend=backend)
        return torch.cat([coords.flatten(), scores.flatten()])

    m = maps.clone().requires_grad_()
    cotangent = torch.randn(2 * 3 * 3, dtype=maps.dtype, device=device)
    (want,) = torch.autograd.grad(decoded(m), m, cotangent)
    assert torch.equal(torch.func.vjp(decoded, maps)[1](cotangent)[0], want)
    jacobian = torch.func.jacrev(decoded)(maps)
    assert jacobian.abs().max() > 0
    torch.testing.assert_close(torch.func.jacfwd(decoded)(maps), jacobian, rtol=1e-10, atol=1e-14)
    tangent = torch.randn_like(maps)
    with forward_ad.dual_level():
        coords, scores = h3r_kernels.decode(forward_ad.make_dual(maps, tangent), method=method, k=5, weights=weights,
                                            backend=backend)
        got = torch.cat([forward_ad.unpack_dual(coords).tangent.flatten(), forward_ad.unpack_dual(scores).tangent.flatten()])
    torch.testing.assert_close(got, (jacobian * tangent).flatten(1).sum(1), rtol=1e-10, atol=1e-14)


def test_second_derivatives_raise(backend, device):
    logits, keypoints, visible = _inputs(device)

    def loss(z):
        return h3r_kernels.heatmap_loss(z, keypoints, visible, seed=7, backend=backend)

    def x_sum(m):
        return h3r_kernels.decode(m, backend=backend)[0].sum()

    for function, name in ((loss, "heatmap_loss"), (x_sum, "decode")):
        for twice in (torch.func.hessian(function), torch.func.jacrev(torch.func.jacrev(function)),
                      torch.func.jacrev(torch.func.jacfwd(function)), torch.func.grad(lambda z: torch.func.grad(function)(z).sum())):
            with pytest.raises(RuntimeError, match=f"h3r::{name}.*first-order only"):
                twice(logits)


def test_plain_calls_and_vmap_alone_do_not_take_this_path(monkeypatch):
    calls = []
    monkeypatch.setattr(transforms, "heatmap_loss", lambda *args: calls.append(args))
    logits, keypoints, visible = _inputs("cpu", torch.float32)
    assert not transforms.differentiating(True)
    h3r_kernels.heatmap_loss(logits.requires_grad_(), keypoints, visible, seed=1).backward()
    torch.func.vmap(lambda z: h3r_kernels.heatmap_loss(z[None], keypoints[:1], seed=1))(logits.detach())
    assert calls == []
    seen = []
    torch.func.grad(lambda z: seen.append((transforms.differentiating(True), transforms.differentiating(False)))
                    or z.sum())(torch.randn(3))
    with forward_ad.dual_level():
        seen.append((transforms.differentiating(True), transforms.differentiating(False)))
    assert seen == [(True, False), (True, True)]  # under grad, a call that needs no gradient stays off this path

