"""Joining a torch.distributed job started by torchrun: its environment, the process group.

Environment contract (set by torchrun; :func:`launch_env` checks it): ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; under torchrun's agent store
(``TORCHELASTIC_USE_AGENT_STORE=True``) every rank connects to the agent's store as a client,
otherwise rank 0 hosts it (exactly as ``init_method="env://"`` does).

Backends: gloo when the problem lives on the CPU, NCCL when it lives on CUDA (rank r then uses
``cuda:LOCAL_RANK``). Timeouts: ``timeout_s`` (default :data:`DEFAULT_TIMEOUT_S`) bounds the
rendezvous and every collective: with gloo each collective raises after it; with NCCL
``TORCH_NCCL_BLOCKING_WAIT=1`` makes a collective stuck longer than it raise in Python too, and
``TORCH_NCCL_ASYNC_ERROR_HANDLING=1`` lets the watchdog tear the process down should anything
still block (both set only when not already set; the NCCL path is untested on this project's
CPU-only CI). The network of a session is
:class:`marina.network.torch_distributed.TorchDistributedNetwork`.

Rendezvous: every rank checks in under its RANK in the store before the process group is set up,
so a failed rendezvous names the ranks that arrived twice (a RANK started twice) or never. While
torch's C++ code joins the job its log lines (c10d warnings, C++ stack traces) go to a temporary
file instead of stderr: on a failure they are written to a log file named in the error, or to
stderr with ``verbose=True`` (``marina run --verbose``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from marina.errors import ConfigError
from marina.network.torch_distributed import TorchDistributedNetwork, first_line, worker_block

__all__ = ["DEFAULT_TIMEOUT_S", "ENV_VARS", "LaunchEnv", "Session", "init", "launch_env"]

ENV_VARS: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets in every process and :func:`launch_env` requires."""

DEFAULT_TIMEOUT_S = 300.0
"""Default bound (seconds) on the rendezvous and on any one collective."""
MAX_TIMEOUT_S = 7 * 24 * 3600.0
"""Largest timeout accepted (a week; torch keeps it as an integer count of milliseconds)."""

GRACE_S = 5.0
"""Longest time the store's host waits, after a failed check-in, for the others to read it."""

_LAUNCH_HINT = (
    "launch with torchrun, e.g. `torchrun --nproc-per-node 4 -m marina run --backend "
    "torch-distributed --workers 4 ...`, which sets " + ", ".join(ENV_VARS) + " in every process"
)


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in the job, read from torchrun's environment variables.

    Attributes:
        rank: this process's rank (``RANK``).
        world_size: the number of processes (``WORLD_SIZE``).
        local_rank: this process's rank on its machine (``LOCAL_RANK``; picks its GPU).
        master_addr: the rendezvous host (``MASTER_ADDR``).
        master_port: the rendezvous port (``MASTER_PORT``).
        restart: how many times torchrun restarted the job (``TORCHELASTIC_RESTART_COUNT``).
        agent_store: torchrun's agent hosts the rendezvous store (``TORCHELASTIC_USE_AGENT_STORE``).
    """

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    restart: int = 0
    agent_store: bool = False


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read and check :data:`ENV_VARS` (default: ``os.environ``).

    Args:
        environ: the environment to read (default: ``os.environ``).

    Raises:
        ConfigError: missing variables (all named at once), non-integers, RANK >= WORLD_SIZE,
            LOCAL_RANK >= LOCAL_WORLD_SIZE, a port out of range.
    """
    env = os.environ if environ is None else environ
    missing = [name for name in ENV_VARS if not str(env.get(name, "")).strip()]
    if missing:
        raise ConfigError(
            f"torch-distributed: environment variable(s) {', '.join(missing)} not set; {_LAUNCH_HINT}"
        )

    def integer(name: str, low: int, high: int | None = None) -> int:
        raw = str(env[name]).strip()
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"torch-distributed: {name} == {raw!r}, must be an integer >= {low}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ConfigError(f"torch-distributed: {name} == {value}, must be {bound}")
        return value

    world = integer("WORLD_SIZE", 1)
    rank = integer("RANK", 0)
    if rank >= world:
        raise ConfigError(f"torch-distributed: RANK == {rank}, must be < WORLD_SIZE == {world}")
    local_rank = integer("LOCAL_RANK", 0)
    if str(env.get("LOCAL_WORLD_SIZE", "")).strip():
        local_world = integer("LOCAL_WORLD_SIZE", 1, world)
        if local_rank >= local_world:
            raise ConfigError(
                f"torch-distributed: LOCAL_RANK == {local_rank}, must be < LOCAL_WORLD_SIZE == {local_world}"
            )
    port = integer("MASTER_PORT", 1, 65535)
    restart = integer("TORCHELASTIC_RESTART_COUNT", 0) if env.get("TORCHELASTIC_RESTART_COUNT") else 0
    return LaunchEnv(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        master_addr=str(env["MASTER_ADDR"]).strip(),
        master_port=port,
        restart=restart,
        agent_store=str(env.get("TORCHELASTIC_USE_AGENT_STORE", "")) == "True",
    )


