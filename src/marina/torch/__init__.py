"""marina in your own PyTorch training loop: the methods as ``torch.optim.Optimizer`` subclasses.

``MARINA``, ``VRMARINA``, ``PPMARINA``, ``DIANA``, ``QGD`` (:mod:`marina.torch.optim`): each rank
of a torch.distributed group (or the process alone) is one worker; ``step(closure)`` follows
``torch.optim.LBFGS``; the algorithms are those of :mod:`marina.methods` on marina's networks and
compressors. :mod:`marina.torch.closure` adapts the closure to the Problem protocol.
``EF21``, ``EF21PP``, ``EF21SGD``, ``EF21SGDM``, ``DASHA``, ``DASHAPAGE``, ``DASHAMVR``
(:mod:`marina.torch.successors`): MARINA's successors, the same layer over their methods.
``CompressionHookState`` and ``compression_hook`` (:mod:`marina.torch.hooks`): QGD, DIANA, EF21 or
EF21-SGDM as a DDP communication hook for users of standard DDP (MARINA itself cannot be a hook:
see there); ``CompressionHookConfig``: the hook's frozen configuration.
"""

from __future__ import annotations

from marina.torch.hooks import CompressionHookConfig, CompressionHookState, compression_hook
from marina.torch.optim import DIANA, MARINA, PPMARINA, QGD, VRMARINA, MarinaOptimizer, compressor_for
from marina.torch.successors import DASHA, DASHAMVR, DASHAPAGE, EF21, EF21PP, EF21SGD, EF21SGDM

__all__ = [
    "MARINA",
    "VRMARINA",
    "PPMARINA",
    "DIANA",
    "QGD",
    "EF21",
    "EF21PP",
    "EF21SGD",
    "EF21SGDM",
    "DASHA",
    "DASHAPAGE",
    "DASHAMVR",
    "CompressionHookState",
    "CompressionHookConfig",
    "compression_hook",
    "MarinaOptimizer",
    "compressor_for",
]
