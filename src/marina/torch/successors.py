"""EF21, EF21-PP, EF21-SGD, EF21-SGDM, DASHA, DASHA-PAGE, DASHA-MVR as ``torch.optim.Optimizer`` subclasses.

The same thin layer as :mod:`marina.torch.optim` (read its module doc: steps, ``step(closure)``,
stepsize, checkpoints, counters) over :mod:`marina.methods.ef21` and :mod:`marina.methods.dasha`;
no algorithm line is repeated here. All seven build their estimator g^k from gradients at x^k and
then move x^{k+1} = x^k - gamma g^k, as the MARINA family: step 0 is the dense start
(g_i^0 = grad f_i(x^0), or DASHA-MVR's batch of B_0 samples), step t >= 1 the loop body of
round k = t - 1 with the closure at x^{k+1} = the current parameters.

What the closure should compute at each step is :attr:`coin` (True: the full local loss f_i, or
DASHA-MVR's B_0 samples on step 0; False: a minibatch of ``batch_size`` samples):

- ``EF21``, ``EF21PP``, ``DASHA``: always True (a full local gradient every round is inherent to
  these methods, whatever the compressor);
- ``EF21SGD``, ``EF21SGDM``, ``DASHAMVR``: True on step 0 only;
- ``DASHAPAGE``: the shared coin c_k ~ Be(p) (True on step 0).

``DASHAPAGE`` and ``DASHAMVR`` evaluate the closure twice on c_k = 0 steps, on the same batch,
at x^{k+1} and at x^k (RNG forked, ``module``'s buffers advanced once, see
:mod:`marina.torch.closure`). ``EF21PP``: a rank not drawn in a round (:attr:`EF21PP.participates`
False) never calls the closure and sends nothing, but must still call ``step``.

Compressors: the EF21 family takes contractive ones (``topk:K``, ``"topk:1%"``) and unbiased
ones (used as Q/(1 + omega)); DASHA takes unbiased ones. Sample indices drawn by the methods
(streams "minibatch") are not read: the training loop feeds its batches; ``batch_size``,
``dense_batch_size`` and ``local_size`` feed the theory defaults and :attr:`oracle_calls`.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn

from marina import methods
from marina.compressors.base import CompressorSpec
from marina.errors import ConfigError
from marina.torch.optim import MarinaOptimizer, Params, _base_arguments, default_local_size, documented

__all__ = ["EF21", "EF21PP", "EF21SGD", "EF21SGDM", "DASHA", "DASHAPAGE", "DASHAMVR"]


@documented()
class EF21(MarinaOptimizer):
    """Closure: the full local loss f_i at every step (:attr:`coin` is always True).

    EF21 (:class:`marina.methods.EF21`, Algorithm 2 of the EF21 paper); for minibatches use
    :class:`EF21SGD`. ``local_size`` = m_i only feeds :attr:`oracle_calls`.
    """

    method_name = methods.EF21.name

    def __init__(
        self,
        params: Params,
        compressor: CompressorSpec = "topk:1%",
        lr: float = 0.1,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        *,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        super().__init__(params, overrides={}, **_base_arguments(locals()))


@documented()
class EF21PP(MarinaOptimizer):
    """Closure: the full local loss f_i at every step, on the ranks that take part (:attr:`participates`).

    EF21-PP (:class:`marina.methods.EF21PP`): each client takes part in a round with probability
    q = ``participation`` (default 1/2), drawn from the shared stream; only the participants call
    the closure.
    """

    method_name = methods.EF21PP.name

    def __init__(
        self,
        params: Params,
        compressor: CompressorSpec = "topk:1%",
        lr: float = 0.1,
        participation: float | None = None,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        *,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        overrides = {"participation": participation}
        super().__init__(params, overrides=overrides, **_base_arguments(locals()))

    @property
    def participates(self) -> bool:
        """Whether this rank computes in the next step (step 0, or drawn in the round's draw)."""
        if not self.started:
            return True
        mult = self.method.participants(self.method.k)
        return mult is None or bool(mult[int(self.net.worker_ids[0])] > 0)


@documented(batch_size="b, the minibatch of every step after step 0")
class EF21SGD(MarinaOptimizer):
    """Closure: the full local loss on step 0, then a minibatch of ``batch_size`` samples (:attr:`coin`).

    EF21-SGD (:class:`marina.methods.EF21SGD`): g_i^0 = grad f_i(x^0), then minibatch gradients
    at the current parameters (one per step: ``loss.backward(); opt.step()`` works too);
    ``local_size`` = m defaults to b.
    """

    method_name = methods.EF21SGD.name
    full_loss = False

    def __init__(
        self,
        params: Params,
        compressor: CompressorSpec = "topk:1%",
        lr: float = 0.1,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        *,
        batch_size: int,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        if local_size is None:  # m >= b is all the theory needs of m here
            local_size = default_local_size(batch_size, batch_size)
        overrides = {"batch_size": batch_size}
        super().__init__(params, overrides=overrides, **_base_arguments(locals()))


@documented(
    momentum="eta in (0, 1], the weight of the new gradient in the momentum v_i (required: the "
    "theory's eta depends on the horizon and the noise, which a training loop does not declare)",
    batch_size="b, the minibatch of every step after step 0",
)
class EF21SGDM(MarinaOptimizer):
    """Closure: the full local loss on step 0, then a minibatch of ``batch_size`` samples (:attr:`coin`).

    EF21-SGDM (:class:`marina.methods.EF21SGDM`, Algorithm 1 of the momentum paper): v_i^0 =
    g_i^0 = grad f_i(x^0), then at every step the momentum v_i = (1 - eta) v_i + eta g_hat_i of a
    minibatch gradient at the current parameters (one per step: ``loss.backward(); opt.step()``
    works too) and g_i += C(v_i - g_i); eta = 1 is :class:`EF21SGD`. ``local_size`` = m defaults to b.
    """

    method_name = methods.EF21SGDM.name
    full_loss = False

    def __init__(
        self,
        params: Params,
        compressor: CompressorSpec = "topk:1%",
        lr: float = 0.1,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        *,
        momentum: float,
        batch_size: int,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        if momentum is None:
            raise ConfigError(
                "EF21SGDM needs momentum=eta in (0, 1] (eta = 1 is EF21SGD; the theory's eta depends on "
                "the number of steps and the gradient noise, unknown here)"
            )
        if local_size is None:  # m >= b is all the theory needs of m here
            local_size = default_local_size(batch_size, batch_size)
        overrides = {"momentum": momentum, "batch_size": batch_size}
        super().__init__(params, overrides=overrides, **_base_arguments(locals()))


@documented()
class DASHA(MarinaOptimizer):
    """Closure: the full local loss f_i at every step (:attr:`coin` is always True).

    DASHA (:class:`marina.methods.DASHA`, Algorithm 1 with h_i = grad f_i); momentum a defaults
    to 1/(2 omega + 1). For minibatches use :class:`DASHAMVR` or :class:`DASHAPAGE`.
    """

    method_name = methods.DASHA.name
    differences_steps = True

    def __init__(
        self,
        params: Params,
        compressor: CompressorSpec = "randk:1%",
        lr: float = 0.1,
        momentum: float | None = None,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        *,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        overrides = {"momentum": momentum}
        super().__init__(params, overrides=overrides, **_base_arguments(locals()))


@documented(
    p="probability of a full-gradient round c_k = 1 (None: B/(m + B))",
    batch_size="B, the minibatch of the c_k = 0 steps",
)
class DASHAPAGE(MarinaOptimizer):
    """Closure: the full local loss when :attr:`coin`, else a minibatch of ``batch_size`` samples.

    DASHA-PAGE (:class:`marina.methods.DASHAPAGE`): finite sums of ``local_size`` = m samples
    per worker (required); :attr:`coin` is the shared c_k ~ Be(p), p defaulting to B/(m + B)
    (Corollary 6.5). On c_k = 0 steps the closure runs twice on the batch of B = ``batch_size``
    samples (at x^{k+1}, then at x^k).
    """

    method_name = methods.DASHAPAGE.name
    one_point = False
    full_loss = False

    def __init__(
        self,
        params: Params,
        compressor: CompressorSpec = "randk:1%",
        lr: float = 0.1,
        p: float | None = None,
        momentum: float | None = None,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        *,
        batch_size: int,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        if local_size is None:
            raise ConfigError(
                "DASHAPAGE needs local_size=m, the samples of each worker: c_k = 1 steps are full "
                "local passes and the default p = B/(m + B)"
            )
        overrides = {"p": p, "momentum": momentum, "batch_size": batch_size}
        super().__init__(params, overrides=overrides, **_base_arguments(locals()))


@documented(
    batch_size="B, the minibatch of every step after step 0",
    dense_batch_size="B_0, the batch of step 0 (None: min(m, 10 B))",
)
class DASHAMVR(MarinaOptimizer):
    """Closure: ``dense_batch_size`` samples on step 0, then minibatches of ``batch_size`` (:attr:`coin`).

    DASHA-MVR (:class:`marina.methods.DASHAMVR`): step 0 feeds B_0 = ``dense_batch_size``
    samples (default min(m, 10 B)), every later step B = ``batch_size`` samples, evaluated twice
    (at x^{k+1}, then at x^k); MVR momentum b defaults to min(sqrt(B/B_0)/omega, B/B_0).
    ``local_size`` = m defaults to max(B, B_0) (as :class:`marina.torch.VRMARINA` online).
    """

    method_name = methods.DASHAMVR.name
    one_point = False
    full_loss = False

    def __init__(
        self,
        params: Params,
        compressor: CompressorSpec = "randk:1%",
        lr: float = 0.1,
        momentum: float | None = None,
        mvr_momentum: float | None = None,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        *,
        batch_size: int,
        dense_batch_size: int | None = None,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        if local_size is None:
            local_size = default_local_size(batch_size, dense_batch_size)
        overrides = {
            "momentum": momentum,
            "mvr_momentum": mvr_momentum,
            "batch_size": batch_size,
            "dense_batch_size": dense_batch_size,
        }
        super().__init__(params, overrides=overrides, **_base_arguments(locals()))
