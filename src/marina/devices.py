"""Device names checked before anything is built: ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""

from __future__ import annotations

from typing import Any

import torch

from marina.errors import ConfigError

__all__ = ["available", "check"]


def available() -> list[str]:
    """The devices of this machine, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check(device: Any) -> torch.device:
    """``device`` as a :class:`torch.device` that exists here (ConfigError naming the value and
    the devices of this machine otherwise)."""
    here = "this machine has: " + ", ".join(available())
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str) and device.strip():
        try:
            dev = torch.device(device.strip())
        except (RuntimeError, ValueError):
            raise ConfigError(f"device == {device!r} is not a device name; {here}") from None
    else:
        raise ConfigError(f"device == {device!r}, must be a device name; {here}")
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device == {device!r}, but CUDA is not available here; {here}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device == {device!r} does not exist; {here}")
        return dev
    if dev.type == "mps" and "mps" in available():
        return dev
    raise ConfigError(f"device == {device!r} is not available here; {here}")
