"""FID's Inception-v3 (Szegedy et al. 2016) pool3 features, as in the 2015-12-05 TensorFlow graph.

The architecture follows pytorch-fid's port of the graph that the original FID code
(Heusel et al. 2017) uses: torchvision's Inception-v3 layout with the graph's quirks, namely
average pools that exclude padding in the A, C and E blocks, and a max pool instead of an
average pool in the last E block.  Input handling is pytorch-fid's: bilinear resize to
299 x 299 (``align_corners=False``) of images in ``[-1, 1]``; grey images are repeated to RGB.

Weights are read from a local file in pytorch-fid's format (``pt_inception-2015-12-05-6726825d.pth``),
never downloaded.  ``logits`` gives the graph's 1008-way logits without the bias, as in the
original Inception Score code (Salimans et al. 2016).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import FeatureExtractor, sha256_file

__all__ = ["FIDInceptionV3", "InceptionExtractor", "find_inception_weights", "WEIGHTS_NAME", "ENV_VAR"]

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
ENV_VAR = "FEWSTEP_INCEPTION"
NAME = "inception-v3-fid-pool3"


class Conv(nn.Sequential):
    """Convolution without bias, batch norm (eps 1e-3) and ReLU; keys ``conv.*`` and ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg(x: Tensor) -> Tensor:
    """The graph's 3x3 average pool: padding is not counted in the mean."""
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class BlockA(nn.Module):
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg(x))], 1)


class BlockB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, 2)], 1)


class BlockC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1 = Conv(cin, c7, 1)
        self.branch7x7_2 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = Conv(cin, c7, 1)
        self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x))], 1)


class BlockD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)


class BlockE(nn.Module):
    """``max_pool`` selects the last block's max pool (a quirk of the FID graph)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pool = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 up to the 2048-d pool3 layer, plus the graph's 1008-way ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def pool3(self, x: Tensor) -> Tensor:
        """``(B, 3, 299, 299)`` in ``[-1, 1]`` to ``(B, 2048)``."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, 2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def find_inception_weights(path: str | Path | None = None, required: bool = True) -> Path | None:
    """The weight file: ``path``, else ``$FEWSTEP_INCEPTION``, else the torch hub cache (pytorch-fid's place)."""
    candidates = []
    if path:
        candidates.append(("--inception", Path(path)))
    elif os.environ.get(ENV_VAR):
        candidates.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR])))
    else:
        hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
        candidates.append(("torch hub cache", hub / WEIGHTS_NAME))
    for origin, p in candidates:
        if p.is_file():
            return p
        if required and origin != "torch hub cache":
            raise FileNotFoundError(f"Inception weights not found at {p} (from {origin}); it must be pytorch-fid's "
                                    f"{WEIGHTS_NAME}")
    if required:
        raise FileNotFoundError(
            f"FID's Inception-v3 weights are needed: the file {WEIGHTS_NAME} (pytorch-fid's format, from its "
            f"GitHub release v0.1.0).  fewstep never downloads weights: put the file somewhere and pass "
            f"--inception PATH or set {ENV_VAR}=PATH (or place it in {candidates[-1][1].parent}).  Without it, use "
            f"--extractor fashion for Fashion-MNIST-sized images")
    return None


class InceptionExtractor(FeatureExtractor):
    """FID's pool3 features from a weight file (or a given network, for tests)."""

    name = NAME
    num_features = 2048
    channels = (1, 3)

    def __init__(self, weights: str | Path | None = None, net: FIDInceptionV3 | None = None):
        super().__init__()
        if (weights is None) == (net is None):
            raise ValueError("pass exactly one of weights (a file) or net")
        if net is None:
            net = FIDInceptionV3()
            state = torch.load(weights, map_location="cpu", weights_only=True)
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.endswith("num_batches_tracked")]
            if missing or [k for k in unexpected if not k.startswith("AuxLogits")]:
                raise ValueError(f"{weights} is not pytorch-fid's FID Inception file ({WEIGHTS_NAME}): "
                                 f"missing {missing[:3]}, unexpected {unexpected[:3]}")
            self._fingerprint = sha256_file(weights)
        else:
            self._fingerprint = ""
        self.net = net.eval()

    def _prepare(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Inception takes (B, 1 or 3, H, W) images in [-1, 1], got {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.net.pool3(self._prepare(images))

    def logits(self, images: Tensor) -> Tensor:
        return F.linear(self.forward(images), self.net.fc.weight)

    def fingerprint(self) -> str:
        return self._fingerprint or super().fingerprint()
