"""Local launches of torch.distributed jobs, for tests and benchmarks (real jobs use torchrun)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["close_group", "free_port", "local_launch", "rank_environ", "run_ranks"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def rank_environ(
    rank: int, world_size: int, port: int, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """torchrun's environment for rank ``rank`` of a single-node job on 127.0.0.1:``port``
    (``base``, default ``os.environ``, plus RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT; on Linux gloo is kept on the loopback interface ``lo``)."""
    env = dict(os.environ if base is None else base)
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def local_launch(
    argv: Sequence[str],
    world_size: int,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    **popen: Any,
) -> list[subprocess.Popen]:
    """Start ``world_size`` processes running ``argv`` on this machine, each with torchrun's
    environment (:func:`rank_environ`), talking over the loopback interface only. For tests
    and benchmarks; jobs should use torchrun.

    ``popen`` goes to :class:`subprocess.Popen` (a callable value is called with the rank, e.g.
    ``stdout=lambda r: open(f"rank{r}.log", "w")``). Returns the processes, rank order.
    """
    port = free_port() if port is None else int(port)
    procs = []
    for rank in range(world_size):
        kwargs = {k: (v(rank) if callable(v) else v) for k, v in popen.items()}
        procs.append(subprocess.Popen(list(argv), env=rank_environ(rank, world_size, port, env), **kwargs))
    return procs


def run_ranks(
    argv: Sequence[str], world_size: int, *, timeout: float = 300.0, env: Mapping[str, str] | None = None
) -> None:
    """:func:`local_launch` ``argv`` on ``world_size`` ranks (one intra-op thread each) and wait;
    AssertionError with the end of a failing rank's stderr if any rank exits non-zero."""
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1")
    procs = local_launch(argv, world_size, env=env, stderr=subprocess.PIPE)
    failures = []
    for rank, p in enumerate(procs):
        _, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            failures.append(f"rank {rank} exited with {p.returncode}:\n{err.decode()[-3000:]}")
    if failures:
        raise AssertionError("\n".join(failures))


def close_group() -> None:
    """End a launched rank: free what still holds the process group (reference cycles, e.g. DDP
    models) while the interpreter is alive, wait for every rank, destroy the group. Gloo work
    released at interpreter teardown instead can abort the process ("terminate called without an
    active exception", about one run in eight of the DDP hook test)."""
    import gc

    import torch.distributed as dist

    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
