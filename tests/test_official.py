"""The authors' released folders (baoshengyu/H3R, ``torchalign``) in h3r.

Their code is not vendored. This file re-implements, from the published description of
their modules (``docs/OFFICIAL.md``, ``shared/reference/released_models.md``), a small
stand-in for their ``FacialLandmarkDetector``: the same module tree and parameter names
(``backbone.conv1``, ``backbone.stage2.0.fuse_layers.1.0.0.0``, ``backbone.features.3.conv.6``,
``heatmap_head.head.layers.3`` ...), their forward pass, their decoder (top-k softmax of the
raw foreground logits) and their crop / flip / inverse. Random weights in that layout are
saved with a ``config.yaml`` into a temporary folder, which h3r then loads with its own
models and must reproduce to 1e-3 pixel.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from h3r.models import build_model, load_checkpoint_weights, load_official
from h3r.models.official import (OfficialCrop, build_official_model, official_to_h3r_state, read_official_config,
                                 read_official_state)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
# cfg.py's default INPUT.FLIP_ORDER (WFLW, 98 points), written out here on purpose.
WFLW_ORDER = [
    32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3,
    2, 1, 0, 46, 45, 44, 43, 42, 50, 49, 48, 47, 37, 36, 35, 34, 33, 41, 40, 39, 38, 51, 52, 53, 54, 59, 58, 57, 56,
    55, 72, 71, 70, 69, 68, 75, 74, 73, 64, 63, 62, 61, 60, 67, 66, 65, 82, 81, 80, 79, 78, 77, 76, 87, 86, 85, 84,
    83, 92, 91, 90, 89, 88, 95, 94, 93, 97, 96,
]


# ----------------------------------------------------------------------------------------------
# A stand-in for their modules: names and forward pass as they publish them.


def _conv(cin, cout, kernel=3, stride=1):
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)


class RefBasicBlock(nn.Module):  # conv1 bn1 conv2 bn2, identity shortcut
    def __init__(self, channels):
        super().__init__()
        self.conv1, self.bn1 = _conv(channels, channels), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = _conv(channels, channels), nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + x)


class RefBottleneck(nn.Module):  # conv1 bn1 conv2 bn2 conv3 bn3 [downsample.0 conv, downsample.1 bn]
    def __init__(self, cin, planes):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, planes, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = _conv(planes, 4 * planes, 1), nn.BatchNorm2d(4 * planes)
        self.downsample = (nn.Sequential(_conv(cin, 4 * planes, 1), nn.BatchNorm2d(4 * planes))
                           if cin != 4 * planes else None)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class RefHRModule(nn.Module):  # branches.<b>.<k>, fuse_layers.<i>.<j> (None on the diagonal)
    def __init__(self, widths, blocks):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*[RefBasicBlock(w) for _ in range(blocks)]) for w in widths)
        rows = []
        for i, wi in enumerate(widths):
            row = []
            for j, wj in enumerate(widths):
                if j > i:  # 1x1 conv, BN, nearest upsampling
                    row.append(nn.Sequential(_conv(wj, wi, 1), nn.BatchNorm2d(wi),
                                             nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                elif j == i:
                    row.append(None)
                else:  # i - j stride-2 3x3 convs; all but the last keep wj channels and end in ReLU
                    steps = [nn.Sequential(_conv(wj, wj, 3, 2), nn.BatchNorm2d(wj), nn.ReLU())
                             for _ in range(i - j - 1)]
                    steps.append(nn.Sequential(_conv(wj, wi, 3, 2), nn.BatchNorm2d(wi)))
                    row.append(nn.Sequential(*steps))
            rows.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(rows)

    def forward(self, xs):
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        return [F.relu(sum(x if fuse is None else fuse(x) for fuse, x in zip(row, xs))) for row in self.fuse_layers]


class RefHRNet(nn.Module):
    def __init__(self, width=18, modules=(1, 4, 3), blocks=4):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.conv1, self.bn1 = _conv(3, 64, 3, 2), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = _conv(64, 64, 3, 2), nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(RefBottleneck(64, 64), *[RefBottleneck(256, 64) for _ in range(blocks - 1)])

        def new_branch(cin, cout):
            return nn.Sequential(nn.Sequential(_conv(cin, cout, 3, 2), nn.BatchNorm2d(cout), nn.ReLU()))

        self.transition1 = nn.ModuleList([nn.Sequential(_conv(256, width), nn.BatchNorm2d(width), nn.ReLU()),
                                          new_branch(256, widths[1])])
        self.stage2 = nn.Sequential(*[RefHRModule(widths[:2], blocks) for _ in range(modules[0])])
        self.transition2 = nn.ModuleList([None, None, new_branch(widths[1], widths[2])])
        self.stage3 = nn.Sequential(*[RefHRModule(widths[:3], blocks) for _ in range(modules[1])])
        self.transition3 = nn.ModuleList([None, None, None, new_branch(widths[2], widths[3])])
        self.stage4 = nn.Sequential(*[RefHRModule(widths, blocks) for _ in range(modules[2])])

    def forward(self, x):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        x = self.layer1(x)
        ys = self.stage2([self.transition1[0](x), self.transition1[1](x)])
        ys = self.stage3(ys + [self.transition2[2](ys[-1])])
        ys = self.stage4(ys + [self.transition3[3](ys[-1])])
        size = ys[0].shape[-2:]
        return torch.cat([F.interpolate(y, size=size, mode="bilinear", align_corners=False) for y in ys], 1)


class RefInvertedResidual(nn.Module):  # conv = Sequential as their Block; residual when stride 1 and cin == cout
    def __init__(self, cin, cout, expansion, stride):
        super().__init__()
        hidden = cin * expansion
        layers = [] if expansion == 1 else [_conv(cin, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), _conv(hidden, cout, 1), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class RefMobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        features = [nn.Sequential(_conv(3, 32, 3, 2), nn.BatchNorm2d(32), nn.ReLU6())]
        cin = 32
        for expansion, cout, repeats, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                                 (6, 96, 3, 1)):
            for i in range(repeats):
                features.append(RefInvertedResidual(cin, cout, expansion, stride if i == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*features)

    def forward(self, x):
        c2 = self.features[:4](x)
        c3 = self.features[4:7](c2)
        c4 = self.features[7:14](c3)
        return torch.cat([F.interpolate(c, size=c2.shape[-2:], mode="bilinear", align_corners=False)
                          for c in (c2, c3, c4)], 1)


class RefHead(nn.Module):
    def __init__(self, cin, proj, num_keypoints):
        super().__init__()
        self.layers = nn.Sequential(_conv(cin, proj, 1), nn.BatchNorm2d(proj), nn.ReLU(),
                                    _conv(proj, 2 * num_keypoints, 1))

    def forward(self, x):
        n, _, h, w = x.shape
        return self.layers(x).view(n, 2, -1, h, w)  # channel 0 background, 1 foreground


class RefDetector(nn.Module):
    """``backbone`` + ``heatmap_head.head``; ``coords`` decodes as their BinaryHeatmap2Coordinate."""

    def __init__(self, arch, num_keypoints, size, scale=1.25, flip=True, flip_order=None, topk=9):
        super().__init__()
        self.backbone = {"hrnet18": lambda: RefHRNet(18), "hrnet18s": lambda: RefHRNet(18, (1, 3, 2), 2),
                         "hrnet32": lambda: RefHRNet(32), "mobilenetv2": RefMobileNetV2}[arch]()
        channels = {"hrnet18": 270, "hrnet18s": 270, "hrnet32": 480, "mobilenetv2": 152}[arch]
        self.heatmap_head = nn.Module()
        self.heatmap_head.head = RefHead(channels, channels, num_keypoints)
        self.size, self.scale, self.flip, self.flip_order, self.topk = size, scale, flip, flip_order, topk
        self.config = {"INPUT": {"SIZE": [size, size], "SCALE": scale, "FLIP": flip},
                       "BACKBONE": {"ARCH": arch},
                       "HEATMAP": {"IN_CHANNEL": channels, "PROJ_CHANNEL": channels, "OUT_CHANNEL": num_keypoints,
                                   "TOPK": topk}}
        if flip_order is not None:
            self.config["INPUT"]["FLIP_ORDER"] = list(flip_order)

    def logits(self, data):
        return self.heatmap_head.head(self.backbone(data))

    def coords(self, data):
        z1 = self.logits(data)[:, 1]
        n, k, h, w = z1.shape
        score, index = z1.reshape(n, k, h * w).topk(self.topk, dim=-1)
        weights = torch.softmax(score, dim=-1)
        xy = torch.stack([index % w, index // w], dim=-1).float()
        return 4.0 * (xy * weights[..., None]).sum(-2)

    def resized_crop(self, image, bbox):
        if bbox is None:  # their api.py without a box: the whole image
            rect = torch.Tensor([[0, 0, image.width, image.height]])
        else:
            bbox = torch.as_tensor(bbox, dtype=torch.float32).view(1, 4)
            wh = (bbox[:, 2:] - bbox[:, :2] + 1).max(1)[0] * self.scale
            xy = (bbox[:, :2] + bbox[:, 2:] - wh[:, None] + 1) / 2.0
            rect = torch.cat([xy, xy + wh[:, None]], 1)
        patch = image.crop(rect[0].tolist()).resize((self.size, self.size), Image.BILINEAR)
        data = torch.from_numpy(np.array(patch)).permute(2, 0, 1).float().div(255)
        return ((data - MEAN) / STD)[None], rect

    def forward(self, image, bbox):
        data, rect = self.resized_crop(image, bbox)
        landmark = self.coords(data)
        if self.flip:
            mirrored = self.coords(data.flip(dims=[-1]))
            mirrored[..., 0] = data.shape[-1] - 1 - mirrored[..., 0]
            landmark = (landmark + mirrored[..., self.flip_order, :]) / 2.0
        scale = torch.stack([self.size / (rect[:, 2] - rect[:, 0]), self.size / (rect[:, 3] - rect[:, 1])]).t()
        return landmark / scale[:, None, :] + rect[:, None, :2]


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and BN statistics (eval-mode BN then does something)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var") or (tensor.dim() == 1 and name.endswith("weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.75)
            elif tensor.dim() == 1:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * math.sqrt(1.0 / tensor[0].numel()))
    return module.eval()


def write_folder(folder, detector: RefDetector, box="P1", extra=None):
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(detector.config))
    config["INPUT"]["BBOX"] = box
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save(detector.state_dict(), folder / "model.pth")
    return folder


def random_image(seed, width=90, height=70):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads make HRNet 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def calibrate(detector: RefDetector) -> RefDetector:
    """Scale the last 1x1 conv so the logits have a standard deviation of about 2 (with
    random weights they reach the hundreds, and top-k softmax would be a plain arg-max)."""
    with torch.no_grad():
        probe = torch.randn(2, 3, detector.size, detector.size, generator=torch.Generator().manual_seed(5))
        spread = detector.logits(probe).std()
        detector.heatmap_head.head.layers[3].weight.mul_(2.0 / spread)
    return detector


ACCEPTANCE = {"hrnet18": (98, None), "mobilenetv2": (5, [4, 3, 2, 1, 0])}  # None: cfg.py's default flip order


@pytest.fixture(scope="module")
def reference_detectors():
    """One randomly initialised stand-in per backbone, shared by the tests of this module."""
    made = {}

    def get(arch):
        if arch not in made:
            keypoints, order = ACCEPTANCE[arch]
            detector = randomise(RefDetector(arch, keypoints, 64, flip_order=order or WFLW_ORDER), seed=1)
            if order is None:
                del detector.config["INPUT"]["FLIP_ORDER"]  # the folder relies on the default order
            made[arch] = calibrate(detector)
        return made[arch]

    return get


# ----------------------------------------------------------------------------------------------
# The acceptance test: h3r's loader + model + decoder reproduce their detector.


@pytest.mark.parametrize("arch", sorted(ACCEPTANCE))
@pytest.mark.parametrize("flip", [False, True])
def test_released_layout_is_reproduced(tmp_path, reference_detectors, arch, flip):
    reference = reference_detectors(arch)
    reference.flip = flip
    folder = write_folder(tmp_path / f"{arch}_64x64_p1", reference, extra={"INPUT": {"FLIP": flip}})
    official = load_official(folder)
    assert official.crop.flip is flip and official.config.arch == arch and official.codec.k == 9
    num_keypoints = ACCEPTANCE[arch][0]
    cases = [(random_image(2), [20.0, 15.5, 61.0, 50.0]), (random_image(3, 64, 80), [-4.0, 30.0, 40.25, 71.0]),
             (random_image(4, 48, 72), None)]  # no box: the whole image
    with torch.no_grad():
        for image, box in cases:
            expected = reference(image, box)[0]
            got = official.predict(image, box)
            assert got.shape == (num_keypoints, 2)
            assert torch.allclose(got, expected, atol=1e-3, rtol=0), (got - expected).abs().max()
        # the network itself: h3r's model returns their raw foreground logits z1
        data, _ = reference.resized_crop(*cases[0])
        assert torch.allclose(official.model(data), reference.logits(data)[:, 1], atol=1e-4, rtol=1e-4)


def _config(arch, channels, keypoints):
    from h3r.models.official import OfficialConfig

    return OfficialConfig(path="-", input_size=64, scale=1.25, box="P1", flip=False, flip_order=None, dataset="x",
                          arch=arch, in_channels=channels, proj_channels=channels, num_keypoints=keypoints, stride=4,
                          topk=9)


def test_more_backbones_map_parameter_by_parameter():
    """hrnet18s and hrnet32 (LaPa) load strictly into h3r's HRNet too (no forward: CPU time)."""
    for arch, channels, keypoints in (("hrnet18s", 270, 4), ("hrnet32", 480, 3)):
        reference = RefDetector(arch, keypoints, 64)
        model = build_official_model(_config(arch, channels, keypoints))
        mapped = official_to_h3r_state(reference.state_dict())
        assert set(mapped) == set(model.state_dict())
        model.load_state_dict(mapped)  # strict, shapes checked


