"""Running many configurations: in this process or a pool of worker processes, resumably."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from marina.experiments import results
from marina.experiments.config import DEFAULT_CHECKPOINT_EVERY, RunConfig
from marina.experiments.execute import execute, torch_threads
from marina.experiments.loading import ProblemCache
from marina.progress import ProgressDisplay

__all__ = ["SweepSummary", "run_sweep"]


@dataclass
class SweepSummary:
    """What a sweep did: run ids by outcome.

    Attributes:
        total: the configurations of the sweep.
        skipped: run ids already complete in the results directory (not run again).
        finished: run ids that ran to the end.
        diverged: run ids that stopped on a non-finite or exploding loss.
        failed: run id -> error message of the runs that raised.
        interrupted: the sweep was stopped (Ctrl-C) before every run completed.
    """

    total: int
    skipped: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def complete(self) -> int:
        return len(self.skipped) + len(self.finished) + len(self.diverged)


_PROGRESS_INTERVAL = 0.2


def _worker_main(
    tasks: Any,
    messages: Any,
    out: str,
    checkpoint_every: int | None,
    threads: int,
    parent: int,
    progress: bool,
    loggers: list[str] | None = None,
) -> None:
    """A sweep worker process: run configurations from ``tasks`` until the None sentinel.

    Exits at once if the parent process disappears (e.g. killed with SIGKILL); ignores SIGINT,
    since the parent owns Ctrl-C and terminates its workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watchdog() -> None:
        while True:
            time.sleep(0.25)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()
    torch.set_num_threads(max(1, threads))
    problems = ProblemCache(size=1)
    while True:
        item = tasks.get()
        if item is None:
            return
        config = RunConfig.from_dict(item)
        run_id = config.run_id
        messages.put(("start", run_id, os.getpid()))
        callback = None
        if progress:
            last = [0.0]

            def callback(row: Mapping[str, Any], total: int, run_id: str = run_id, last: list = last) -> None:
                now = time.monotonic()
                if now - last[0] >= _PROGRESS_INTERVAL:
                    last[0] = now
                    messages.put(("progress", run_id, int(row["iteration"]), float(row["grad_norm_sq"])))

        try:
            problem = problems.get(config.problem, config.workers, config.split, config.device)
            record, _ = execute(
                config,
                out,
                checkpoint_every=checkpoint_every,
                progress=callback,
                problem=problem,
                loggers=loggers,
            )
            messages.put(("done", run_id, record["status"], record.get("message", "")))
        except Exception as exc:  # noqa: BLE001 - ConfigError re-raised by execute, or a failure to load
            messages.put(("done", run_id, "failed", f"{type(exc).__name__}: {exc}"))


