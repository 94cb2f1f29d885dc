"""Executing one configuration on torch.distributed ranks (``marina run --backend torch-distributed``).

Every rank runs the method on its block of workers; rank 0 writes the results directory, the
same files as a simulated run, with two extra history columns, ``wire_bytes`` and
``payload_bytes`` (see :mod:`marina.network.torch_distributed`). Checkpoints are per rank
(``runs/<id>/checkpoint.rank<r>-of-<W>.pt``, since every rank holds its own workers' state); a
run resumes only if every rank holds a checkpoint of the same round, otherwise all start afresh
(the keyed randomness makes the result the same).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import torch

from marina.experiments import results
from marina.experiments.config import RunConfig
from marina.experiments.execute import execute
from marina.experiments.loading import load_problem
from marina.network.launch import DEFAULT_TIMEOUT_S, Session, init
from marina.network.torch_distributed import DistributedError, TorchDistributedNetwork
from marina.progress import ProgressDisplay

__all__ = ["execute_distributed"]


def _checkpoint(
    out: str | os.PathLike | None, run_id: str, every: int, session: Session, net: TorchDistributedNetwork
) -> dict[str, Any]:
    """Per-rank checkpoint arguments for :func:`marina.run` and ``resumed``: resume only if every
    rank can."""
    if out is None or not every:
        return {}
    folder = results.run_dir(out, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"checkpoint.rank{session.rank}-of-{session.world_size}.pt"
    progress = -1
    if path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            progress = int(state["method_state"]["k"])
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is not resumed
            progress = -2
    # gather takes one row per hosted worker: every worker of the rank reports its round
    rows = net.gather(torch.full((net.n_local, 1), progress, dtype=torch.int64)).reshape(-1)
    everyone = rows[:: net.n_local].tolist()
    if len(set(everyone)) != 1 or everyone[0] < -1:
        if session.rank == 0 and any(p != -1 for p in everyone):
            print(
                f"torch-distributed: the ranks' checkpoints disagree (rounds {everyone}); starting afresh",
                file=sys.stderr,
            )
        with contextlib.suppress(OSError):
            path.unlink()
        return {"checkpoint_path": str(path), "checkpoint_every": int(every)}
    return {"checkpoint_path": str(path), "checkpoint_every": int(every), "resumed": everyone[0] >= 0}


def execute_distributed(
    config: RunConfig,
    out: str | os.PathLike | None,
    *,
    checkpoint_every: int,
    timeout_s: float | None = None,
    quiet: bool = False,
    verbose: bool = False,
) -> dict[str, Any] | None:
    """Run ``config`` on this rank's workers (call it on every rank of a torchrun job).

    Rank 0 writes ``out`` (when given) and returns the run's record, the other ranks return
    None. Every rank must pass the same configuration and options (checked). A failed run
    raises on every rank that knows, except that rank 0 returns the failed record (with its
    traceback) when the failure is its own and not a peer's.

    Args:
        config: the run; the same on every rank.
        out: the results directory written by rank 0 (None: write nothing).
        checkpoint_every: checkpoint every this many rounds (0: never).
        timeout_s: the collectives' timeout in seconds (default: the launch default).
        quiet: no progress bar (rank 0 shows one on a terminal otherwise).
        verbose: torch's own log lines of the rendezvous on stderr
            (:func:`marina.network.launch.init`).
    """
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    session = init(config.device, timeout_s=timeout_s, verbose=verbose)
    try:
        net = session.network(config.workers, config.seed)
        net.agree(
            f"{config.run_id} out={out is not None} checkpoint_every={checkpoint_every}",
            f"experiment or output options (run id {config.run_id}: {config.describe()})",
        )
        hosted = session.hosted_workers(config.workers)
        problem = load_problem(config.problem, config.workers, config.split, session.device, hosted)
        m = float(net.gather(problem.sizes.reshape(-1, 1)).double().mean())
        ckpt = _checkpoint(out, config.run_id, checkpoint_every, session, net)
        resumed = bool(ckpt.pop("resumed", False))
        lead = session.rank == 0
        display = ProgressDisplay(enabled=False if (quiet or not lead) else None)
        display.add(config.run_id, f"{config.describe()} [{session.world_size} ranks]", config.iterations)
        try:
            record, _ = execute(
                config,
                out,
                checkpoint_every=None,
                progress=display.callback(config.run_id),
                problem=problem,
                backend="torch-distributed",
                write=lead,
                m=m,
                resumed=resumed,
                run_kwargs={"network": net, **ckpt},
            )
        finally:
            display.close()
        if record["status"] == "failed":
            if not lead:
                raise DistributedError(str(record.get("message", "")))
            return record
        if ckpt:
            with contextlib.suppress(OSError):
                Path(ckpt["checkpoint_path"]).unlink()
        if lead and out is not None:
            results.rebuild(out)
        return record if lead else None
    finally:
        session.close()
