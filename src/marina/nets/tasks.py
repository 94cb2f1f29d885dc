"""Ready-made neural-network problems: the paper's ResNet-18 / CIFAR-100 and Fashion-MNIST / small CNN.

Both return a :class:`marina.problems.torch_model.TorchModelProblem` (cross-entropy, images
stored as uint8 and standardised per channel on the fly with the training set's mean and std).
No data augmentation: the objective must be a fixed finite sum for the variance-reduced methods.
The models built here start from PyTorch's default initialisation keyed by ``init_seed`` (default
0: the same x^0 in every process and run); a ``model`` passed in keeps its weights unless
``init_seed`` is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from marina.errors import ConfigError
from marina.nets.datasets import ImageDataset, load_cifar100, load_fashion_mnist
from marina.nets.models import resnet18, small_cnn
from marina.problems.torch_model import TorchModelProblem

__all__ = ["cifar100", "fashion_mnist", "image_problem"]


def image_problem(
    data: ImageDataset,
    model: nn.Module,
    workers: int,
    *,
    train_samples: int | None = None,
    name: str | None = None,
    **options: Any,
) -> TorchModelProblem:
    """A classification problem on ``data`` (its first ``train_samples`` training images if given)."""
    x, y = data.train_images, data.train_labels
    if train_samples is not None:
        if not 1 <= train_samples <= len(y):
            raise ConfigError(f"train_samples == {train_samples}, must be in [1, {len(y)}]")
        x, y = x[:train_samples], y[:train_samples]
    problem = TorchModelProblem(
        model,
        (x, y),
        workers=workers,
        test=(data.test_images, data.test_labels),
        transform=data.normalizer(),
        name=name or data.name,
        **options,
    )
    problem.data_source = data.source
    return problem


def fashion_mnist(
    workers: int = 5,
    *,
    data_dir: str | Path | None = None,
    model: nn.Module | None = None,
    chunk_size: int = 500,
    **options: Any,
) -> TorchModelProblem:
    """Fashion-MNIST (found as :func:`marina.nets.load_fashion_mnist` says) with the small CNN.

    Args:
        workers: n, the number of workers.
        data_dir: where the files are (see :func:`marina.nets.load_fashion_mnist`).
        model: the model (default: :func:`marina.nets.small_cnn`, initialised with seed 0).
        chunk_size: samples per worker per chunk in full local passes.
        **options: ``train_samples`` and those of :class:`marina.problems.TorchModelProblem`
            (split, seed, hosted_workers, init_seed, device, worker_batching, smoothness, ...).
    """
    data = load_fashion_mnist(data_dir)
    if model is None:
        model = small_cnn(num_classes=10)
        options.setdefault("init_seed", 0)
    return image_problem(data, model, workers, name="fashion-mnist", chunk_size=chunk_size, **options)


def cifar100(
    workers: int = 5,
    *,
    data_dir: str | Path | None = None,
    norm: str = "batch",
    model: nn.Module | None = None,
    chunk_size: int = 128,
    **options: Any,
) -> TorchModelProblem:
    """The paper's setting: CIFAR-100 from ``data_dir`` and ResNet-18 (100-class head kept).

    Args:
        workers: n, the number of workers.
        data_dir: where the files are (see :func:`marina.nets.load_cifar100`).
        norm: the ResNet's normalisation (``"batch"``, ``"group"``, ``"none"``).
        model: the model (default: :func:`marina.nets.resnet18`, initialised with seed 0).
        chunk_size: samples per worker per chunk in full local passes.
        **options: as for :func:`fashion_mnist`.
    """
    data = load_cifar100(data_dir)
    if model is None:
        model = resnet18(num_classes=100, norm=norm)
        options.setdefault("init_seed", 0)
    return image_problem(data, model, workers, name="cifar100", chunk_size=chunk_size, **options)