def test_parameter_counts_match_the_released_networks():
    hrnet = build_official_model(_config("hrnet18", 270, 98))
    mobilenet = build_official_model(_config("mobilenetv2", 152, 98))
    assert sum(p.numel() for p in hrnet.parameters()) == 9_688_620
    assert sum(p.numel() for p in mobilenet.parameters()) == 595_728


def test_decoder_reads_the_foreground_logits_not_their_difference(reference_detectors):
    from h3r.codecs import H3RCodec

    reference = reference_detectors("mobilenetv2")
    data = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        z = reference.logits(data)
        expected = reference.coords(data)
    codec = H3RCodec(stride=4, k=9, weights="softmax")
    assert torch.allclose(codec.decode(z[:, 1])[0], expected, atol=1e-4, rtol=0)
    assert (codec.decode(z[:, 1] - z[:, 0])[0] - expected).abs().max() > 0.1  # the test above can tell them apart


# ----------------------------------------------------------------------------------------------
# Their crop and its inverse, by hand.


def test_crop_rectangle_and_inverse_follow_their_formulas():
    crop = OfficialCrop(input_size=100, scale=1.25)
    # box x 10..49, y 20..39: max(w, h) + 1 = 40, side 40 * 1.25 = 50,
    # origin ((10 + 49 - 50 + 1) / 2, (20 + 39 - 50 + 1) / 2) = (5, 5)
    rect = crop.rect([10, 20, 49, 39])
    assert rect.tolist() == [5.0, 5.0, 55.0, 55.0]
    points = torch.tensor([[30.0, 30.0], [5.0, 55.0], [17.5, 6.0]])
    on_input = crop.to_input(points, rect)  # (p - origin) * 100 / 50
    assert on_input.tolist() == [[50.0, 50.0], [0.0, 100.0], [25.0, 2.0]]
    assert torch.allclose(crop.to_image(on_input, rect), points)
    # batches of boxes
    rects = crop.rect([[10, 20, 49, 39], [0, 0, 9, 9]])
    assert rects.shape == (2, 4) and rects[1].tolist() == [-1.25, -1.25, 11.25, 11.25]


