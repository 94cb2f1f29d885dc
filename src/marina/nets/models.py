"""Network architectures for the neural-network experiments (written here, no torchvision).

- :func:`resnet18`: ResNet-18 (He et al. 2016) in its CIFAR variant, the model of the MARINA
  paper's second experiment (Sec. 5, ResNet-18 on CIFAR-100): a 3x3 stride-1 stem without
  max-pooling (32x32 inputs keep a 32x32 map in the first stage), four stages of two basic
  blocks with 64, 128, 256, 512 channels (strides 1, 2, 2, 2), 1x1 projection shortcuts where
  the shape changes, global average pooling and a linear head. With ``num_classes=100`` it has
  11,220,132 parameters. Unlike the paper's code, the 100-class head is kept.
- :func:`small_cnn`: a two-convolution network for 28x28 grayscale images (Fashion-MNIST):
  conv5x5(16) - ReLU - maxpool2 - conv5x5(32) - ReLU - maxpool2 - linear. 28,938 parameters
  with 10 classes: small enough to train on a CPU in seconds.

All forward passes are free of in-place operations, so the models run under ``torch.func``
transforms (``grad``, ``vmap``) used by :class:`marina.problems.torch_model.TorchModelProblem`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from marina.errors import ConfigError

__all__ = ["ResNet", "SmallCNN", "resnet18", "small_cnn", "NORMS"]

NORMS = ("batch", "group", "none")
"""Normalisation layers :func:`resnet18` can use (see :func:`_norm_factory`)."""


def _norm_factory(norm: str) -> Callable[[int], nn.Module]:
    """Channel normalisation: BatchNorm2d, GroupNorm (32 groups, or fewer channels), or none.

    "group" has the same parameter count as "batch" (a weight and a bias per channel) and makes
    every sample's output independent of the others in its batch.
    """
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "group":
        return lambda c: nn.GroupNorm(min(32, c), c)
    if norm == "none":
        return lambda c: nn.Identity()
    raise ConfigError(f"resnet18: norm == {norm!r}, must be one of {', '.join(NORMS)}")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016, Fig. 2)."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), norm(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, no max-pool, four stages, average pool, linear head.

    Args:
        blocks: basic blocks in each of the four stages ((2, 2, 2, 2): ResNet-18).
        num_classes: outputs of the linear head.
        in_channels: channels of the input images.
        norm: the normalisation layers, one of :data:`NORMS`.
    """

    def __init__(
        self,
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 100,
        in_channels: int = 3,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"resnet: num_classes == {num_classes}, must be >= 1")
        if in_channels < 1:
            raise ConfigError(f"resnet: in_channels == {in_channels}, must be >= 1")
        make_norm = _norm_factory(norm)
        self.norm = norm
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = make_norm(64)
        stages = []
        in_planes = 64
        for planes, stride, count in zip((64, 128, 256, 512), (1, 2, 2, 2), blocks):
            layers = []
            for s in [stride] + [1] * (count - 1):
                layers.append(BasicBlock(in_planes, planes, s, make_norm))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet18(num_classes: int = 100, in_channels: int = 3, norm: str = "batch") -> ResNet:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool).

    PyTorch's default initialisation; use :func:`marina.nets.keyed_init_` (or the problem's
    ``init_seed``) for a reproducible start without the global generator.

    Args:
        num_classes: outputs of the linear head.
        in_channels: channels of the input images.
        norm: the normalisation layers, one of :data:`NORMS` (``"batch"``, ``"group"``, ``"none"``).
    """
    return ResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, norm=norm)


class SmallCNN(nn.Module):
    """conv5x5(c1) - ReLU - maxpool2 - conv5x5(c2) - ReLU - maxpool2 - linear, for 28x28 images.

    Args:
        num_classes: outputs of the linear layer.
        in_channels: channels of the input images.
        channels: (c1, c2), the channels of the two convolutions.
        size: height and width of the (square) input images, a multiple of 4.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        channels: tuple[int, int] = (16, 32),
        size: int = 28,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"small_cnn: num_classes == {num_classes}, must be >= 1")
        if size < 4 or size % 4:
            raise ConfigError(f"small_cnn: size == {size}, must be a multiple of 4 (two 2x2 poolings)")
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.linear = nn.Linear(c2 * (size // 4) ** 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.max_pool2d(F.relu(self.conv2(out)), 2)
        return self.linear(out.flatten(1))


def small_cnn(num_classes: int = 10, in_channels: int = 1, channels: tuple[int, int] = (16, 32)) -> SmallCNN:
    """The small CNN for 28x28 grayscale images (Fashion-MNIST).

    Args:
        num_classes: outputs of the linear layer.
        in_channels: channels of the input images.
        channels: (c1, c2), the channels of the two convolutions.
    """
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, channels=channels)
