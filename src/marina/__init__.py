"""marina: communication-compressed distributed methods for smooth non-convex problems.

Implements MARINA, VR-MARINA (finite-sum and online) and PP-MARINA (Gorbunov, Burlachenko, Li,
Richtarik, ICML 2021) with the baselines GD, QGD (compressed GD), DIANA and VR-DIANA, unbiased
compressors with exact wire bits, theory-driven defaults, simulated and torch.distributed workers.
"""

from __future__ import annotations

__version__ = "0.1.0"

from marina import (
    compressors,  # noqa: E402
    problems,  # noqa: E402
)
from marina.compressors import Compressor, Message  # noqa: E402

__all__ = ["__version__", "compressors", "problems", "Compressor", "Message"]

from marina import methods, network, theory  # noqa: E402
from marina.runner import Result, run  # noqa: E402

__all__ += ["methods", "network", "theory", "run", "Result"]

from marina import distributed, experiments, nets, parameters  # noqa: E402

__all__ += ["distributed", "experiments", "nets", "parameters"]

# marina.torch (the optimizers) as an attribute, kept out of __all__: ``from marina import *``
# must not shadow the user's ``torch``.
from marina import torch as torch  # noqa: E402