def test_crop_pixels_rounding_and_black_outside():
    rng = np.random.default_rng(0)
    array = rng.integers(1, 256, (60, 60, 3), dtype=np.uint8)  # no black pixel inside the image

    def unnormalise(tensor):
        return (tensor * STD + MEAN).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()

    # an integer rectangle whose side equals S: the input is the image window itself
    tensor, rect = OfficialCrop(input_size=50).crop(array, [10, 20, 49, 39])
    assert rect.tolist() == [5.0, 5.0, 55.0, 55.0]
    np.testing.assert_array_equal(unnormalise(tensor), array[5:55, 5:55])
    # out of the image: black; rect (-5, -15, 45, 35)
    tensor, rect = OfficialCrop(input_size=50).crop(Image.fromarray(array), [0, 0, 39, 19])
    assert rect.tolist() == [-5.0, -15.0, 45.0, 35.0]
    pixels = unnormalise(tensor)
    assert (pixels[:15] == 0).all() and (pixels[:, :5] == 0).all()
    np.testing.assert_array_equal(pixels[15:, 5:], array[:35, :45])
    # Pillow rounds the corners: (-1.25, -1.25, 11.25, 11.25) is cut as (-1, -1, 11, 11), 12 x 12 ...
    crop = OfficialCrop(input_size=12)
    tensor, rect = crop.crop(array, [0, 0, 9, 9])
    pixels = unnormalise(tensor)
    assert (pixels[0] == 0).all() and (pixels[:, 0] == 0).all()
    np.testing.assert_array_equal(pixels[1:, 1:], array[:11, :11])
    # ... while the inverse uses the unrounded rectangle (as theirs does)
    assert crop.to_image(torch.zeros(1, 2), rect).tolist() == [[-1.25, -1.25]]


