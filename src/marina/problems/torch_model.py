"""Any ``torch.nn.Module`` + loss + data set as a finite-sum problem split among workers.

f(x) = (1/n) sum_i f_i(x),  f_i(x) = (1/m) sum_{j=1}^{m} loss(model(a_ij; x), y_ij),

where x is the model's parameters as ONE flat vector of length d (the d of the compressors, in
the order of ``model.named_parameters()``), and worker i holds m samples (a_ij, y_ij). This is
the setting of the MARINA paper's neural-network experiment (Sec. 5: ResNet-18 on CIFAR-100,
VR-MARINA against VR-DIANA); every method of marina runs on it through the :class:`Problem`
protocol, its hot path being ``minibatch_grad_diffs`` (VR-MARINA, Algorithm 2, line 8:
(1/b') sum_{j in I'_{i,k}} (grad f_ij(x^{k+1}) - grad f_ij(x^k)), the same samples at both points).

Design choices (each deliberate, each tested):

Data split. :func:`marina.data.splits.make_split` (the one used by the linear problems):
``contiguous`` (worker w gets samples [w m, (w+1) m)), ``shuffled`` (a permutation keyed by
``seed`` through :class:`marina.rng.Randomness`, identical in every process), ``dirichlet``
label skew, or explicit rows; always with ``drop_remainder=True``: the N - n m leftover samples
(fewer than n) are dropped (``samples_dropped``) so that every worker holds the same
m = floor(N / n). Minibatches are then one (n, b) tensor and chunks of the local data line up
across workers (needed for batch norm below). ``hosted_workers`` keeps only the data of some
workers (a torch.distributed rank hosting a block of them); every worker-side tensor then has one
row per hosted worker, in increasing id order, equal to the corresponding rows of the full
problem (tested).

Per-worker gradients: ``torch.func``. The model is called functionally
(``functional_call(model, params(x), batch)``), so no module state changes and two points x, x'
can be evaluated on the same samples. Two ways to get the n per-worker gradients, same numbers
(tested): ``vmap(grad_and_value(loss), in_dims=(None, 0, 0))`` over the worker axis of the
(n, b, ...) batch (one call, no Python loop: the forward folds the worker axis into the batch;
the weight gradients use functorch's batched rule), or a loop of one ``grad_and_value`` per
hosted worker (n ordinary batches). ``worker_batching="auto"`` (default) uses vmap for the
minibatch oracles (the hot path: ``minibatch_grad_diffs``), where both cost about the same, and
the loop for the chunks of full local passes (``local_grads``), where the batched weight gradient
was measured slower (figures: ``benchmarks/README.md``, ``benchmarks/nets.py``). vmap over a
ResNet-18 works (batch norm is made functional, see below). ``minibatch_grad_diffs`` gathers and
transforms the samples once and makes two gradient calls (x_new, x_old); nesting a second vmap
over the two points was slower (batched weights turn convolutions into grouped convolutions).
``worker_batching="vmap"`` / ``"loop"`` force either.

Batch norm. x holds trainable parameters only. In every oracle call batch norm normalises with
the statistics of the batch being evaluated, per worker (``torch.func.replace_all_batch_norm_modules_``:
no running statistics, nothing is updated): a minibatch oracle at x and at x' on the same
samples therefore differentiates the SAME function f_B (the loss of batch B with B's own
statistics), so ``minibatch_grad_diffs`` is exactly the difference of the two
``minibatch_grads`` (tested) and VR-MARINA's estimator is consistent. Full local quantities
(``local_grads``, ``local_losses``) evaluate worker i's data in fixed chunks of ``chunk_size``
samples, each normalised with its own statistics, and define
f_i(x) = sum_chunks (|chunk| / m) loss_chunk(x): a deterministic function of x whose exact
gradient is ``local_grads``. With batch norm, f_i thus depends on ``chunk_size`` (keep it fixed
when comparing runs) and E[minibatch grad] equals grad f_i only approximately (the usual batch
norm bias); models without batch norm have exact per-sample losses and neither caveat.
Evaluation (``extra_metrics``) uses eval mode with population statistics recomputed at x from the
hosted training data (cumulative average over chunks, as ``torch.optim.swa_utils.update_bn``
does), since running averages collected along the trajectory would mix many x's. The
``GroupNorm`` variant of the ResNet (``norm="group"``) avoids the question altogether.

Models must be deterministic: dropout (p > 0) would make grad f_ij random and is refused.

Smoothness constants. L_i, L_avg, L_f of a network are unknown. By default reading them raises
:class:`ConfigError` telling the user to pass ``stepsize`` (the theory stepsizes of every method
need L; the probabilities p and alpha do not). ``smoothness=L`` supplies a value (used for all
three); ``smoothness="estimate"`` uses :meth:`TorchModelProblem.estimate_smoothness` at x^0, a
power-iteration estimate of the top Hessian eigenvalue on each worker's first samples. That is a
local curvature, not a global constant: a heuristic to set theory-shaped stepsizes, no guarantee.

Starting point x^0: the given model's own weights (``init_seed=None``, the default: fine-tuning
starts from them), or PyTorch's default initialisation redrawn from keyed randomness
(:func:`marina.nets.keyed_init_`, ``init_seed=s``), identical in every process for the same s
(the ready-made :mod:`marina.nets` tasks build their models so, ``init_seed=0``); not all-zero
weights as in the paper's code. In a multi-process run each rank builds its own problem: give
every rank the same weights (a checkpoint, ``torch.manual_seed`` before building the model, or
``init_seed``); :func:`marina.distributed.run` refuses ranks whose x^0 differ.

Training data: (inputs, targets) tensors or a ``torch.utils.data.Dataset`` of (input, target)
pairs, materialised once (only the hosted workers' samples) after a memory estimate
(:mod:`marina.problems.torch_data`). Back to a model: :meth:`TorchModelProblem.load_into` writes
a point (``result.x``) into a module, :meth:`TorchModelProblem.model_at` returns a fresh one;
both set batch-norm running statistics to the population statistics at that point.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, replace_all_batch_norm_modules_, vjp, vmap
from torch.utils.data import Dataset

from marina.data.splits import make_split
from marina.errors import ConfigError
from marina.problems.base import Problem
from marina.problems.keyed_init import keyed_init_
from marina.problems.torch_data import data_labels, data_size, take_rows
from marina.rng import Randomness

__all__ = ["TorchModelProblem", "WORKER_BATCHING"]

WORKER_BATCHING = ("auto", "vmap", "loop")

Loss = Callable[[Tensor, Tensor], Tensor]


class TorchModelProblem(Problem):
    """A torch model's training loss split among workers, parameters as one flat vector.

    Args:
        model: any ``nn.Module`` mapping a batch of inputs to outputs; copied (the caller's
            module is never changed), its weights are x^0 unless ``init_seed`` is given. Must
            be free of dropout.
        train: (inputs, targets) tensors of all N training samples, first axis the sample, or a
            ``torch.utils.data.Dataset`` of (input, target) pairs (materialised once, see
            :mod:`marina.problems.torch_data`; ConfigError when the estimate exceeds the memory).
        workers: n, the total number of workers the data is split among.
        test: optional (inputs, targets) or Dataset held out for ``test_acc``.
        loss: ``loss(outputs, targets) -> scalar`` MEAN over the batch (default
            ``F.cross_entropy``).
        transform: applied to every gathered batch of inputs before the model (e.g. uint8 images
            -> normalised float32, :class:`marina.nets.Normalize`); the data stays stored as given.
        split: how samples are assigned to workers: :func:`marina.data.splits.make_split`
            (``contiguous``, ``shuffled``, ``dirichlet`` label skew, or explicit rows), always
            with ``drop_remainder=True``; every shard must have the same size m.
        seed: keys the random splits.
        split_options: further options of the split (``{"alpha": 0.1}`` for ``dirichlet``).
        hosted_workers: global ids of the workers whose data this object keeps (default all).
        init_seed: ``None`` (default) keeps the model's weights; an int redraws them with
            PyTorch's default initialisation keyed by it (the same x^0 in every process).
        chunk_size: samples per worker per chunk in full local passes (memory; with batch norm
            also the definition of f_i, see module doc).
        eval_chunk_size: samples per chunk in ``extra_metrics`` (default ``4 * chunk_size``).
        metric_samples: training samples per worker used by ``extra_metrics`` for train_loss,
            train_acc and the batch-norm statistics (default: all m).
        worker_batching: "auto", "vmap" or "loop" (see module doc).
        smoothness: None (constants unknown: pass ``stepsize`` to the methods), a float L, or
            "estimate" (heuristic, see :meth:`estimate_smoothness`).
        device: where data and computations live (default: where the model's parameters are).
        dtype: of the parameters and of every returned tensor (default: the model's, float32
            for torch.nn layers); floating inputs are cast to it after the transform.
        name: for results tables.
    """

    def __init__(
        self,
        model: nn.Module,
        train: tuple[Tensor, Tensor] | Dataset,
        *,
        workers: int,
        test: tuple[Tensor, Tensor] | Dataset | None = None,
        loss: Loss | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
        split: str | Sequence[Sequence[int]] | np.ndarray = "contiguous",
        seed: int = 0,
        split_options: dict[str, Any] | None = None,
        hosted_workers: Sequence[int] | Tensor | None = None,
        init_seed: int | None = None,
        chunk_size: int = 128,
        eval_chunk_size: int | None = None,
        metric_samples: int | None = None,
        worker_batching: str = "auto",
        smoothness: float | str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        name: str = "torch-model",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model is a {type(model).__name__}, must be a torch.nn.Module")
        if worker_batching not in WORKER_BATCHING:
            raise ConfigError(
                f"worker_batching == {worker_batching!r}, must be one of {', '.join(WORKER_BATCHING)}"
            )
        if chunk_size < 1:
            raise ConfigError(f"chunk_size == {chunk_size}, must be >= 1")
        if eval_chunk_size is not None and eval_chunk_size < 1:
            raise ConfigError(f"eval_chunk_size == {eval_chunk_size}, must be >= 1")
        if isinstance(smoothness, str) and smoothness != "estimate":
            raise ConfigError(f"smoothness == {smoothness!r}, must be a positive number, 'estimate' or None")
        if smoothness is not None and not isinstance(smoothness, str) and not float(smoothness) > 0:
            raise ConfigError(f"smoothness == {smoothness}, must be > 0")
        for mod in model.modules():
            if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.p > 0:
                raise ConfigError(
                    f"model has {type(mod).__name__}(p={mod.p}): dropout makes the gradients of f_ij "
                    "random; remove it (p = 0) to train with marina's finite-sum methods"
                )
        params = list(model.parameters())
        if not params:
            raise ConfigError("model has no parameters")
        self.device = torch.device(device) if device is not None else params[0].device
        if dtype is None and any(p.dtype != params[0].dtype for p in params):
            raise ConfigError(
                "model parameters have mixed dtypes; convert the model to one dtype or pass dtype"
            )
        if dtype is not None and not dtype.is_floating_point:
            raise ConfigError(f"dtype == {dtype}, must be a floating-point dtype")
        self.dtype = dtype if dtype is not None else params[0].dtype

        # -- the model: a training copy with functional batch norm, an evaluation copy ----------
        base = copy.deepcopy(model).to(device=self.device, dtype=self.dtype)
        if init_seed is not None:
            keyed_init_(base, int(init_seed))
        self._template = base  # the model as given (or keyed), for model_at
        self._eval_model = copy.deepcopy(base)
        self._bn_prefixes = []
        for prefix, mod in self._eval_model.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
                mod.momentum = None  # cumulative average when statistics are recomputed
                self._bn_prefixes.append(prefix)
        self._train_model = replace_all_batch_norm_modules_(copy.deepcopy(base)).train()
        self._names = [n for n, _ in base.named_parameters()]
        self._shapes = [p.shape for _, p in base.named_parameters()]
        self._numels = [p.numel() for _, p in base.named_parameters()]
        self.dim = int(sum(self._numels))
        self._x0 = torch.cat([p.detach().reshape(-1) for p in base.parameters()]).to(self.device)
        self._loss: Loss = loss if loss is not None else F.cross_entropy
        self._transform = transform
        self.name = name

        # -- data: the hosted workers' shards, (n_hosted, m, ...) --------------------------------
        n_samples = data_size(train, f"{name}: train")
        labels = data_labels(train, f"{name}: train")
        full = None
        if labels is None and isinstance(split, str) and split.lower() == "dirichlet":
            full = take_rows(train, None, torch.device("cpu"), f"{name}: train")  # labels need a read
            labels = full[1].numpy() if full[1].dim() == 1 else np.zeros(n_samples)
        if labels is None:
            labels = np.zeros(n_samples)
        plan = make_split(labels, workers, split, seed=seed, drop_remainder=True, **(split_options or {}))
        if int(plan.sizes.min()) != int(plan.sizes.max()):
            raise ConfigError(
                f"{name}: split {plan.kind!r} gives shards of {int(plan.sizes.min())} to "
                f"{int(plan.sizes.max())} samples; a torch-model problem needs equal shards "
                "(use contiguous, shuffled, or dirichlet with balanced=True)"
            )
        parts = torch.as_tensor(plan.order, dtype=torch.int64).reshape(int(workers), -1)
        self.total_workers = int(workers)
        self.split = plan.kind
        self.seed = int(seed)
        self.samples_dropped = n_samples - parts.numel()
        if hosted_workers is None:
            hosted = torch.arange(workers, dtype=torch.int64)
        else:
            hosted = torch.as_tensor(hosted_workers, dtype=torch.int64).reshape(-1)
            if hosted.numel() == 0:
                raise ConfigError("hosted_workers is empty, must name at least one worker")
            if int(hosted.min()) < 0 or int(hosted.max()) >= workers:
                raise ConfigError(f"hosted_workers {hosted.tolist()} must lie in [0, {workers})")
            hosted = torch.unique(hosted)  # sorted; duplicates are an error
            if hosted.numel() != len(hosted_workers):
                raise ConfigError(f"hosted_workers {list(hosted_workers)} has duplicates")
        self.worker_ids = hosted.to(self.device)
        self.n_workers = int(hosted.numel())
        self.m = int(parts.shape[1])
        self.sizes = torch.full((self.n_workers,), self.m, dtype=torch.int64, device=self.device)
        rows = parts[hosted].reshape(-1)  # (n_hosted m,): only these samples are read
        inputs, targets = take_rows(full if full is not None else train, rows, self.device, f"{name}: train")
        self._x = inputs.reshape(self.n_workers, self.m, *inputs.shape[1:])
        self._y = targets.reshape(self.n_workers, self.m, *targets.shape[1:])
        self._test = None if test is None else take_rows(test, None, self.device, f"{name}: test")
        self.chunk_size = int(chunk_size)
        self.eval_chunk_size = int(eval_chunk_size or 4 * chunk_size)
        self.metric_samples = self.m if metric_samples is None else max(1, min(int(metric_samples), self.m))
        self.worker_batching = worker_batching
        self._smoothness = smoothness
        self._L_cache: Tensor | None = None
        self._cached_losses: tuple[Tensor, Tensor] | None = None

        self._build_oracles()
        self._check_model()

    def _build_oracles(self) -> None:
        """The functional oracles, bound to this object's models."""
        self._grad_value = grad_and_value(self._batch_loss)
        self._vgrad_value = vmap(self._grad_value, in_dims=(None, 0, 0))
        self._vloss = vmap(self._batch_loss, in_dims=(None, 0, 0))

    def to(self, device: torch.device | str) -> TorchModelProblem:
        """This problem with its data, models and every returned tensor on ``device``."""
        device = torch.device(device)
        if device == self.device:
            return self
        new = copy.copy(self)
        new.device = device
        new._train_model = copy.deepcopy(self._train_model).to(device)
        new._template = copy.deepcopy(self._template).to(device)
        new._eval_model = copy.deepcopy(self._eval_model).to(device)
        new._x, new._y, new._x0 = self._x.to(device), self._y.to(device), self._x0.to(device)
        new._test = None if self._test is None else (self._test[0].to(device), self._test[1].to(device))
        new.worker_ids, new.sizes = self.worker_ids.to(device), self.sizes.to(device)
        new._L_cache = None if self._L_cache is None else self._L_cache.to(device)
        new._cached_losses = None
        new._build_oracles()
        return new

    # -- helpers ---------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (
            f"TorchModelProblem({self.name}: d={self.dim}, workers {self.worker_ids.tolist()} of "
            f"{self.total_workers}, m={self.m} each, split={self.split}, batching={self.worker_batching})"
        )

    def _check_model(self) -> None:
        """One small forward/backward at x^0, so that shape errors surface here, clearly."""
        b = min(2, self.m)
        try:
            with torch.no_grad():
                inputs, targets = self._chunk(0, b, rows=slice(0, 1))
                out = self._batch_loss(self._unflatten(self._x0), inputs[0], targets[0])
        except Exception as err:
            raise ConfigError(
                f"{self.name}: the model and loss fail on a batch of training inputs of shape "
                f"{tuple(self._x.shape[2:])} ({type(err).__name__}: {err})"
            ) from err
        if out.dim() != 0:
            raise ConfigError(
                f"{self.name}: loss returned shape {tuple(out.shape)}, must be a scalar batch mean"
            )

    def _unflatten(self, x: Tensor) -> dict[str, Tensor]:
        return {n: t.view(s) for n, t, s in zip(self._names, x.split(self._numels), self._shapes)}

    def _flat_point(self, x: Tensor) -> Tensor:
        if x.shape != (self.dim,):
            raise ConfigError(f"{self.name}: x has shape {tuple(x.shape)}, must be ({self.dim},)")
        return x.detach().to(device=self.device, dtype=self.dtype)

    def _apply(self, batch: Tensor) -> Tensor:
        """Model inputs from stored samples (N, ...): the transform, then floats cast to ``dtype``."""
        out = self._transform(batch) if self._transform is not None else batch
        return out.to(self.dtype) if out.is_floating_point() and out.dtype != self.dtype else out

    def _prepare(self, inputs: Tensor) -> Tensor:
        """:meth:`_apply` on a (n, b, ...) batch (flattened to (n b, ...) and back)."""
        n, b = inputs.shape[:2]
        out = self._apply(inputs.reshape(n * b, *inputs.shape[2:]))
        return out.reshape(n, b, *out.shape[1:])

    def _chunk(self, start: int, stop: int, rows: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """Local samples [start, stop) of the hosted workers ``rows``: ((n, c, ...), (n, c, ...))."""
        return self._prepare(self._x[rows, start:stop]), self._y[rows, start:stop]

    def _gather(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The samples idx[i, j] of every hosted worker i: ((n, b, ...), (n, b, ...))."""
        if idx.dim() != 2 or idx.shape[0] != self.n_workers:
            raise ConfigError(f"{self.name}: idx has shape {tuple(idx.shape)}, must be ({self.n_workers}, b)")
        if idx.shape[1] == 0:
            raise ConfigError(f"{self.name}: idx has no samples (b == 0), must have b >= 1")
        if idx.dtype not in (torch.int64, torch.int32):
            raise ConfigError(f"{self.name}: idx has dtype {idx.dtype}, must be an integer tensor")
        idx = idx.to(device=self.device, dtype=torch.int64)
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.m:
            raise ConfigError(f"{self.name}: idx spans [{lo}, {hi}], local indices must lie in [0, {self.m})")
        rows = torch.arange(self.n_workers, device=self.device)[:, None]
        return self._prepare(self._x[rows, idx]), self._y[rows, idx]

    def _batch_loss(self, params: dict[str, Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
        """Mean loss of one worker's batch (batch norm with this batch's statistics)."""
        return self._loss(functional_call(self._train_model, params, (inputs,)), targets)

    def _flatten_grads(self, grads: dict[str, Tensor], rows: int) -> Tensor:
        return torch.cat([grads[n].reshape(rows, -1) for n in self._names], dim=1)

    def _worker_grads(
        self, x: Tensor, inputs: Tensor, targets: Tensor, full: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Gradients (n, d) and values (n,) of each hosted worker's batch loss at x.

        ``full``: a chunk of a full local pass (large batches), where "auto" loops over workers.
        """
        params = self._unflatten(x)
        n = inputs.shape[0]
        mode = self.worker_batching
        if mode == "vmap" or (mode == "auto" and not full):
            grads, values = self._vgrad_value(params, inputs, targets)
            return self._flatten_grads(grads, n), values.detach()
        out = torch.empty(n, self.dim, dtype=self.dtype, device=self.device)
        values = torch.empty(n, dtype=self.dtype, device=self.device)
        for r in range(n):  # worker_batching="loop": one ordinary batch per worker
            grads, values[r] = self._grad_value(params, inputs[r], targets[r])
            out[r] = self._flatten_grads(grads, 1)[0]
        return out, values

    def _worker_losses(self, x: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
        params = self._unflatten(x)
        with torch.no_grad():
            if self.worker_batching != "loop":
                return self._vloss(params, inputs, targets)
            return torch.stack([self._batch_loss(params, inputs[r], targets[r]) for r in range(len(inputs))])

    def _chunks(self, total: int, size: int) -> list[tuple[int, int]]:
        return [(s, min(total, s + size)) for s in range(0, total, size)]

    # -- oracles -----------------------------------------------------------------------------------
    def local_grads(self, x: Tensor) -> Tensor:
        """(n, d): grad f_i(x), accumulated over fixed chunks of ``chunk_size`` local samples."""
        x = self._flat_point(x)
        grads, losses = None, None
        for start, stop in self._chunks(self.m, self.chunk_size):
            g, v = self._worker_grads(x, *self._chunk(start, stop), full=True)
            w = (stop - start) / self.m
            if grads is None:
                grads, losses = (g, v) if w == 1.0 else (g * w, v * w)
            else:
                grads.add_(g, alpha=w)
                losses.add_(v, alpha=w)
        self._cached_losses = (x.clone(), losses)
        return grads

    def local_losses(self, x: Tensor) -> Tensor:
        """(n,): f_i(x) (reused from the last ``local_grads`` call at the same x)."""
        x = self._flat_point(x)
        cached = self._cached_losses
        if cached is not None and torch.equal(cached[0], x):
            return cached[1].clone()
        total = torch.zeros(self.n_workers, dtype=self.dtype, device=self.device)
        for start, stop in self._chunks(self.m, self.chunk_size):
            total.add_(self._worker_losses(x, *self._chunk(start, stop)), alpha=(stop - start) / self.m)
        return total

    def minibatch_grads(self, x: Tensor, idx: Tensor) -> Tensor:
        """(n, d): gradient of each worker's loss on its samples idx[i] (one batch, mean)."""
        return self._worker_grads(self._flat_point(x), *self._gather(idx))[0]

    def minibatch_grad_diffs(self, x_new: Tensor, x_old: Tensor, idx: Tensor) -> Tensor:
        """(n, d): grad f_B(x_new) - grad f_B(x_old) for each worker's batch B = idx[i].

        VR-MARINA (Algorithm 2, line 8): the same samples, gathered and transformed once, at both
        points; two vectorised gradient calls.
        """
        inputs, targets = self._gather(idx)
        g_new = self._worker_grads(self._flat_point(x_new), inputs, targets)[0]
        return g_new.sub_(self._worker_grads(self._flat_point(x_old), inputs, targets)[0])

    # -- evaluation ----------------------------------------------------------------------------------
    def _eval_buffers(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Batch-norm population statistics at x, from the hosted training data (train mode, no grad)."""
        buffers: dict[str, Tensor] = {}
        if not self._bn_prefixes:
            return buffers
        for prefix in self._bn_prefixes:
            mod = self._eval_model.get_submodule(prefix)
            p = f"{prefix}." if prefix else ""
            buffers[p + "running_mean"] = torch.zeros_like(mod.running_mean)
            buffers[p + "running_var"] = torch.ones_like(mod.running_var)
            buffers[p + "num_batches_tracked"] = torch.zeros_like(mod.num_batches_tracked)
        inputs = self._x[:, : self.metric_samples].reshape(-1, *self._x.shape[2:])
        self._eval_model.train()
        with torch.no_grad():
            for start, stop in self._chunks(len(inputs), self.eval_chunk_size):
                functional_call(self._eval_model, (params, buffers), (self._apply(inputs[start:stop]),))
        self._eval_model.eval()
        return buffers

    def _evaluate(
        self, state: tuple[dict, dict], inputs: Tensor, targets: Tensor
    ) -> tuple[float, float | None]:
        """Mean loss and accuracy (None unless integer class labels) of the eval-mode model."""
        loss_sum, correct = 0.0, 0
        classify = targets.dim() == 1 and not targets.is_floating_point()
        self._eval_model.eval()
        with torch.no_grad():
            for start, stop in self._chunks(len(inputs), self.eval_chunk_size):
                out = functional_call(self._eval_model, state, (self._apply(inputs[start:stop]),))
                loss_sum += float(self._loss(out, targets[start:stop])) * (stop - start)
                if classify:
                    correct += int((out.argmax(dim=1) == targets[start:stop]).sum())
        count = len(inputs)
        return loss_sum / count, (correct / count if classify else None)

    def extra_metrics(self, x: Tensor) -> dict[str, float]:
        """train_loss, train_acc (hosted training data) and test_acc, the model in eval mode.

        Batch-norm statistics are recomputed at x first (see module doc). train_* use the first
        ``metric_samples`` samples of every hosted worker (all by default); accuracies only for
        integer class labels, test_acc only with a test set. In a distributed run each rank
        reports its hosted workers' train metrics (equal m: the mean over workers is global).
        """
        params = self._unflatten(self._flat_point(x))
        state = (params, self._eval_buffers(params))
        inputs = self._x[:, : self.metric_samples].reshape(-1, *self._x.shape[2:])
        targets = self._y[:, : self.metric_samples].reshape(-1, *self._y.shape[2:])
        train_loss, train_acc = self._evaluate(state, inputs, targets)
        metrics = {"train_loss": train_loss}
        if train_acc is not None:
            metrics["train_acc"] = train_acc
        if self._test is not None:
            test_acc = self._evaluate(state, *self._test)[1]
            if test_acc is not None:
                metrics["test_acc"] = test_acc
        return metrics

    # -- back to a module ------------------------------------------------------------------------------
    def load_into(self, model: nn.Module, x: Any) -> nn.Module:
        """Write the point x (a (d,) tensor, or a :class:`marina.Result`, whose ``x`` is taken) into
        ``model`` in place and return it.

        ``model`` must have the problem's parameters (the names and shapes of
        ``named_parameters()``, in order), e.g. the module the problem was built from; values are
        cast to each parameter's dtype and device. Batch-norm running statistics (with
        ``num_batches_tracked``) are set to the population statistics at x recomputed from the
        hosted training data, as :meth:`extra_metrics` uses them, so ``model.eval()`` predicts as
        ``test_acc`` measured. The module's train/eval mode is left as it was.
        """
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model is a {type(model).__name__}, must be a torch.nn.Module")
        point = getattr(x, "x", x)
        if not isinstance(point, Tensor):
            raise ConfigError(f"x is a {type(x).__name__}, must be a ({self.dim},) tensor or a marina.Result")
        params = self._unflatten(self._flat_point(point))
        theirs = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
        ours = [(n, tuple(s)) for n, s in zip(self._names, self._shapes)]
        if theirs != ours:
            count = f"{len(theirs)} vs {len(ours)} parameters"
            diff = next((f"{a} vs {b}" for a, b in zip(theirs, ours) if a != b), count)
            raise ConfigError(
                f"{self.name}: model's parameters (name, shape) differ from the problem's ({diff}); "
                "load into a module of the architecture the problem was built from"
            )
        buffers = self._eval_buffers(params)
        own = dict(model.named_buffers())
        with torch.no_grad():
            for (_, p), value in zip(model.named_parameters(), params.values()):
                p.copy_(value)
            for key, value in buffers.items():
                if key in own:
                    own[key].copy_(value)
        return model

    def model_at(self, x: Any) -> nn.Module:
        """A new module (the given model's architecture, as on this problem's device) holding x and
        the batch-norm statistics at x (:meth:`load_into`), in eval mode."""
        return self.load_into(copy.deepcopy(self._template), x).eval()

    # -- smoothness ------------------------------------------------------------------------------------
    def estimate_smoothness(
        self, x: Tensor | None = None, samples: int = 256, iterations: int = 20
    ) -> Tensor:
        """(n,): |largest Hessian eigenvalue| of each worker's loss on its first ``samples`` samples at x.

        Power iteration with Hessian-vector products (reverse-over-reverse: ``vjp`` of ``grad``,
        the graph built once per worker and reused; the Hessian is symmetric, so v^T H = (H v)^T),
        start vector keyed by (seed, "smoothness"). A local curvature at one point: a heuristic
        scale for stepsizes, not the global L of the theory. One loop over workers (not a hot path).
        """
        x = self._x0 if x is None else self._flat_point(x)
        if samples < 1 or iterations < 1:
            raise ConfigError(f"samples == {samples}, iterations == {iterations}, both must be >= 1")
        b = min(samples, self.m)
        inputs, targets = self._chunk(0, b)
        v0 = Randomness(self.seed, "smoothness", 0, self.worker_ids.cpu()).uniform(self.dim) - 0.5
        out = torch.empty(self.n_workers, dtype=torch.float64)
        for r in range(self.n_workers):
            flat_loss = lambda z, r=r: self._batch_loss(self._unflatten(z), inputs[r], targets[r])
            _, hvp_fn = vjp(grad(flat_loss), x)
            hvp = lambda v, f=hvp_fn: f(v)[0]
            v = v0[r].to(device=self.device, dtype=self.dtype)
            v = v / v.norm()
            lam = 0.0
            for _ in range(iterations):
                hv = hvp(v)
                lam = float(v @ hv)
                norm = hv.norm()
                if not math.isfinite(float(norm)) or float(norm) == 0.0:
                    break
                v = hv / norm
            out[r] = abs(lam)
        return out

    def _constants(self) -> Tensor:
        if self._smoothness is None:
            raise ConfigError(
                f"{self.name}: the smoothness constants (L_i, L, L_avg, L_f) of a neural network are "
                "unknown, so theory default stepsizes cannot be computed: pass stepsize=... (e.g. "
                "stepsize=0.1), or build the problem with smoothness=L or smoothness='estimate'"
            )
        if self._L_cache is None:
            if self._smoothness == "estimate":
                self._L_cache = self.estimate_smoothness().to(self.device)
            else:
                self._L_cache = torch.full(
                    (self.n_workers,), float(self._smoothness), dtype=torch.float64, device=self.device
                )
        return self._L_cache

    @property
    def L_i(self) -> Tensor:
        """Given (``smoothness=L``) or estimated per worker; unknown by default (raises)."""
        return self._constants()

    @property
    def L_avg(self) -> float:
        """Taken as max_i L_i (no per-sample constants are known for a network)."""
        return float(self._constants().max())

    @property
    def L_f(self) -> float:
        """Taken as max_i L_i (an upper bound of the smoothness of f when L_i are valid)."""
        return float(self._constants().max())

    def initial_point(self) -> Tensor:
        """x^0: the model's weights (or their keyed initialisation with ``init_seed``), flattened."""
        return self._x0.clone()