@dataclass
class Session:
    """An initialised process group and what a network needs from it (see :func:`init`).

    Attributes:
        env: this process's :class:`LaunchEnv`.
        backend: the process group's backend (``gloo`` or ``nccl``).
        device: where this rank's tensors live.
        timeout_s: the collectives' timeout in seconds.
        store: the rendezvous store (shared by the networks for their checks).
        owns_group: this session created the process group (and :meth:`close` destroys it).
    """

    env: LaunchEnv
    backend: str
    device: torch.device
    timeout_s: float
    store: Any
    owns_group: bool = True

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    def network(
        self, workers: int, seed: int = 0, *, keep_log: bool = False, exchange_sizes: bool = False
    ) -> TorchDistributedNetwork:
        """A :class:`TorchDistributedNetwork` of ``workers`` workers on this group (checks that
        every rank passes the same ``workers`` and ``seed``); ``exchange_sizes`` as there."""
        return TorchDistributedNetwork(
            workers,
            seed,
            device=self.device,
            timeout_s=self.timeout_s,
            store=self.store,
            keep_log=keep_log,
            exchange_sizes=exchange_sizes,
        )

    def hosted_workers(self, workers: int) -> list[int]:
        """Global ids of the workers this rank hosts (ConfigError if not divisible)."""
        return list(worker_block(workers, self.world_size, self.rank))

    def close(self) -> None:
        """Destroy the process group (if this session created it)."""
        if self.owns_group and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        self.store = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TorchLog:
    """torch's C++ log lines of one rendezvous, captured from file descriptor 2."""

    def __init__(self, rank: int, verbose: bool) -> None:
        self.rank, self.verbose = rank, verbose
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the capture

    def text(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def saved(self) -> str:
        """Where the lines went after a failure, for the error message ("" when none or shown)."""
        text = self.text()
        if not text or self.verbose:
            return ""
        try:
            fd, path = tempfile.mkstemp(prefix=f"marina-rank{self.rank}-", suffix=".log")
            with os.fdopen(fd, "wb") as fh:
                fh.write(text)
        except OSError:
            return ""
        return f" (torch's log: {path})"


@contextlib.contextmanager
def _torch_log(rank: int, verbose: bool) -> Iterator[_TorchLog]:
    """File descriptor 2 into a :class:`_TorchLog` for the block; shown on stderr afterwards
    with ``verbose``."""
    log = _TorchLog(rank, verbose)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 to redirect
        yield log
        return
    os.dup2(log.file.fileno(), 2)
    try:
        yield log
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if verbose:
            with contextlib.suppress(Exception):
                sys.stderr.buffer.write(log.text())
                sys.stderr.flush()
        log.file.close()


def _join(env: LaunchEnv, backend: str, timeout_s: float) -> Any:
    """The store of the job and this rank's process group (ConfigError naming what failed)."""
    timeout = timedelta(seconds=timeout_s)
    where = f"{env.master_addr}:{env.master_port}"
    hint = (
        f"check that all {env.world_size} ranks were started with WORLD_SIZE={env.world_size}, each "
        f"RANK once, and the same MASTER_ADDR:MASTER_PORT, and that the port is free on rank 0's host"
    )
    failed = f"torch-distributed: rank {env.rank} could not complete the rendezvous at {where} within"
    deadline = time.monotonic() + timeout_s
    try:
        store = dist.TCPStore(
            host_name=env.master_addr,
            port=env.master_port,
            world_size=env.world_size,
            is_master=env.rank == 0 and not env.agent_store,
            timeout=timeout,
            wait_for_workers=False,  # the check-in waits, and names who is missing
            multi_tenant=True,
        )
    except Exception as err:  # noqa: BLE001 - every rendezvous failure gets the same explanation
        raise ConfigError(f"{failed} {timeout_s:g} s ({first_line(err)}): {hint}") from None
    checkin = dist.PrefixStore(f"marina/{env.restart}/checkin/", store)
    try:
        wrong = _check_in(checkin, env, deadline)
    except Exception as err:  # noqa: BLE001 - the store went away (rank 0 died)
        raise ConfigError(f"{failed} {timeout_s:g} s ({first_line(err)}): {hint}") from None
    if wrong:
        raise ConfigError(f"{failed} {timeout_s:g} s: {wrong}; {hint}")
    try:
        dist.init_process_group(
            backend, store=store, rank=env.rank, world_size=env.world_size, timeout=timeout
        )
    except Exception as err:  # noqa: BLE001
        late = _arrivals(checkin, env.world_size) if _store_alive(checkin) else ""
        raise ConfigError(
            f"torch-distributed: rank {env.rank} could not set up the {backend} process group at "
            f"{where} within {timeout_s:g} s: {first_line(err)}" + (f"; {late}" if late else "")
        ) from None
    return store


def _check_in(checkin: Any, env: LaunchEnv, deadline: float) -> str:
    """Count this rank's arrival under its RANK, wait (until ``deadline``) for WORLD_SIZE
    arrivals, then "" if every RANK arrived once, else which arrived twice or never."""
    checkin.add(f"rank/{env.rank}", 1)
    arrived = checkin.add("arrived", 1)
    while arrived < env.world_size and time.monotonic() < deadline:
        time.sleep(0.02)
        arrived = checkin.add("arrived", 0)
    wrong = _arrivals(checkin, env.world_size)
    if wrong:  # the store's host (rank 0) stays until every process that came has read it
        read = checkin.add("read", 1)
        grace = time.monotonic() + GRACE_S
        is_host = env.rank == 0 and not env.agent_store
        while is_host and read < checkin.add("arrived", 0) and time.monotonic() < grace:
            time.sleep(0.02)
            read = checkin.add("read", 0)
    return wrong


def _arrivals(checkin: Any, world: int) -> str:
    """Which RANKs arrived more than once or never ("" when each arrived once)."""
    counts = {r: int(checkin.add(f"rank/{r}", 0)) for r in range(world)}
    twice = {r: c for r, c in counts.items() if c > 1}
    never = [r for r, c in counts.items() if c == 0]
    parts = [f"RANK {r} was started {c} times" for r, c in twice.items()]
    if never:
        parts.append(f"rank(s) {never} never arrived (of all {world} ranks)")
    return ", ".join(parts)


def _store_alive(store: Any) -> bool:
    try:
        store.add("arrived", 0)
    except Exception:  # noqa: BLE001
        return False
    return True


def _device(device: torch.device | str | None, backend: str | None, env: LaunchEnv) -> torch.device:
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device == {device!r}, but CUDA is not available on this machine")
        count = torch.cuda.device_count()
        index = env.local_rank if dev.index is None else dev.index
        if index >= count:
            raise ConfigError(
                f"torch-distributed: LOCAL_RANK == {env.local_rank} needs cuda:{index}, but only {count} "
                f"CUDA device(s) are visible; use --nproc-per-node <= {count}"
            )
        dev = torch.device("cuda", index)
    elif dev.type != "cpu":
        raise ConfigError(f"device == {device!r}, must be cpu or cuda[:i] for torch-distributed")
    if backend == "nccl" and dev.type != "cuda":
        raise ConfigError("backend == 'nccl' needs device == 'cuda' (NCCL moves CUDA tensors only)")
    return dev


def init(
    device: torch.device | str | None = "cpu",
    *,
    backend: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
    verbose: bool = False,
) -> Session:
    """Join the job described by torchrun's environment and initialise the process group.

    Args:
        device: ``cpu`` (gloo) or ``cuda`` (NCCL on ``cuda:LOCAL_RANK``); an explicit index is kept.
        backend: ``gloo`` or ``nccl`` (default: by device). gloo with CUDA tensors works but
            copies every message through the CPU.
        timeout_s: bound on the rendezvous (all ranks must join within it) and on each collective.
        environ: the environment to read (default ``os.environ``).
        verbose: show torch's own log lines of the rendezvous on stderr (default: kept in a log
            file, named in the error, when the rendezvous fails; dropped when it succeeds).

    Returns:
        A :class:`Session`; ``session.network(workers, seed)`` builds the network. If a default
        process group already exists (e.g. initialised by the caller), it is reused as is and
        ``close()`` leaves it alone.

    Raises:
        ConfigError: bad environment, device, backend or timeout; ranks that do not join in time.
    """
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, (int, float))
        or not 0 < timeout_s <= MAX_TIMEOUT_S
    ):
        raise ConfigError(f"timeout == {timeout_s!r}, must be a number of seconds in (0, {MAX_TIMEOUT_S:g}]")
    env = launch_env(environ)
    if backend is not None and backend not in ("gloo", "nccl"):
        raise ConfigError(f"backend == {backend!r}, must be 'gloo' or 'nccl'")
    dev = _device(device, backend, env)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if backend == "nccl":
        if not dist.is_nccl_available():
            raise ConfigError("backend 'nccl' is not available in this torch build; use a CUDA build")
        # a collective past the timeout raises in Python (so DistributedError names the ranks)
        # instead of blocking; the watchdog tears the process down if that ever fails
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if dist.is_initialized():
        if dist.get_world_size() != env.world_size or dist.get_rank() != env.rank:
            raise ConfigError(
                f"torch-distributed: the existing process group has rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, but RANK == {env.rank}, WORLD_SIZE == {env.world_size}"
            )
        return Session(env, str(dist.get_backend()), dev, float(timeout_s), None, owns_group=False)
    with _torch_log(env.rank, verbose) as log:
        try:
            store = _join(env, backend, float(timeout_s))
        except ConfigError as err:
            raise ConfigError(f"{err}{log.saved()}") from None
    if dist.get_world_size() != env.world_size:  # pragma: no cover - guarded by init_process_group
        raise ConfigError(
            f"torch-distributed: WORLD_SIZE == {env.world_size} but the group has {dist.get_world_size()}"
        )
    fault_store = dist.PrefixStore(f"marina/{env.restart}/", store)
    return Session(env, backend, dev, float(timeout_s), fault_store)