def test_unflip_mirrors_and_reorders():
    crop = OfficialCrop(input_size=64, flip_order=(2, 1, 0))
    coords = torch.tensor([[[1.0, 5.0], [10.0, 6.0], [30.0, 7.0]]])
    assert crop.unflip(coords).tolist() == [[[33.0, 7.0], [53.0, 6.0], [62.0, 5.0]]]


def test_box_choice_of_their_scripts():
    from h3r.data.base import Sample
    from h3r.official_eval import official_box

    sample = Sample(load_image=lambda: None, keypoints=np.array([[3, 4], [9, 12]], np.float32),
                    visible=np.ones(2, bool), box=np.array([0, 1, 20, 21], np.float32),
                    box_p1=np.array([3, 4, 9, 12], np.float32))
    assert official_box(sample, "P1", "wflw").tolist() == [3, 4, 9, 12]
    assert official_box(sample, "P2", "wflw").tolist() == [0, 1, 20, 21]
    # examples/test_300w.py: "P2" is the landmark box of the 1-based .pts coordinates
    assert official_box(sample, "P2", "300w").tolist() == [4, 5, 10, 13]


# ----------------------------------------------------------------------------------------------
# config.yaml as released, and errors.

RELEASED_CONFIGS = {
    "wflw/hrnet18_256x256_p1": "INPUT:\n  SIZE: [256, 256]\n  BBOX: 'P1'\n\nBACKBONE:\n  ARCH: 'hrnet18'\n\n"
                               "HEATMAP:\n  IN_CHANNEL: 270\n  PROJ_CHANNEL: 270\n  OUT_CHANNEL: 98\n  TOPK: 9\n",
    "wflw/mobilenet_128x128_p2": "INPUT:\n  SIZE: [128, 128]\n  BBOX: 'P2'\n\nBACKBONE:\n  ARCH: 'mobilenetv2'\n  \n"
                                 "HEATMAP:\n  IN_CHANNEL: 152\n  PROJ_CHANNEL: 152\n  OUT_CHANNEL: 98\n  TOPK: 9\n",
    "300w/hrnet18_256x256_p1": "INPUT:\n  DATASET: 'F300W'\n  SIZE: [256, 256]\n  BBOX: 'P1'\n  FLIP_ORDER: [\n"
                               "        16, 15, 14, 13, 12, 11, 10,  9,  8,  7,  6,  5,  4,  3,  2,  1,  0, 26,\n"
                               "        25, 24, 23, 22, 21, 20, 19, 18, 17, 27, 28, 29, 30, 35, 34, 33, 32, 31,\n"
                               "        45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40, 54, 53, 52, 51, 50, 49,\n"
                               "        48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65\n  ]\n\n"
                               "BACKBONE:\n  ARCH: 'hrnet18'\n  \nHEATMAP:\n  IN_CHANNEL: 270\n  PROJ_CHANNEL: 270\n"
                               "  OUT_CHANNEL: 68\n  TOPK: 9\n",
}


