"""Executing one configuration into a results directory (the files: :mod:`.results`)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from marina import __version__, trackers
from marina.errors import CheckpointError, ConfigError, DamagedFileWarning
from marina.experiments import results
from marina.experiments.config import DEFAULT_CHECKPOINT_EVERY, RunConfig
from marina.experiments.loading import load_problem
from marina.network.torch_distributed import DistributedError
from marina.problems.base import Problem
from marina.rng import GENERATOR_VERSION
from marina.runner import run

__all__ = ["execute", "torch_threads"]


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` torch intra-op threads (None: unchanged), then restore.

    Small problems run fastest on one thread, and far slower with several on a busy machine.

    Args:
        threads: torch intra-op threads inside the block (None or 0: unchanged).
    """
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _versions(device: str) -> dict[str, Any]:
    return {
        "marina_version": __version__,
        "generator_version": GENERATOR_VERSION,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "host": platform.node(),
        "device": device,
    }


def execute(config: RunConfig, out: str | os.PathLike | None, **options: Any):
    """Run one configuration with :func:`marina.run` and write its files into ``out``.

    The run's ``run.json`` is written with status ``running`` when it starts, then its history
    and final record when it ends (``finished``, ``diverged``; ``failed`` with the error if
    :func:`marina.run` raised). With ``checkpoint_every`` > 0 the run checkpoints into its own
    folder and a later call resumes from there; the checkpoint is removed once the run
    completes. ``progress(row, iterations)`` is called at every log point; ``problem`` (built
    with :func:`load_problem`) saves building it again. ``write=False`` (e.g. on every
    torch.distributed rank but 0) runs without touching ``out``. Other backends pass their
    ``problem`` (the workers this process hosts), ``m`` (the mean local data-set size over all
    workers, default: over ``problem.sizes``) and extra :func:`marina.run` arguments
    (``run_kwargs``, e.g. ``network``; ``resumed=True`` when those resume a checkpoint).
    ``loggers``: tracker names (:mod:`marina.trackers`), writing under ``out`` (else the working
    directory) with the run id as run name; not on processes that do not write.

    Options (keywords): ``checkpoint_every``, ``progress``, ``problem``, ``backend``
    (``"simulated"``), ``write`` (True), ``m``, ``run_kwargs``, ``resumed``, ``loggers``. A
    simulated run written into ``out`` holds the run's lock (:func:`results.run_lock`)
    meanwhile: a second process asked for the same run waits, then returns the record the first
    one wrote instead of computing it again.

    Args:
        config: the run.
        out: the results directory (None: write nothing).
        **options: the options above.

    Returns:
        (record, result): the run's record (as in ``runs.json``) and the :class:`marina.Result`
        (None if it failed, or if another process computed it meanwhile).
    """
    if out is None or not options.get("write", True) or options.get("backend", "simulated") != "simulated":
        return _execute(config, out, **options)
    with results.run_lock(out, config.run_id) as waited:
        done = results.completed_record(out, config.run_id) if waited else None
        if done is not None:
            return done, None
        return _execute(config, out, **options)


def _execute(
    config: RunConfig,
    out: str | os.PathLike | None,
    *,
    checkpoint_every: int | None = DEFAULT_CHECKPOINT_EVERY,
    progress: Callable[[Mapping[str, Any], int], None] | None = None,
    problem: Problem | None = None,
    backend: str = "simulated",
    write: bool = True,
    m: float | None = None,
    run_kwargs: Mapping[str, Any] | None = None,
    loggers: Any = None,
    resumed: bool = False,
):
    """The body of :func:`execute` (the same options), without the run's lock."""
    out_path = Path(out) if out is not None else None
    writing = write and out_path is not None
    record: dict[str, Any] = {
        "run_id": config.run_id,
        "status": "running",
        "config": config.to_dict(),
        "backend": backend,
        **_versions(config.device),
        "started_at": _now(),
    }
    if problem is None:
        problem = load_problem(config.problem, config.workers, config.split, config.device)
    record["m"] = float(problem.sizes.double().mean()) if m is None else float(m)
    record["d"] = int(problem.dim)
    ckpt = None
    if writing:
        folder = results.run_dir(out_path, config.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        # temporary files left by a process killed mid-write (ours, and marina.run's checkpoint)
        for stale in [*folder.glob(".*.tmp"), *folder.glob(f"{results.CHECKPOINT_FILE}.tmp-*")]:
            with contextlib.suppress(OSError):
                stale.unlink()
        if checkpoint_every:
            ckpt = results.checkpoint_path(out_path, config.run_id)
            if ckpt.exists():
                record["resumed"] = True
        elif resumed:  # another backend's checkpoints (``run_kwargs``), found by its caller
            record["resumed"] = True
        results.write_run(out_path, record)
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {**config.params, **(run_kwargs or {})}
    if config.link is not None:
        kwargs["link"] = config.link
    if ckpt is not None:
        kwargs.update(checkpoint_path=str(ckpt), checkpoint_every=int(checkpoint_every))
    if progress is not None:
        kwargs["progress"] = progress
    if loggers and write:
        kwargs["loggers"] = trackers.make(
            loggers, root=out_path, run_name=trackers.run_name(config.to_dict(), config.run_id)
        )

    def attempt():
        return run(
            method=config.method,
            compressor=config.compressor,
            problem=problem,
            workers=config.workers,
            iterations=config.iterations,
            seed=config.seed,
            log_every=config.log_every,
            **kwargs,
        )

    try:
        try:
            result = attempt()
        except CheckpointError as exc:  # our own in-flight file, damaged or stale: redo the run
            if ckpt is None or not writing:
                raise
            warnings.warn(DamagedFileWarning(f"{exc}; the run starts again from round 0"), stacklevel=2)
            ckpt.unlink(missing_ok=True)
            record.pop("resumed", None)
            result = attempt()
    except Exception as exc:
        record.update(
            status="failed",
            message=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            finished_at=_now(),
            wall_s=time.perf_counter() - t0,
        )
        if writing:  # the disk that failed the run may refuse the record too: then it stays "running"
            with contextlib.suppress(OSError):
                results.write_run(out_path, record)
        # bad input; a peer rank's failure; the file system (read-only, full): stop, resumable
        if isinstance(exc, (ConfigError, DistributedError, OSError)):
            raise
        return record, None
    history = result.history
    last = history.iloc[-1].to_dict() if len(history) else {}
    record.update(
        status=str(result.status),
        params=dict(result.params),
        finished_at=_now(),
        wall_s=time.perf_counter() - t0,
        iterations_done=int(last.get("iteration", 0)),
        final=last,
    )
    message = getattr(result, "message", None)
    if message:
        record["message"] = str(message)
    if writing:
        results.write_run(out_path, record, history)
        if ckpt is not None:
            with contextlib.suppress(OSError):
                ckpt.unlink()
    return results.jsonable(record), result
