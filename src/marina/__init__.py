"""marina: communication-compressed distributed methods for smooth non-convex problems.

Implements MARINA, VR-MARINA (finite-sum and online) and PP-MARINA (Gorbunov, Burlachenko, Li,
Richtarik, ICML 2021) with the baselines GD, QGD (compressed GD), DIANA and VR-DIANA, unbiased
compressors with exact wire bits, theory-driven defaults, simulated and torch.distributed workers.

Submodules and ``run`` / ``Result`` load on first use, so ``import marina`` (and
``marina --version``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "compressors",
    "problems",
    "methods",
    "network",
    "theory",
    "distributed",
    "experiments",
    "nets",
    "parameters",
    "trackers",
)
_NAMES = {
    "Compressor": "marina.compressors",
    "Message": "marina.compressors",
    "run": "marina.runner",
    "Result": "marina.runner",
}

__all__ = ["__version__", *_SUBMODULES, *_NAMES]


def __getattr__(name: str) -> Any:
    # marina.torch (the optimizers) loads on use too, but stays out of __all__: ``from marina import
    # *`` must not shadow the user's ``torch``
    if name in _SUBMODULES or name == "torch":
        return importlib.import_module(f"marina.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'marina' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
