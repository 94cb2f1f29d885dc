"""PyTorch's default initialisation, drawn from marina's keyed randomness instead of the global RNG.

``torch.nn`` layers initialise themselves in ``reset_parameters`` from the global generator, so
two processes (or two runs after unrelated draws) start from different weights unless someone
calls ``torch.manual_seed``. marina has no global RNG: :func:`keyed_init_` redraws every
parameter from the same *distribution* PyTorch uses by default, with numbers keyed by
``(seed, "init/<parameter name>")`` (:class:`marina.rng.Randomness`, worker ``SHARED``), so the
start x^0 is a pure function of the seed and the architecture, identical in every process and
on every device, and adding a layer does not change the draws of the others.

Default distributions reproduced (torch.nn source, ``reset_parameters``):

- ``Linear``, ``Conv1d/2d/3d``: weight ``kaiming_uniform_(a=sqrt(5))``, i.e. U(-1/sqrt(fan_in),
  1/sqrt(fan_in)) with fan_in = in_features (or in_channels / groups * kernel size); bias
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
- ``BatchNorm*``, ``GroupNorm``, ``LayerNorm``: weight 1, bias 0 (running statistics reset).

The paper's code started ResNet-18 from all-zero weights; a network started at zero has
symmetric hidden units (and zero gradients through ReLU blocks), so marina does not.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from marina.errors import ConfigError
from marina.rng import SHARED, Randomness

__all__ = ["keyed_init_"]

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def keyed_uniform(seed: int, name: str, shape: torch.Size, bound: float) -> torch.Tensor:
    """U(-bound, bound) numbers of the given shape keyed by (seed, "init/<name>"), float64 on CPU."""
    numel = math.prod(shape)
    u = Randomness(seed, f"init/{name}", 0, [SHARED]).uniform(numel, dtype=torch.float64)
    return ((2.0 * u - 1.0) * bound).reshape(shape)


@torch.no_grad()
def keyed_init_(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialise ``module`` in place with PyTorch's default distributions, keyed by ``seed``.

    Args:
        module: the model (changed in place, and returned).
        seed: keys every draw (the same seed gives the same weights in every process).

    Raises:
        ConfigError: a module holds parameters of its own and its default initialisation is not
            listed above (initialise such a model yourself and build the problem with
            ``init_seed=None``).
    """
    for prefix, sub in module.named_modules():
        own = dict(sub.named_parameters(recurse=False))
        if not own:
            continue
        if isinstance(sub, _AFFINE):
            weight = sub.weight
            fan_in = weight.shape[1] * math.prod(weight.shape[2:])
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            for pname, p in own.items():
                full = f"{prefix}.{pname}" if prefix else pname
                p.copy_(keyed_uniform(seed, full, p.shape, bound).to(p.dtype))
        elif isinstance(sub, _NORMS):
            for pname, p in own.items():
                p.fill_(1.0 if pname == "weight" else 0.0)
            if isinstance(sub, nn.modules.batchnorm._NormBase):
                sub.reset_running_stats()
        else:
            raise ConfigError(
                f"keyed_init_: module {prefix or type(module).__name__!r} of type {type(sub).__name__} "
                "has parameters whose default initialisation is unknown; initialise the model "
                "yourself and pass init_seed=None"
            )
    return module
