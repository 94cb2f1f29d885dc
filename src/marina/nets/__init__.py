"""Neural networks for marina: models, image data sets, keyed initialisation, ready-made problems.

The problem class itself (any model + loss + data split among workers) is
:class:`marina.problems.torch_model.TorchModelProblem`; this package supplies the paper's
ResNet-18 / CIFAR-100 setting and an offline Fashion-MNIST one built on it.
"""

from __future__ import annotations

from marina.nets.datasets import ImageDataset, Normalize, load_cifar100, load_fashion_mnist
from marina.nets.models import ResNet, SmallCNN, resnet18, small_cnn
from marina.nets.tasks import cifar100, fashion_mnist
from marina.problems.keyed_init import keyed_init_

# isort: off
# importable here as before, but not part of the package's surface (marina.nets.datasets has them)
from marina.nets.datasets import (
    CIFAR100_MD5 as CIFAR100_MD5,
    CIFAR100_URL as CIFAR100_URL,
    FASHION_MNIST_BUNDLED as FASHION_MNIST_BUNDLED,
    FASHION_MNIST_SYSTEM as FASHION_MNIST_SYSTEM,
    SafeUnpickler as SafeUnpickler,
    read_idx as read_idx,
    write_idx as write_idx,
)
# isort: on

__all__ = [
    "ImageDataset",
    "Normalize",
    "ResNet",
    "SmallCNN",
    "cifar100",
    "fashion_mnist",
    "keyed_init_",
    "load_cifar100",
    "load_fashion_mnist",
    "resnet18",
    "small_cnn",
]
