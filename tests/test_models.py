import pytest
import torch
from torch.nn import functional as F

from h3r.models import BACKBONES, build_model, load_checkpoint_weights

BACKBONE_CHANNELS = {"hrnet_w18": 270, "mobilenetv2": 152, "small": 64}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_output_shapes(backbone, size):
    model = build_model(backbone, num_keypoints=5).eval()
    batch = 1 if backbone == "hrnet_w18" else 2
    images = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        features = model.backbone(images)
        logits = model(images)
    assert model.stride == 4
    assert features.shape == (batch, BACKBONE_CHANNELS[backbone], size // 4, size // 4)
    assert logits.shape == (batch, 5, size // 4, size // 4)


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_coarser_strides_pool_the_same_backbone(stride):
    model = build_model("small", num_keypoints=3, stride=stride).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = model(images)
    assert model.stride == stride and logits.shape == (2, 3, 64 // stride, 96 // stride)
    assert sorted(model.state_dict()) == sorted(build_model("small", num_keypoints=3).state_dict())  # no new weights
    with pytest.raises(ValueError, match=f"multiples of the stride {stride}"):
        model(torch.randn(1, 3, 64 + 4, 64))
    with pytest.raises(ValueError, match="stride: expected one of 4, 8, 16, 32"):
        build_model("small", num_keypoints=3, stride=2)


def test_pooling_keeps_cell_j_over_input_pixel_stride_j():
    """A feature that marks stride-4 cell i stays centred on cell i/2 after each halving."""
    model = build_model("small", num_keypoints=1, stride=16)
    features = torch.zeros(1, 1, 16, 16)
    features[0, 0, 8, 4] = 1.0  # stride-4 cell (x=4, y=8): input pixel (16, 32) -> stride-16 cell (1, 2)
    pooled = model.pool(features)
    assert pooled.shape == (1, 1, 4, 4)
    assert pooled[0, 0].argmax().item() == 2 * 4 + 1


@pytest.mark.parametrize("backbone", ["mobilenetv2", "small"])
def test_non_square_input_and_backward(backbone):
    model = build_model(backbone, num_keypoints=3, head="two-class")
    logits = model(torch.randn(2, 3, 48, 80))
    assert logits.shape == (2, 3, 12, 20)
    logits.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("backbone", "low", "high"),
    [("hrnet_w18", 9.60e6, 9.78e6), ("mobilenetv2", 0.57e6, 0.63e6), ("small", 0.1e6, 0.3e6)],
)
def test_parameter_counts(backbone, low, high):
    # The authors' 98-landmark models: HRNet-W18 9.69 M, MobileNetV2 0.60 M (two-class head).
    assert low <= count_parameters(build_model(backbone, 98, head="two-class")) <= high


def test_head_channels_sets_the_hidden_width():
    model = build_model("small", 4, head_channels=16)
    assert model.head.logits.in_channels == 16
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4, 8, 8)


def test_two_class_head_returns_foreground_minus_background():
    model = build_model("small", num_keypoints=3, head="two-class").eval()
    torch.nn.init.normal_(model.head.logits.weight)
    torch.nn.init.normal_(model.head.logits.bias)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        raw = model.head.logits(model.head.hidden(model.backbone(images)))  # (B, 2K, H, W): K background, then K foreground
        background, foreground = raw[:, :3], raw[:, 3:]
        torch.testing.assert_close(model(images), foreground - background)


def test_two_class_cross_entropy_equals_bce_on_the_difference():
    z0, z1 = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    target = (torch.rand(2, 4, 6, 6) < 0.2).long()
    cross_entropy = F.cross_entropy(torch.stack([z0, z1], dim=1), target)
    bce = F.binary_cross_entropy_with_logits(z1 - z0, target.float())
    torch.testing.assert_close(cross_entropy, bce)


@pytest.mark.parametrize("wrapped", [False, True])
def test_checkpoint_round_trip(tmp_path, wrapped):
    source = build_model("small", num_keypoints=4, head="two-class")
    source(torch.randn(4, 3, 32, 32))  # move the BN running statistics away from their initial values
    source.eval()
    path = tmp_path / "weights.pt"
    state = source.state_dict()
    torch.save({"model": state, "epoch": 3} if wrapped else state, path)
    target = build_model("small", num_keypoints=4, head="two-class").eval()
    load_checkpoint_weights(target, path)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(images), source(images), rtol=0, atol=0)


def test_checkpoint_shape_mismatch_names_the_key(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(build_model("small", num_keypoints=4).state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatches: head\.logits\.bias: checkpoint \(4,\) vs model \(5,\)"):
        load_checkpoint_weights(build_model("small", num_keypoints=5), path)


def test_checkpoint_key_mismatch_names_the_keys(tmp_path):
    path = tmp_path / "weights.pt"
    state = build_model("small", num_keypoints=4).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["head.logits.bias"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys: head\.logits\.bias; unexpected keys: extra\.weight"):
        load_checkpoint_weights(build_model("small", num_keypoints=4), path)


def test_checkpoint_of_another_backbone_is_rejected(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(build_model("small", num_keypoints=4).state_dict(), path)
    with pytest.raises(ValueError, match=r"missing keys: .*\(\d+ in all\); unexpected keys"):
        load_checkpoint_weights(build_model("mobilenetv2", num_keypoints=4), path)


def test_checkpoint_errors_for_missing_file_and_bad_content(tmp_path):
    model = build_model("small", num_keypoints=2)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint_weights(model, tmp_path / "nothing.pt")
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="expected a state dict"):
        load_checkpoint_weights(model, path)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("resnet50", 5), "unknown backbone 'resnet50'"),
        (("small", 5, "three-class"), "head kind"),
        (("small", 0), "num_keypoints"),
        (("small", 5, "binary", 0), "head_channels"),
    ],
)
def test_build_model_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        build_model(*arguments)


@pytest.mark.parametrize(
    ("shape", "message"), [((1, 3, 30, 32), "multiples of the stride 4"), ((1, 1, 32, 32), r"\(B, 3, H, W\)"), ((3, 32, 32), r"\(B, 3, H, W\)")]
)
def test_forward_rejects_bad_images(shape, message):
    with pytest.raises(ValueError, match=message):
        build_model("small", 2)(torch.randn(*shape))


def test_any_damaged_weights_file_is_one_value_error_naming_it(tmp_path):
    """Random bytes make torch.load fail in many ways (UnpicklingError, IndexError, RuntimeError ...): one error."""
    import random

    model = build_model("small", num_keypoints=2)
    generator = random.Random(0)
    for trial in range(40):
        path = tmp_path / f"damaged{trial}.pt"
        path.write_bytes(bytes(generator.randrange(256) for _ in range(generator.randrange(1, 4096))))
        with pytest.raises(ValueError, match=f"damaged{trial}.pt cannot be read") as caught:
            load_checkpoint_weights(model, path)
        assert "weights_only" not in str(caught.value)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt cannot be read: it is empty"):
        load_checkpoint_weights(model, tmp_path / "empty.pt")
