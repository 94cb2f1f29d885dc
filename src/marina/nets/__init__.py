"""Neural networks for marina: models, image data sets, keyed initialisation, ready-made problems.

The problem class itself (any model + loss + data split among workers) is
:class:`marina.problems.torch_model.TorchModelProblem`; this package supplies the paper's
ResNet-18 / CIFAR-100 setting and an offline Fashion-MNIST one built on it.
"""

from __future__ import annotations

from marina.nets.datasets import (
    CIFAR100_MD5,
    CIFAR100_URL,
    FASHION_MNIST_BUNDLED,
    FASHION_MNIST_SYSTEM,
    ImageDataset,
    Normalize,
    SafeUnpickler,
    load_cifar100,
    load_fashion_mnist,
    read_idx,
    write_idx,
)
from marina.nets.models import ResNet, SmallCNN, resnet18, small_cnn
from marina.nets.tasks import cifar100, fashion_mnist
from marina.problems.keyed_init import keyed_init_

__all__ = [
    "CIFAR100_MD5",
    "CIFAR100_URL",
    "FASHION_MNIST_BUNDLED",
    "FASHION_MNIST_SYSTEM",
    "ImageDataset",
    "Normalize",
    "ResNet",
    "SafeUnpickler",
    "SmallCNN",
    "cifar100",
    "fashion_mnist",
    "keyed_init_",
    "load_cifar100",
    "load_fashion_mnist",
    "read_idx",
    "resnet18",
    "small_cnn",
    "write_idx",
]