def test_released_configs_parse(tmp_path):
    from h3r.data.pts import W300_FLIP_PAIRS
    from h3r.transforms import flip_permutation

    parsed = {}
    for name, text in RELEASED_CONFIGS.items():
        path = tmp_path / name.replace("/", "_") / "config.yaml"
        path.parent.mkdir()
        path.write_text(text)
        parsed[name] = read_official_config(path)
    hrnet, mobilenet, w300 = parsed.values()
    assert (hrnet.arch, hrnet.input_size, hrnet.box, hrnet.scale, hrnet.flip, hrnet.topk, hrnet.stride) == \
        ("hrnet18", 256, "P1", 1.25, True, 9, 4)
    assert list(hrnet.flip_order) == WFLW_ORDER and hrnet.dataset == "WFLW"
    assert (mobilenet.arch, mobilenet.input_size, mobilenet.box, mobilenet.in_channels) == \
        ("mobilenetv2", 128, "P2", 152)
    assert w300.dataset == "F300W" and w300.num_keypoints == 68
    assert list(w300.flip_order) == list(flip_permutation(68, W300_FLIP_PAIRS))


@pytest.mark.parametrize("text,key", [
    ("INPUT: [256, 256\n", "malformed YAML"),
    ("- just a list\n", "expected a mapping"),
    ("BACKBONE:\n  ARCH: 'resnet50'\n", "BACKBONE.ARCH"),
    ("INPUT:\n  FOO: 1\n", "INPUT.FOO"),
    ("MODEL:\n  X: 1\n", "MODEL"),
    ("HEATMAP:\n  IN_CHANNEL: 152\n", "HEATMAP.IN_CHANNEL"),
    ("INPUT:\n  SIZE: [256, 192]\n", "INPUT.SIZE"),
    ("INPUT:\n  BBOX: 'P3'\n", "INPUT.BBOX"),
    ("HEATMAP:\n  OUT_CHANNEL: 68\n", "INPUT.FLIP_ORDER"),  # FLIP on, default 98-point order
    ("HEATMAP:\n  STRIDE: 8.0\n", "HEATMAP.STRIDE"),
    ("HEATMAP:\n  TOPK: 40\n", "HEATMAP.TOPK"),
    ("HEATMAP:\n  BLOCK: 'GaussianHeadBlock'\n", "HEATMAP.BLOCK"),
])
def test_bad_config_names_the_file_and_key(tmp_path, text, key):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        read_official_config(path)
    assert str(path) in str(error.value) and key in str(error.value)


