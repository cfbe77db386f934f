"""The spec (h3r_kernels/spec.py) is the one list of the ops' options, and every backend
implements all of it.

Each option's strings come from the spec's enums: the checks accept exactly them, and every
(backend, device) pair (conftest.py) runs every one of them against the reference, which
raises for an option it lacks. A member added to a spec enum therefore fails here on every
backend until it is implemented there (the CUDA C sources are also checked without a GPU, in
test_csrc_compile.py: test_every_spec_option_is_implemented_in_the_sources).
"""
import pytest
import torch

import h3r_kernels
from conftest import assert_close, assert_decoded_close, make_keypoints
from h3r_kernels import checks, reference, spec

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy


def test_checks_accept_exactly_the_spec_options():
    assert checks.ROUNDINGS == spec.names(spec.Rounding) == ("random", "nearest", "floor", "none")
    assert checks.LOSSES == spec.names(spec.Loss) == ("bce", "mse")
    assert checks.REDUCTIONS == spec.names(spec.Reduction) == ("mean", "sum", "none")
    assert checks.METHODS == spec.names(spec.Method) == ("topk", "local", "argmax")
    assert checks.WEIGHTINGS == spec.names(spec.Weighting) == ("softmax", "linear")
    for option in spec.OPTIONS.values():
        assert [spec.code(option, name) for name in spec.names(option)] == list(range(len(option)))


def test_c_defines_cover_every_code_and_constant():
    defines = spec.c_defines()
    for option in spec.OPTIONS.values():
        for member in option:
            assert defines[f"H3R_{option.__name__.upper()}_{member.name}"] == int(member)
    assert defines["H3R_REDUCE_CHUNK"] % defines["H3R_BLOCK"] == 0
    assert all(option.startswith("-DH3R_") for option in spec.c_define_options())


def test_slot_rules():
    assert [spec.slots(method, 5, 3) for method in spec.names(spec.Method)] == [5, 9, 1]
    assert [spec.peak_slot(method, 9) for method in spec.names(spec.Method)] == [0, 4, 0]
    assert spec.gaussian_scale(0.0) == 0.0 and spec.gaussian_scale(2.0) == -0.125
    assert spec.compute_dtype(torch.bfloat16) == torch.float32 and spec.compute_dtype(torch.float64) == torch.float64


def test_the_reference_refuses_what_it_does_not_implement():
    with pytest.raises(NotImplementedError, match="rounding='ceil' is declared in h3r_kernels.spec"):
        reference.rounded_cells(torch.zeros(1, 1, 2), "ceil", 0)


@pytest.mark.parametrize("rounding", spec.names(spec.Rounding))
@pytest.mark.parametrize("expected", [False, True])
def test_every_rounding(backend, device, rounding, expected):
    keypoints, visible = make_keypoints(2, 3, 5, 6, seed=1, device=device)
    args = dict(sigma=1.5, rounding=rounding, seed=7, expected=expected)
    got = h3r_kernels.encode(keypoints, (5, 6), visible, backend=backend, **args)
    assert_close(got, h3r_kernels.encode(keypoints, (5, 6), visible, backend="reference", **args), torch.float32)
    if rounding != "none":
        binary = dict(args, sigma=0.0)
        want = h3r_kernels.encode(keypoints, (5, 6), visible, backend="reference", **binary)
        assert torch.equal(h3r_kernels.encode(keypoints, (5, 6), visible, backend=backend, **binary), want)


@pytest.mark.parametrize("loss", spec.names(spec.Loss))
@pytest.mark.parametrize("reduction", spec.names(spec.Reduction))
def test_every_loss_and_reduction(backend, device, loss, reduction):
    keypoints, visible = make_keypoints(2, 3, 5, 6, seed=2, device=device)
    logits = torch.randn(2, 3, 5, 6, device=device)
    results = []
    for name in (backend, "reference"):
        z = logits.clone().requires_grad_()
        value = h3r_kernels.heatmap_loss(z, keypoints, visible, seed=3, loss=loss, reduction=reduction, backend=name)
        value.sum().backward()
        results.append((value.detach(), z.grad))
    (value, grad), (want_value, want_grad) = results
    assert value.shape == want_value.shape
    assert_close(value, want_value, torch.float32)
    assert_close(grad, want_grad, torch.float32)


@pytest.mark.parametrize("method", spec.names(spec.Method))
@pytest.mark.parametrize("weights", spec.names(spec.Weighting))
def test_every_method_and_weighting(backend, device, method, weights):
    maps = torch.randn(2, 3, 5, 6, device=device)
    maps = maps.sigmoid() if weights == "linear" else maps
    results = []
    for name in (backend, "reference"):
        m = maps.clone().requires_grad_()
        coords, scores, indices = torch.ops.h3r.decode(m, method, 4, weights, 3, name)
        (coords.sum() + scores.sum()).backward()
        results.append((coords.detach(), scores.detach(), indices, m.grad))
    got, want = results
    assert got[2].shape[-1] == spec.slots(method, 4, 3)
    assert_decoded_close(got, want)
