"""Experiments: one run's configuration, grids declared in TOML, parallel execution, resume.

A run is fully described by a :class:`RunConfig` (problem, workers, split, method,
compressor, seed, iterations, log_every and the method overrides). Its ``run_id`` is a stable
hash of that description (the device is left out: moving a run to a GPU is not a new
experiment), so a results directory knows which runs it already holds: a sweep started again
with the same command runs only the missing ones, and a run that was cut short resumes from
its checkpoint (see :mod:`marina.results` for the files).

Sweep files (TOML). Every key takes one value or a list of values; lists are crossed (the grid
is the Cartesian product). Keys at the top level apply to every ``[[grid]]`` table; a grid's own
keys override them; without ``[[grid]]`` tables the top level is the one grid::

    iterations = 3000              # rounds per run (>= 1)
    log_every = 10                 # history row every N rounds (default: iterations // 200)
    problems = ["a9a", "w8a"]      # bundled data set names or LibSVM file paths
    workers = 5                    # n
    seeds = [0, 1, 2]
    checkpoint_every = 1000        # execution only: checkpoint long runs every N rounds (0: never)

    [[grid]]
    methods = ["marina"]
    compressors = ["randk:1", "randk:5"]
    p = [0.01, 0.1]                # an override of the theory default

    [[grid]]
    methods = ["vr-diana"]
    compressors = ["randk:1"]
    batch_size = 65                # b' (default: m / 100, as in the paper's Figure 1)

Grid keys: problems, workers, split, methods, compressors, seeds, iterations, log_every and the
method overrides of :func:`marina.run` (:data:`PARAM_KEYS`: stepsize, stepsize_multiplier, p,
alpha, batch_size, clients, refresh_p, online, dense_batch_size, mu), each only for the methods
that take it. Top level only: checkpoint_every, device, name, description. Every value is
checked (with the key, the value and what is allowed in the message) before any run starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import itertools
import json
import multiprocessing
import os
import platform
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marina.errors import ConfigError
from marina.progress import ProgressDisplay

__all__ = [
    "DEFAULT_CHECKPOINT_EVERY",
    "GRID_KEYS",
    "PARAM_KEYS",
    "Raw",
    "ProblemCache",
    "RunConfig",
    "SweepSpec",
    "SweepSummary",
    "default_log_every",
    "execute",
    "expand",
    "load_sweep",
    "parse_sweep",
    "run_sweep",
    "torch_threads",
    "validate",
]

IDENTITY_VERSION = 1
"""Bumped only if the meaning of a configuration field changes (it is hashed into run ids)."""

PARAM_KEYS: tuple[str, ...] = (
    "stepsize",
    "stepsize_multiplier",
    "p",
    "alpha",
    "batch_size",
    "clients",
    "refresh_p",
    "online",
    "dense_batch_size",
    "mu",
)
"""Method overrides a configuration may set (each method takes some of them, see
:mod:`marina.methods`; :func:`marina.run` documents them)."""

# sweep-file key -> RunConfig field
AXIS_KEYS: dict[str, str] = {
    "problems": "problem",
    "workers": "workers",
    "split": "split",
    "methods": "method",
    "compressors": "compressor",
    "seeds": "seed",
    "iterations": "iterations",
    "log_every": "log_every",
}
GRID_KEYS: tuple[str, ...] = (*AXIS_KEYS, *PARAM_KEYS)
"""Keys a grid (or the top level) may set; each takes a value or a list of values."""
TOP_ONLY_KEYS: tuple[str, ...] = ("checkpoint_every", "device", "name", "description")
REQUIRED_KEYS: tuple[str, ...] = ("problems", "methods", "compressors", "iterations")

DEFAULT_CHECKPOINT_EVERY = 1000


def default_log_every(iterations: int) -> int:
    """History rows every ``iterations // 200`` rounds (at least 1): ~200 points per curve."""
    return max(1, int(iterations) // 200)


# -- one run --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's history (plus ``device``, where it runs).

    ``params`` holds the method overrides that were given (``stepsize``,
    ``stepsize_multiplier``, ``p``, ``alpha``, ``batch_size``, ``clients``); a missing key means
    the theory default.
    """

    problem: str
    workers: int
    method: str
    compressor: str
    seed: int = 0
    iterations: int = 1000
    log_every: int = 10
    split: str = "contiguous"
    params: Mapping[str, float | int] = field(default_factory=dict)
    device: str = "cpu"

    def identity(self) -> dict[str, Any]:
        """The hashed description: every field but ``device``, in canonical form."""
        return {
            "v": IDENTITY_VERSION,
            "problem": self.problem,
            "workers": int(self.workers),
            "split": self.split,
            "method": self.method,
            "compressor": self.compressor,
            "seed": int(self.seed),
            "iterations": int(self.iterations),
            "log_every": int(self.log_every),
            "params": {k: self.params[k] for k in sorted(self.params)},
        }

    @property
    def run_id(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical JSON of :meth:`identity`."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        d = self.identity()
        del d["v"]
        d["device"] = self.device
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def describe(self) -> str:
        """Short human description, e.g. ``a9a n=5 marina randk:1 p=0.1 seed=0``."""
        extra = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items())
        return " ".join(
            x
            for x in (
                f"{self.problem} n={self.workers}",
                "" if self.split == "contiguous" else f"split={self.split}",
                self.method,
                self.compressor,
                extra,
                f"seed={self.seed}",
            )
            if x
        )


# -- sweep files --------------------------------------------------------------------------------------
@dataclass
class SweepSpec:
    """A parsed sweep file: the raw grids and the execution options."""

    grids: list[dict[str, list[Any]]]
    sources: list[str]
    checkpoint_every: int | None = None
    device: str | None = None
    name: str | None = None
    description: str | None = None


def _as_list(where: str, key: str, value: Any) -> list[Any]:
    values = list(value) if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{where}: {key} = [] is empty, must list at least one value")
    for v in values:
        if isinstance(v, (dict, list)):
            raise ConfigError(f"{where}: {key} = {value!r}: values must be strings or numbers")
    return values


def parse_sweep(data: Mapping[str, Any], source: str = "sweep") -> SweepSpec:
    """Check the keys of a parsed sweep file and collect its grids (values unchecked yet)."""
    allowed_top = (*GRID_KEYS, *TOP_ONLY_KEYS, "grid")
    for key in data:
        if key not in allowed_top:
            raise ConfigError(f"{source}: unknown key {key!r}; allowed: {', '.join(allowed_top)}")
    base = {k: _as_list(source, k, v) for k, v in data.items() if k in GRID_KEYS}
    tables = data.get("grid")
    if tables is None:
        grids, sources = [base], [source]
    else:
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables) or not tables:
            raise ConfigError(f"{source}: 'grid' must be a list of tables, written [[grid]]")
        grids, sources = [], []
        for i, table in enumerate(tables, 1):
            where = f"{source} [[grid]] #{i}"
            for key in table:
                if key not in GRID_KEYS:
                    hint = " (top level only)" if key in TOP_ONLY_KEYS else ""
                    raise ConfigError(f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(GRID_KEYS)}")
            grids.append({**base, **{k: _as_list(where, k, v) for k, v in table.items()}})
            sources.append(where)
    for grid, where in zip(grids, sources):
        for key in REQUIRED_KEYS:
            if key not in grid:
                raise ConfigError(f"{where}: missing key {key!r} (required: {', '.join(REQUIRED_KEYS)})")
    ck = data.get("checkpoint_every")
    if ck is not None and (isinstance(ck, bool) or not isinstance(ck, int) or ck < 0):
        raise ConfigError(f"{source}: checkpoint_every = {ck!r}, must be an integer >= 0 (0: never)")
    for key in ("device", "name", "description"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{source}: {key} = {data[key]!r}, must be a string")
    return SweepSpec(grids, sources, ck, data.get("device"), data.get("name"), data.get("description"))


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and check a sweep TOML file (see the module docstring for the schema)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"sweep file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    return parse_sweep(data, path.name)


@dataclass
class Raw:
    """An expanded, not yet validated configuration and where it was declared."""

    values: dict[str, Any]
    where: str


def expand(spec: SweepSpec) -> list[Raw]:
    """The Cartesian product of every grid, in declaration order."""
    out: list[Raw] = []
    for grid, where in zip(spec.grids, spec.sources):
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            out.append(Raw(dict(zip(keys, combo)), where))
    return out


# -- validation -------------------------------------------------------------------------------------------
def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    ):
        raise ConfigError(f"{name} = {value!r}, must be an integer >= {low}")
    if int(value) < low:
        raise ConfigError(f"{name} = {int(value)}, must be >= {low}")
    return int(value)


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} = {value!r}, must be a non-empty string")
    return value.strip()


def load_problem(problem: str, workers: int, split: str = "contiguous", device: str = "cpu"):
    """The problem of a configuration (:func:`marina.problems.get`): a bundled data set or a
    LibSVM file split among ``workers`` (random splits keyed by seed 0, so every run seed sees
    the same data; :func:`marina.run` builds spec strings the same way), or ``synthetic``."""
    from marina import problems

    options: dict[str, Any] = {} if split == "contiguous" else {"split": split}
    return problems.get(problem, workers=workers, seed=0, device=device, **options)


class ProblemCache:
    """Problems built once per (problem, workers, split, device), newest ``size`` kept."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: dict[tuple, Any] = {}

    def get(self, problem: str, workers: int, split: str, device: str) -> Any:
        key = (problem, workers, split, device)
        if key not in self._items:
            if len(self._items) >= self.size:
                self._items.pop(next(iter(self._items)))
            self._items[key] = load_problem(*key)
        return self._items[key]


def validate(
    raws: Sequence[Raw],
    names: Callable[[str], str] = lambda key: key,
    *,
    device: str = "cpu",
    cache: ProblemCache | None = None,
) -> list[RunConfig]:
    """Check every expanded configuration and build its :class:`RunConfig` (duplicates removed).

    Cheap checks run over every configuration first (types, method and compressor names,
    which overrides a method takes); then each distinct problem is built once and every
    configuration's parameters are resolved exactly as :func:`marina.run` will resolve them
    (:meth:`marina.methods.Method.resolve`: K <= d, p in (0, 1], b' <= m_i, r <= n, ...), so
    no run can fail on its configuration after the sweep has started. ``names`` maps a key to
    how the user wrote it (e.g. ``methods`` -> ``--method``).

    Raises:
        ConfigError: naming where the value was declared, the key, the value and what is allowed.
    """
    from marina import compressors, methods
    from marina.network.simulated import SimulatedNetwork

    staged: list[tuple[str, dict[str, Any]]] = []
    for raw in raws:
        v = raw.values
        pre = f"{raw.where}: " if raw.where else ""
        try:
            cfg: dict[str, Any] = {}
            cfg["problem"] = _str(names("problems"), v["problems"])
            cfg["workers"] = _int(names("workers"), v.get("workers", 5), 1)
            cfg["split"] = _str(names("split"), v.get("split", "contiguous"))
            method_name = _str(names("methods"), v["methods"])
            try:
                cls = methods.get(method_name)
            except ConfigError:
                known = ", ".join(methods.METHODS)
                raise ConfigError(
                    f"{names('methods')} = {method_name!r}: unknown method; allowed: {known}"
                ) from None
            cfg["method"] = cls.name
            spec = _str(names("compressors"), v["compressors"])
            try:
                comp = compressors.get(spec, workers=cfg["workers"])
            except ConfigError as exc:
                raise ConfigError(f"{names('compressors')} = {spec!r}: {exc}") from None
            if not comp.unbiased:
                raise ConfigError(
                    f"{names('compressors')} = {spec!r} is biased; {cls.name} needs an unbiased compressor"
                )
            cfg["compressor"] = comp.spec
            cfg["seed"] = _int(names("seeds"), v.get("seeds", 0), 0)
            cfg["iterations"] = _int(names("iterations"), v["iterations"], 1)
            cfg["log_every"] = _int(
                names("log_every"), v.get("log_every", default_log_every(cfg["iterations"])), 1
            )
            allowed = (*methods.base.COMMON_PARAMETERS, *cls.parameters)
            params = {k: v[k] for k in PARAM_KEYS if k in v}
            for key, value in params.items():
                if key not in allowed:
                    where = " in their own [[grid]] table" if "[[grid]]" in raw.where else ""
                    raise ConfigError(
                        f"{names(key)} = {value!r} is not a parameter of {cls.name} (it takes: "
                        f"{', '.join(allowed)}); set it only for the methods that take it{where}"
                    )
            cfg["params"] = params
        except ConfigError as exc:
            raise ConfigError(pre + str(exc)) from None
        staged.append((pre, cfg))

    cache = cache or ProblemCache()
    out: dict[str, RunConfig] = {}
    for pre, cfg in staged:
        try:
            try:
                prob = cache.get(cfg["problem"], cfg["workers"], cfg["split"], device)
            except ConfigError as exc:
                raise ConfigError(f"{names('problems')} = {cfg['problem']!r}: {exc}") from None
            comp = compressors.get(cfg["compressor"], workers=cfg["workers"])
            try:
                comp.omega(int(prob.dim))
            except ConfigError as exc:
                raise ConfigError(
                    f"{names('compressors')} = {cfg['compressor']!r} on {cfg['problem']}: {exc}"
                ) from None
            net = SimulatedNetwork(cfg["workers"], cfg["seed"], device=prob.device)
            setting = methods.Setting.build(prob, net, comp, cfg["iterations"])
            methods.get(cfg["method"]).resolve(setting, dict(cfg["params"]))
        except ConfigError as exc:
            raise ConfigError(pre + str(exc)) from None
        rc = RunConfig(**cfg, device=device)
        out.setdefault(rc.run_id, rc)
    return list(out.values())


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` torch intra-op threads (None: unchanged), then restore.

    Small problems run fastest on one thread, and far slower with several on a busy machine."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- executing one run -------------------------------------------------------------------------------------
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _versions(device: str) -> dict[str, Any]:
    import torch

    from marina import __version__

    return {
        "marina_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "host": platform.node(),
        "device": device,
    }


def execute(
    config: RunConfig,
    out: str | os.PathLike | None,
    *,
    checkpoint_every: int | None = DEFAULT_CHECKPOINT_EVERY,
    progress: Callable[[Mapping[str, Any], int], None] | None = None,
    problem: Any = None,
    backend: str = "simulated",
    write: bool = True,
    m: float | None = None,
    run_kwargs: Mapping[str, Any] | None = None,
):
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
    (``run_kwargs``, e.g. ``network``).

    Returns:
        (record, result): the run's record (as in ``runs.json``) and the :class:`marina.Result`
        (None if it failed).
    """
    import marina
    from marina import results

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
        results.write_run(out_path, record)
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {**config.params, **(run_kwargs or {})}
    if ckpt is not None:
        kwargs.update(checkpoint_path=str(ckpt), checkpoint_every=int(checkpoint_every))
    if progress is not None:
        kwargs["progress"] = progress
    try:
        result = marina.run(
            method=config.method,
            compressor=config.compressor,
            problem=problem,
            workers=config.workers,
            iterations=config.iterations,
            seed=config.seed,
            log_every=config.log_every,
            **kwargs,
        )
    except Exception as exc:
        record.update(
            status="failed",
            message=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            finished_at=_now(),
            wall_s=time.perf_counter() - t0,
        )
        if writing:
            results.write_run(out_path, record)
        if isinstance(exc, ConfigError):
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


# -- sweeps ------------------------------------------------------------------------------------------
@dataclass
class SweepSummary:
    """What a sweep did: run ids by outcome."""

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
    import torch

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
                config, out, checkpoint_every=checkpoint_every, progress=callback, problem=problem
            )
            messages.put(("done", run_id, record["status"], record.get("message", "")))
        except Exception as exc:  # ConfigError re-raised by execute, or a failure to load
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
) -> SweepSummary:
    """Run every configuration not yet complete in ``out``, ``jobs`` at a time.

    ``jobs`` = 1 runs in this process; more start that many worker processes (spawned, one
    torch thread each unless cores are left over). The combined ``results.parquet`` and
    ``runs.json`` are rebuilt every ``rebuild_every`` seconds while runs complete, and at the
    end, also when interrupted (Ctrl-C): rerunning the same sweep then finishes the rest.
    ``cache`` (e.g. the one :func:`validate` filled) serves the problems of in-process runs.
    ``threads``: torch threads per worker process (default: the cores divided among the jobs)
    and, if given, for in-process runs.
    """
    from marina import results

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
                _run_inline(todo, out, checkpoint_every, display, finished, cache or ProblemCache())
        else:
            _run_pool(todo, out, min(jobs, len(todo)), checkpoint_every, display, finished, threads)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        display.close()
        if todo or not (out / results.RESULTS_FILE).exists():
            results.rebuild(out)
    return summary


def _run_inline(todo, out, checkpoint_every, display, finished, cache: ProblemCache) -> None:
    for cfg in todo:
        display.add(cfg.run_id, cfg.describe(), cfg.iterations)
        try:
            problem = cache.get(cfg.problem, cfg.workers, cfg.split, cfg.device)
            callback = display.callback(cfg.run_id)
            record, _ = execute(
                cfg, out, checkpoint_every=checkpoint_every, progress=callback, problem=problem
            )
            finished(cfg, record["status"], record.get("message", ""))
        finally:
            display.remove(cfg.run_id)


def _run_pool(todo, out, jobs, checkpoint_every, display, finished, threads: int | None) -> None:
    ctx = multiprocessing.get_context("spawn")
    tasks, messages = ctx.Queue(), ctx.Queue()
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    by_id = {c.run_id: c for c in todo}
    for c in todo:
        tasks.put(c.to_dict())
    for _ in range(jobs):
        tasks.put(None)
    args = (tasks, messages, str(out), checkpoint_every, threads, os.getpid(), display.enabled)
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
