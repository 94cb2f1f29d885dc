"""The memory budget: what a run may allocate, estimated before it allocates anything.

The budget (:func:`budget`) is a fraction (:data:`DEFAULT_FRACTION`) of the memory this process
can still obtain: the smallest of the machine's available memory (``MemAvailable`` of
``/proc/meminfo``), the cgroup's remaining allowance and the address space left under
``RLIMIT_AS``. The environment variable ``MARINA_MEMORY_BUDGET`` overrides it: bytes with an
optional K/M/G/T suffix (``"8G"``), or a percentage of the available memory (``"50%"``).

:func:`check` compares an estimate (a dict of named parts, in bytes) with the budget and raises
:class:`marina.errors.MemoryBudgetError` naming both. :func:`run_estimate` is the estimate of one
:func:`marina.run`, used by the run itself and by sweep validation before any run starts.
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from marina.errors import ConfigError, MemoryBudgetError

if TYPE_CHECKING:
    from marina.problems.base import Problem

__all__ = [
    "DEFAULT_FRACTION",
    "ENV_VAR",
    "WORKSPACE",
    "available",
    "budget",
    "check",
    "format_bytes",
    "check_run",
    "run_estimate",
    "state_bytes",
]

ENV_VAR = "MARINA_MEMORY_BUDGET"
DEFAULT_FRACTION = 0.8
"""Share of the available memory a run may plan to use (the rest: Python, torch, page cache)."""

STATE_ROWS = 6
"""(n, d) arrays a method holds at once, counted for every method: worker-side state (last local
gradients, DIANA shifts), the round's local vectors, their compressed messages and the
aggregation's temporaries (an upper bound: MARINA holds about four)."""

MINIBATCH_POINTS: dict[str, int] = {"batch_size": 2, "dense_batch_size": 1}
"""Parameters that are minibatch sizes b -> points each sampled component is evaluated at
(VR-MARINA / VR-DIANA's b' evaluates differences at two points; online VR-MARINA's b one)."""

WORKSPACE = 64 * 2**20
"""Bytes beyond the counted arrays that a round's first large kernels take (allocator arenas,
kernel buffers): measured about 50 MiB on CPU (benchmarks/memory.py)."""

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def format_bytes(n: float) -> str:
    """``n`` bytes as e.g. ``3.2 GiB``."""
    for unit, name in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= unit:
            return f"{n / unit:.3g} {name}"
    return f"{int(n)} B"


def parse_size(text: str, avail: int | None = None) -> int:
    """Bytes of ``"8G"``, ``"512M"``, ``"1000000"`` or ``"50%"`` (of ``avail``)."""
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([KMGT%]?)", s)
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(
            f"{ENV_VAR} == {text!r}, must be a size > 0 such as 8G, 512M, 1000000 (bytes) or 50%"
        )
    value, unit = float(m.group(1)), m.group(2)
    if unit == "%":
        return int(value / 100 * (available() if avail is None else avail))
    return int(value * _UNITS[unit])


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_left() -> int | None:
    try:
        limit = open("/sys/fs/cgroup/memory.max", encoding="ascii").read().strip()  # noqa: SIM115
        if limit == "max":
            return None
        used = int(open("/sys/fs/cgroup/memory.current", encoding="ascii").read())  # noqa: SIM115
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def _address_space_left() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        size = 0
    return max(0, soft - size)


def available() -> int:
    """Bytes this process can still obtain (the smallest of the limits in the module docstring)."""
    limits = [v for v in (_meminfo_available(), _cgroup_left(), _address_space_left()) if v is not None]
    return min(limits) if limits else 2**62


def budget() -> tuple[int, str]:
    """(bytes a run may plan to use, where the figure comes from)."""
    text = os.environ.get(ENV_VAR, "").strip()
    if text:
        return parse_size(text), f"{ENV_VAR}={text}"
    avail = available()
    return int(DEFAULT_FRACTION * avail), (
        f"{DEFAULT_FRACTION:.0%} of the {format_bytes(avail)} available; set {ENV_VAR} to change it"
    )


def check(parts: Mapping[str, float], what: str) -> int:
    """The total of ``parts`` (bytes), or MemoryBudgetError naming the estimate and the budget."""
    total = int(sum(parts.values()))
    limit, source = budget()
    if total > limit:
        detail = ", ".join(f"{k} {format_bytes(v)}" for k, v in parts.items() if v)
        raise MemoryBudgetError(
            f"{what} needs about {format_bytes(total)} of memory ({detail}), more than the memory "
            f"budget of {format_bytes(limit)} ({source})"
        )
    return total


def state_bytes(n: int, d: int, item: int = 8) -> int:
    """Bytes of a method's state for n workers in dimension d (:data:`STATE_ROWS`, see
    :func:`run_estimate`)."""
    return STATE_ROWS * n * d * item + n * d * 8


def run_estimate(problem: Problem, params: Mapping[str, Any]) -> dict[str, int]:
    """Peak bytes one :func:`marina.run` allocates beyond the built problem, in named parts.

    - method state: :data:`STATE_ROWS` (n_hosted, d) arrays of the problem's dtype, with an int64
      index per value for the compressed messages;
    - workspace: :data:`WORKSPACE`;
    - minibatches: for each minibatch size of :data:`MINIBATCH_POINTS` in ``params``, the
      problem's ``minibatch_bytes(b, points)`` (all hosted workers at once).
    """
    item = int(problem.dtype.itemsize) if hasattr(problem.dtype, "itemsize") else 8
    parts = {
        "method state": state_bytes(int(problem.n_workers), int(problem.dim), item),
        "workspace": WORKSPACE,
    }
    batch = 0
    for name, points in MINIBATCH_POINTS.items():
        b = params.get(name)
        if b is not None:
            batch = max(batch, int(_minibatch_bytes(problem, int(b), points)))
    if batch:
        parts["minibatches"] = batch
    return parts


def _minibatch_bytes(problem: Problem, b: int, points: int) -> int:
    own = getattr(problem, "minibatch_bytes", None)
    if own is not None:
        return int(own(b, points))
    n, d = int(problem.n_workers), int(problem.dim)
    return n * b * 8 + (points + 1) * n * d * 8


def check_run(problem: Problem, method: str, params: Mapping[str, Any]) -> int:
    """:func:`check` of :func:`run_estimate` for ``method`` with its resolved ``params``."""
    what = (
        f"{method} on {getattr(problem, 'name', type(problem).__name__)} "
        f"(n = {int(problem.n_workers)}, d = {int(problem.dim)}, {problem.dtype}"
        + "".join(f", {k} = {params[k]}" for k in MINIBATCH_POINTS if params.get(k) is not None)
        + ")"
    )
    return check(run_estimate(problem, params), what)