def run_sweep(
    configs: Sequence[RunConfig],
    out: str | os.PathLike,
    *,
    jobs: int = 1,
    checkpoint_every: int | None = DEFAULT_CHECKPOINT_EVERY,
    quiet: bool = False,
    display: ProgressDisplay | None = None,
    rebuild_every: float = 5.0,
    cache: ProblemCache | None = None,
    threads: int | None = None,
    loggers: list[str] | None = None,
) -> SweepSummary:
    """Run every configuration not yet complete in ``out``, ``jobs`` at a time.

    ``jobs`` = 1 runs in this process; more start that many worker processes (spawned, one
    torch thread each unless cores are left over). The combined ``results.parquet`` and
    ``runs.json`` are rebuilt every ``rebuild_every`` seconds while runs complete, and at the
    end, also when interrupted (Ctrl-C): rerunning the same sweep then finishes the rest.

    Args:
        configs: the validated configurations (:func:`validate`).
        out: the results directory (created if needed).
        jobs: runs at a time (1: in this process; more: that many worker processes).
        checkpoint_every: each run checkpoints every this many rounds (None or 0: never).
        quiet: show no progress bars.
        display: the progress display to use (default: a new one, on a terminal only).
        rebuild_every: seconds between rebuilds of ``results.parquet`` and ``runs.json``.
        cache: problems already built (e.g. the one :func:`validate` filled), for in-process runs.
        threads: torch threads per worker process (default: the cores divided among the jobs)
            and, if given, for in-process runs.
        loggers: tracker names (:mod:`marina.trackers`) every run also logs to, under ``out``.

    Returns:
        The :class:`SweepSummary`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = results.completed_run_ids(out)
    summary = SweepSummary(total=len(configs))
    todo = []
    for c in configs:
        (summary.skipped.append(c.run_id) if c.run_id in done else todo.append(c))
    display = display or ProgressDisplay(enabled=None if not quiet else False)
    if todo:
        display.set_header("sweep", len(configs), unit="runs", done=len(summary.skipped))
    last_rebuild = [time.monotonic()]

    def finished(cfg: RunConfig, status: str, message: str) -> None:
        if status == "finished":
            summary.finished.append(cfg.run_id)
        elif status == "diverged":
            summary.diverged.append(cfg.run_id)
            display.message(
                f"diverged: {cfg.describe()} [{cfg.run_id}]" + (f": {message}" if message else "")
            )
        else:
            summary.failed[cfg.run_id] = message
            display.message(f"failed: {cfg.describe()} [{cfg.run_id}]: {message}")
        display.advance_header()
        if time.monotonic() - last_rebuild[0] >= rebuild_every:
            results.rebuild(out)
            last_rebuild[0] = time.monotonic()

    try:
        if not todo:
            pass
        elif jobs <= 1 or len(todo) == 1:
            with torch_threads(threads):
                _run_inline(todo, out, checkpoint_every, display, finished, cache or ProblemCache(), loggers)
        else:
            _run_pool(todo, out, min(jobs, len(todo)), checkpoint_every, display, finished, threads, loggers)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        display.close()
        if todo or not (out / results.RESULTS_FILE).exists():
            results.rebuild(out)
    return summary


def _run_inline(todo, out, checkpoint_every, display, finished, cache: ProblemCache, loggers=None) -> None:
    for cfg in todo:
        display.add(cfg.run_id, cfg.describe(), cfg.iterations)
        try:
            problem = cache.get(cfg.problem, cfg.workers, cfg.split, cfg.device)
            callback = display.callback(cfg.run_id)
            record, _ = execute(
                cfg,
                out,
                checkpoint_every=checkpoint_every,
                progress=callback,
                problem=problem,
                loggers=loggers,
            )
            finished(cfg, record["status"], record.get("message", ""))
        finally:
            display.remove(cfg.run_id)


def _run_pool(
    todo, out, jobs, checkpoint_every, display, finished, threads: int | None, loggers=None
) -> None:
    ctx = multiprocessing.get_context("spawn")
    tasks, messages = ctx.Queue(), ctx.Queue()
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    by_id = {c.run_id: c for c in todo}
    for c in todo:
        tasks.put(c.to_dict())
    for _ in range(jobs):
        tasks.put(None)
    args = (tasks, messages, str(out), checkpoint_every, threads, os.getpid(), display.enabled, loggers)
    procs: dict[int, Any] = {}
    running: dict[int, str] = {}  # pid -> run id

    def spawn() -> None:
        p = ctx.Process(target=_worker_main, args=args, daemon=True)
        p.start()
        procs[p.pid] = p

    for _ in range(jobs):
        spawn()
    pending = set(by_id)
    try:
        while pending:
            try:
                msg = messages.get(timeout=0.5)
            except queue.Empty:
                for pid, p in list(procs.items()):
                    if p.is_alive():
                        continue
                    del procs[pid]
                    run_id = running.pop(pid, None)
                    if p.exitcode == 0:
                        continue  # took its sentinel
                    if run_id is not None:  # died with a run in hand (killed, out of memory)
                        pending.discard(run_id)
                        display.remove(run_id)
                        finished(by_id[run_id], "failed", f"worker process died (exit code {p.exitcode})")
                    if pending:
                        spawn()
                if pending and not procs:
                    raise RuntimeError(
                        f"every sweep worker process exited with {len(pending)} runs left"
                    ) from None
                continue
            kind, run_id = msg[0], msg[1]
            if kind == "start":
                running[msg[2]] = run_id
                cfg = by_id[run_id]
                display.add(run_id, cfg.describe(), cfg.iterations)
            elif kind == "progress":
                display.update(run_id, msg[2], msg[3])
            elif kind == "done":
                for pid, rid in list(running.items()):
                    if rid == run_id:
                        del running[pid]
                pending.discard(run_id)
                display.remove(run_id)
                finished(by_id[run_id], msg[2], msg[3])
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
        for p in procs.values():
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        tasks.cancel_join_thread()
        messages.cancel_join_thread()