def test_flip_order_errors_say_what_is_wrong(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("HEATMAP:\n  OUT_CHANNEL: 68\n")
    with pytest.raises(ValueError, match="FLIP_ORDER: not given, and the default .WFLW.s 98-point order. does not fit .* = 68"):
        read_official_config(path)
    path.write_text("HEATMAP:\n  OUT_CHANNEL: 68\nINPUT:\n  FLIP_ORDER: [" + ", ".join(["0"] * 68) + "]\n")
    with pytest.raises(ValueError, match=r"permutation of 0..67 .*got \[0, 0, .*\.\.\.$") as error:
        read_official_config(path)
    assert len(str(error.value).split("got ")[1]) == 80  # a long order is cut short


def test_flip_order_may_be_unusable_when_flip_is_off(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("INPUT:\n  FLIP: false\nHEATMAP:\n  OUT_CHANNEL: 68\n")
    assert read_official_config(path).flip_order is None


def test_bad_folders_give_clear_errors(tmp_path, reference_detectors):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_official(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        load_official(empty)
    reference = reference_detectors("mobilenetv2")
    folder = write_folder(tmp_path / "no_weights", reference)
    (folder / "model.pth").unlink()
    with pytest.raises(FileNotFoundError, match=str(folder / "model.pth")):
        load_official(folder)
    (folder / "model.pth").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(ValueError, match="Git LFS"):
        load_official(folder)
    (folder / "model.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="model.pth cannot be read: it holds something other than tensors") as caught:
        load_official(folder)
    assert "weights_only" not in str(caught.value)  # torch's advice to unpickle arbitrary code is not passed on
    # weights of another shape: 5 landmarks saved, 7 configured
    folder = write_folder(tmp_path / "mismatch", reference, extra={"HEATMAP": {"OUT_CHANNEL": 7},
                                                                   "INPUT": {"FLIP": False}})
    with pytest.raises(ValueError, match="shape mismatches: head.logits.weight"):
        load_official(folder)


# ----------------------------------------------------------------------------------------------
# Fine-tuning: the weights in h3r's own models.


def test_pretrained_folder_loads_into_h3r_models(tmp_path, reference_detectors):
    reference = reference_detectors("mobilenetv2")
    folder = write_folder(tmp_path / "mobilenet_64x64_p1", reference)
    data = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z = reference.logits(data)
    for head, source in (("two-class", folder), ("binary", folder / "model.pth")):
        model = build_model("mobilenetv2", 5, head=head)
        model.head.start_at(-6.0)  # what h3r train does before loading --pretrained
        load_checkpoint_weights(model, source)
        assert model.head.logits.bias.abs().max() == 0
        with torch.no_grad():
            assert torch.allclose(model.eval()(data), z[:, 1] - z[:, 0], atol=1e-4, rtol=1e-4)
        # h3r's own checkpoints still load as before
        saved = tmp_path / f"{head}.pt"
        torch.save({"model": model.state_dict()}, saved)
        load_checkpoint_weights(build_model("mobilenetv2", 5, head=head), saved)
    with pytest.raises(ValueError, match="model.pth.*their backbone is not the model's.*missing keys"):
        load_checkpoint_weights(build_model("small", 5, head="two-class"), folder)
    for head in ("two-class", "binary"):
        with pytest.raises(ValueError, match="they predict 5 landmarks .two logits each., the model's head 6 maps .one per landmark; three with "
                                             "codec udp.;.*shape mismatches"):
            load_checkpoint_weights(build_model("mobilenetv2", 6, head=head), folder)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "net"])
def test_official_weights_inside_a_training_checkpoint_load(tmp_path, reference_detectors, wrapper):
    reference = reference_detectors("mobilenetv2")
    saved = tmp_path / "model.pth"
    torch.save({wrapper: {f"module.{key}": value for key, value in reference.state_dict().items()}, "epoch": 3}, saved)
    assert set(read_official_state(saved)) == set(reference.state_dict())
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, saved)
    with pytest.raises(ValueError, match=r"model.pth: expected a state dict of tensors .*found keys \['epoch', 'optimizer'\]"):
        read_official_state(saved)


# ----------------------------------------------------------------------------------------------
# h3r eval --checkpoint <released folder>


def test_eval_command_runs_their_protocol(tmp_path, capsys):
    from h3r.cli import main
    from h3r.data import open_dataset

    reference = calibrate(randomise(RefDetector("mobilenetv2", 98, 64, flip=True, flip_order=WFLW_ORDER), seed=4))
    folder = write_folder(tmp_path / "mobilenet_64x64_p2", reference, box="P2")
    out = tmp_path / "report"
    code = main(["eval", "--checkpoint", str(folder), "--dataset", "synthetic-face", "--split", "test",
                 "--option", "size=3", "--device", "cpu", "--out", str(out), "--draw", "1"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["flip_test"] is True and results["settings"]["box"] == "P2"
    assert results["mean_shape_baseline"] is None and len(list((out / "images").iterdir())) == 1
    data = open_dataset("synthetic-face", split="test", size=3)
    with torch.no_grad():
        expected = np.stack([reference(Image.fromarray(data[i].image()), data[i].box)[0].numpy() for i in range(3)])
    assert results["metrics"]["nme"] == pytest.approx(data.evaluate(expected)["nme"], abs=1e-5)


def test_eval_of_a_released_folder_refuses_hrnet_csv_data(tmp_path):
    """Their protocol crops from the official files' boxes (WFLW's rectangles, 300W's 1-based .pts
    landmarks): HRNet's csv files have other boxes and perhaps another origin, so they are refused."""
    from h3r.evaluate import evaluate_checkpoint

    reference = randomise(RefDetector("mobilenetv2", 68, 64, flip=False), seed=4)
    folder = write_folder(tmp_path / "mobilenet_64x64_p1", reference)
    header = "image_name,scale,center_w,center_h," + ",".join(f"original_{i}_{axis}" for i in range(68) for axis in "xy")
    points = np.random.default_rng(0).uniform(10, 50, (68, 2))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "face_landmarks_300w_valid.csv").write_text(
        header + "\n" + ",".join(["ibug/a.jpg", "0.2", "30", "30"] + [repr(float(v)) for v in points.ravel()]) + "\n")
    os.makedirs(tmp_path / "data" / "images" / "ibug")
    Image.new("RGB", (64, 64)).save(tmp_path / "data" / "images" / "ibug" / "a.jpg")
    with pytest.raises(ValueError, match="the authors' protocol reads the official 300w files .*not HRNet's csv"):
        evaluate_checkpoint(folder, dataset="300w", data_root=str(tmp_path / "data"), device="cpu",
                            out=str(tmp_path / "report"))
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("setting, value, least", [("batch_size", 0, 1), ("workers", -1, 0), ("draw", -1, 0)])
def test_eval_of_a_released_folder_checks_its_numeric_options_too(tmp_path, setting, value, least):
    from h3r.evaluate import evaluate_checkpoint

    reference = randomise(RefDetector("mobilenetv2", 98, 64, flip=True, flip_order=WFLW_ORDER), seed=4)
    folder = write_folder(tmp_path / "mobilenet_64x64_p1", reference)
    with pytest.raises(ValueError, match=f"{setting}: expected an integer >= {least}, got {value}"):
        evaluate_checkpoint(folder, dataset="synthetic-face", options={"size": 3}, device="cpu",
                            out=str(tmp_path / "report"), **{setting: value})
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_train_command_fine_tunes_from_a_released_folder(tmp_path, capsys):
    """h3r train --pretrained <released folder> (a few seconds on a CPU)."""
    from h3r.cli import main
    from h3r.evaluate import load_checkpoint

    reference = calibrate(randomise(RefDetector("mobilenetv2", 98, 64, flip_order=WFLW_ORDER), seed=6))
    folder = write_folder(tmp_path / "mobilenet_64x64_p2", reference, box="P2")
    code = main(["train", "--dataset", "synthetic-face", "--backbone", "mobilenetv2", "--head", "two-class",
                 "--pretrained", str(folder), "--input-size", "64", "--epochs", "1", "--lr", "1e-12",
                 "--train-option", "size=4", "--test-option", "size=2", "--batch-size", "4", "--device", "cpu",
                 "--out", str(tmp_path / "run"), "--no-progress", "--draw", "0"])
    assert code == 0, capsys.readouterr().err
    trained = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    released = torch.load(folder / "model.pth", weights_only=True)
    # with a negligible learning rate the convolutions are still the released ones
    assert torch.allclose(trained["backbone.stem.0.weight"], released["backbone.features.0.0.weight"], atol=1e-8)
    assert torch.allclose(trained["head.logits.weight"], released["heatmap_head.head.layers.3.weight"], atol=1e-8)
