"""marina on real processes: one process per rank, each hosting a block of workers.

Launch the way PyTorch jobs are launched::

    torchrun --nproc-per-node 4 -m marina run --backend torch-distributed \\
        --problem a9a --workers 4 --method marina --compressor randk:1 --out results

or call :func:`run` in every process of a torchrun job from Python. Rank r hosts the workers of
:func:`marina.network.torch_distributed.worker_block` and holds only their shards of the data;
the ranks exchange compressed payloads
(:class:`marina.network.torch_distributed.TorchDistributedNetwork`); for the same seed the
history equals the simulation's. Joining the job (torchrun's environment, the process group,
timeouts, gloo or NCCL): :mod:`marina.network.launch`. A rank that dies makes the others stop
with :class:`marina.network.torch_distributed.DistributedError` naming the ranks that stopped
answering: about min(5 s, timeout / 2) after a rank dies, at most 1.5 timeout + 1 s after a rank
hangs. Results directories and per-rank checkpoints of ``marina run``:
:mod:`marina.experiments.distributed`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from marina.compressors.base import CompressorSpec
from marina.errors import ConfigError
from marina.experiments.loading import load_problem
from marina.network.launch import DEFAULT_TIMEOUT_S, ENV_VARS, LaunchEnv, Session, init, launch_env
from marina.network.torch_distributed import DistributedError
from marina.problems.base import Problem, ProblemSpec
from marina.runner import Result
from marina.runner import run as run_on_network

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENV_VARS",
    "DistributedError",
    "LaunchEnv",
    "Session",
    "init",
    "launch_env",
    "run",
]


def run(
    *,
    method: str,
    problem: ProblemSpec,
    workers: int,
    compressor: CompressorSpec = "identity",
    iterations: int = 1000,
    seed: int = 0,
    device: torch.device | str | None = "cpu",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    keep_log: bool = False,
    split: str = "contiguous",
    **kwargs: Any,
) -> Result:
    """:func:`marina.run` on this rank's block of workers; call it in every process of the job.

    ``problem`` is a spec string (built here with only the hosted shards, by
    :func:`marina.experiments.loading.load_problem`) or a Problem object already restricted to
    ``session.hosted_workers(workers)`` (e.g. ``problems.libsvm(..., hosted_workers=...)``).
    Every other argument is :func:`marina.run`'s. Joins the job from the environment (reusing an
    existing process group). Returns the :class:`marina.Result` (the same on every rank, up to
    ``time_s``); ``result.config["network"]`` holds the network's final counters.

    Every rank must start from the same x^0 (``x0``, else ``problem.initial_point()``: a
    :class:`marina.problems.TorchModelProblem` keeps its model's weights, which each process drew
    itself unless seeded): a ConfigError on every rank otherwise.

    Args:
        method: the method's name, as in :func:`marina.run`.
        problem: a spec string (only the hosted shards are built) or a Problem object hosting
            this rank's workers.
        workers: n, the total number of workers (a multiple of the world size).
        compressor: spec string or compressor object, as in :func:`marina.run`.
        iterations: number of communication rounds K.
        seed: keys every random draw; the same on every rank.
        device: where this rank computes (``"cuda"`` picks the GPU of ``LOCAL_RANK``).
        timeout_s: the collectives' timeout in seconds.
        keep_log: record every exchange in ``result.config["exchanges"]``.
        split: how a spec string's rows are split among the workers.
        **kwargs: further :func:`marina.run` arguments (``x0``, ``log_every``, ``stepsize``, ...).
    """
    session = init(device, timeout_s=timeout_s)
    try:
        net = session.network(workers, seed, keep_log=keep_log)
        if isinstance(problem, str):
            problem = load_problem(
                problem, workers, split, device=session.device, hosted=session.hosted_workers(workers)
            )
        _check_same_start(kwargs.get("x0"), problem, session.device)
        result = run_on_network(
            method=method,
            problem=problem,
            workers=workers,
            compressor=compressor,
            iterations=iterations,
            seed=seed,
            network=net,
            **kwargs,
        )
        result.config["network"] = net.counters()
        result.config["world_size"] = session.world_size
        if keep_log:
            result.config["exchanges"] = list(net.exchanges)
        return result
    finally:
        session.close()


def _check_same_start(x0: Tensor | None, problem: Problem, device: torch.device) -> None:
    """All ranks agree on x^0: the min and max over ranks of a 63-bit digest of its bytes are equal."""
    point = torch.as_tensor(x0 if x0 is not None else problem.initial_point())
    data = point.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy().tobytes()
    digest = int.from_bytes(hashlib.sha256(data).digest()[:8], "little") >> 1
    lo = torch.tensor([digest], dtype=torch.int64, device=device)
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if int(lo) != int(hi):
        raise ConfigError(
            "the ranks start from different points x^0 (a model whose weights each process drew "
            "itself?): give every rank the same weights (load one checkpoint, torch.manual_seed before "
            "building the model, or TorchModelProblem(..., init_seed=s)) or pass the same x0"
        )
