"""Training data for :class:`marina.problems.torch_model.TorchModelProblem`: tensors or a ``Dataset``.

A ``torch.utils.data.Dataset`` (map-style: ``len`` and ``dataset[i] -> (input, target)``) is
materialised ONCE into two tensors, only the rows the problem keeps (the hosted workers' shards):
marina's finite-sum methods index samples by local id in every round, so the data must be fixed
and addressable. Before reading, the memory is estimated from the first sample (rows x bytes
of one input and one target) and compared with what is available (``MemAvailable`` of the host,
where the rows are staged, and ``torch.cuda.mem_get_info`` of a CUDA device); an estimate above
it is a :class:`ConfigError` naming both figures. The dataset's own transforms run once per
sample, at materialisation (random augmentation is frozen: the objective must be a fixed finite
sum); per-batch deterministic transforms go to the problem's ``transform``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from marina.errors import ConfigError

__all__ = ["data_labels", "data_size", "take_rows"]


def available_memory(device: torch.device) -> int | None:
    """Bytes available on ``device`` (host RAM for CPU), or None when it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _gib(nbytes: int) -> str:
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes} bytes"


def _is_dataset(data: Any) -> bool:
    return isinstance(data, Dataset) and not isinstance(data, TensorDataset)


def _as_tensor(value: Any, what: str, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value) if not isinstance(value, (int, float)) else value)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(
            f"{name}: the data set returned a {type(value).__name__} as {what}, which is not a tensor, an "
            "array or a number; give the data set a transform making tensors (e.g. "
            "torchvision.transforms.PILToTensor())"
        ) from None


def _sample(data: Any, i: int, name: str) -> tuple[Tensor, Tensor]:
    item = data[i]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ConfigError(
            f"{name}: data set item {i} is a {type(item).__name__}, must be a pair (input, target)"
        )
    return _as_tensor(item[0], "input", name), _as_tensor(item[1], "target", name)


def _tensors(data: Any, name: str) -> tuple[Tensor, Tensor] | None:
    """(inputs, targets) when ``data`` is already two tensors (a pair or a TensorDataset), else None."""
    if isinstance(data, TensorDataset):
        data = data.tensors
    if _is_dataset(data):
        return None
    if not isinstance(data, (tuple, list)) or len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
        raise ConfigError(
            f"{name}: data is a {type(data).__name__}, must be (inputs, targets) tensors or a "
            "torch.utils.data.Dataset of (input, target) pairs"
        )
    inputs, targets = data
    if len(inputs) != len(targets):
        raise ConfigError(f"{name}: {len(inputs)} inputs and {len(targets)} targets")
    return inputs, targets


def data_size(data: Any, name: str) -> int:
    """N, the number of samples of tensors or a dataset."""
    pair = _tensors(data, name)
    return len(pair[0]) if pair is not None else len(data)


def data_labels(data: Any, name: str) -> np.ndarray | None:
    """(N,) labels for label-aware splits without reading the samples (1-D targets, or a dataset's
    ``targets`` attribute, as torchvision's have); None when only a full read would tell."""
    pair = _tensors(data, name)
    if pair is not None:
        return pair[1].cpu().numpy() if pair[1].dim() == 1 else np.zeros(len(pair[1]))
    targets = getattr(data, "targets", None)
    if targets is not None and len(targets) == len(data):
        return np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets)
    return None


def estimate_bytes(first: tuple[Tensor, Tensor], rows: int) -> int:
    """Bytes of ``rows`` samples shaped like ``first`` (inputs and targets)."""
    return rows * sum(t.numel() * t.element_size() for t in first)


def _check_memory(need: int, devices: list[torch.device], rows: int, first: tuple[Tensor, Tensor], name: str):
    for device in devices:
        free = available_memory(device)
        if free is not None and need > free:
            x, y = first
            raise ConfigError(
                f"{name}: materialising {rows} samples (input {tuple(x.shape)} {x.dtype}, target "
                f"{tuple(y.shape)} {y.dtype}) needs about {_gib(need)}, but only {_gib(free)} is available "
                f"on {device}; keep fewer samples (torch.utils.data.Subset), host fewer workers "
                "(hosted_workers=...), or store inputs in a smaller dtype (uint8 images with transform=...)"
            )


def take_rows(data: Any, rows: Tensor | None, device: torch.device, name: str) -> tuple[Tensor, Tensor]:
    """(inputs, targets) of the samples ``rows`` (all when None), on ``device``.

    Tensors are indexed; a dataset is read once, row by row, into preallocated tensors after the
    memory check of the module doc (every sample must have the first one's shapes and dtypes).
    """
    pair = _tensors(data, name)
    if pair is not None:
        inputs, targets = pair
        if rows is None:
            return inputs.to(device), targets.to(device)
        rows = rows.to(inputs.device)
        return inputs[rows].to(device), targets[rows.to(targets.device)].to(device)
    order = range(len(data)) if rows is None else rows.tolist()
    if len(order) == 0:
        raise ConfigError(f"{name}: the data set has no samples")
    first = _sample(data, order[0], name)
    need = estimate_bytes(first, len(order))
    staged = [torch.device("cpu")] + ([device] if device.type != "cpu" else [])
    _check_memory(need, staged, len(order), first, name)
    out = [torch.empty((len(order), *t.shape), dtype=t.dtype) for t in first]
    for j, i in enumerate(order):
        sample = first if j == 0 else _sample(data, i, name)
        for slot, t, what in zip(out, sample, ("input", "target")):
            if t.shape != slot.shape[1:] or t.dtype != slot.dtype:
                raise ConfigError(
                    f"{name}: data set item {i} has a {what} of shape {tuple(t.shape)} {t.dtype}, "
                    f"item {order[0]} one of {tuple(slot.shape[1:])} {slot.dtype}; all must agree"
                )
            slot[j] = t
    return out[0].to(device), out[1].to(device)
