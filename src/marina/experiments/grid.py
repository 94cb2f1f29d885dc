"""Grids of experiments declared in TOML: parsing, expansion, validation.

Sweep files. Every key takes one value or a list of values; lists are crossed (the grid is the
Cartesian product). Keys at the top level apply to every ``[[grid]]`` table; a grid's own keys
override them; without ``[[grid]]`` tables the top level is the one grid::

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

Grid keys: problems, workers, split, methods, compressors, seeds, iterations, log_every, links
(a link model such as ``"100mbit"``: every run gets the column ``link_time_s``) and the
method parameters (:data:`PARAM_KEYS`, from :data:`marina.parameters.PARAMETERS`), each only for
the methods that take it. Top level only: checkpoint_every, device, name, description. Every
value is checked (with the key, the value and what is allowed in the message) before any run
starts.

Bounds: a sweep file is read only up to :data:`MAX_SWEEP_BYTES`; the number of runs (the sum
over the grids of the products of their list lengths) is computed before anything is expanded
and refused beyond :data:`MAX_RUNS`, which the environment variable ``MARINA_MAX_RUNS`` raises.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marina import compressors, devices, methods, parameters
from marina.errors import ConfigError
from marina.experiments.config import RunConfig, default_log_every
from marina.experiments.loading import ProblemCache
from marina.network.link import parse_link

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "GRID_KEYS",
    "PARAM_KEYS",
    "Raw",
    "SweepSpec",
    "expand",
    "load_sweep",
    "parse_shard",
    "parse_sweep",
    "shard",
    "validate",
]

PARAM_KEYS: tuple[str, ...] = parameters.names()
"""Method parameters a configuration may set (each method takes some of them)."""

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
    "links": "link",
}
GRID_KEYS: tuple[str, ...] = (*AXIS_KEYS, *PARAM_KEYS)
"""Keys a grid (or the top level) may set; each takes a value or a list of values."""
TOP_ONLY_KEYS: tuple[str, ...] = ("checkpoint_every", "device", "name", "description")
REQUIRED_KEYS: tuple[str, ...] = ("problems", "methods", "compressors", "iterations")

MAX_RUNS = 100_000
"""Most runs a sweep file may declare (all grids together) unless ``MARINA_MAX_RUNS`` says more:
each run is validated, listed and stored, so a few list values more must not declare 10^9."""
MAX_RUNS_ENV = "MARINA_MAX_RUNS"
MAX_SWEEP_BYTES = 4 * 2**20
"""Largest sweep file read (a grid is declared by its axes: a few KB)."""


# -- sweep files --------------------------------------------------------------------------------------
@dataclass
class SweepSpec:
    """A parsed sweep file: the raw grids and the execution options.

    Attributes:
        grids: each grid's keys (``problems``, ``methods``, ...) with their lists of values.
        sources: where each grid was declared (the file, or its ``[[grid]]`` table).
        checkpoint_every: the file's ``checkpoint_every`` (None: not given; 0: never).
        device: the file's ``device`` (None: not given).
        name: the file's ``name``, for results and plots (None: not given).
        description: the file's ``description`` (None: not given).
    """

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
    """Check the keys of a parsed sweep file and collect its grids (values unchecked yet).

    Args:
        data: the parsed TOML (a mapping of keys to values and ``grid`` tables).
        source: how the errors name the file.

    Raises:
        ConfigError: an unknown or missing key, or a bad option value.
    """
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
    """Read and check a sweep TOML file (see the module docstring for the schema).

    Args:
        path: the TOML file.

    Raises:
        ConfigError: a missing, oversized, unreadable or invalid file (see :func:`parse_sweep`).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_file() and size > MAX_SWEEP_BYTES:
            raise ConfigError(
                f"sweep file {str(path)!r} is {size} bytes, must be at most {MAX_SWEEP_BYTES} bytes "
                "(declare a grid by its axes; long lists: a range of seeds is a list of a few values)"
            )
        with open(path, "rb") as fh:
            text = fh.read(MAX_SWEEP_BYTES + 1).decode("utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"sweep file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"sweep file {str(path)!r} is a directory, must be a TOML file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a sweep file: arrays or tables nested too deeply") from None
    if len(text) > MAX_SWEEP_BYTES:  # grew while being read
        raise ConfigError(f"sweep file {str(path)!r} must be at most {MAX_SWEEP_BYTES} bytes")
    return parse_sweep(data, path.name)


@dataclass
class Raw:
    """An expanded, not yet validated configuration and where it was declared.

    Attributes:
        values: one value per grid key.
        where: where it was declared, for error messages.
    """

    values: dict[str, Any]
    where: str


def max_runs() -> int:
    """:data:`MAX_RUNS`, or the environment variable ``MARINA_MAX_RUNS`` when set."""
    text = os.environ.get(MAX_RUNS_ENV)
    if text is None:
        return MAX_RUNS
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{MAX_RUNS_ENV} == {text!r}, must be an integer >= 1 (most runs a sweep declares)")
    return value


def grid_size(spec: SweepSpec) -> int:
    """Runs the grids declare (before duplicates are removed), without expanding them: the sum
    over the grids of the products of their list lengths."""
    return sum(math.prod(len(v) for v in g.values()) for g in spec.grids)


def expand(spec: SweepSpec) -> list[Raw]:
    """The Cartesian product of every grid, in declaration order.

    Args:
        spec: the parsed sweep file.

    Raises:
        ConfigError: when the grids declare more than :func:`max_runs` runs (counted first).
    """
    limit, total = max_runs(), grid_size(spec)
    if total > limit:
        largest = max(zip(spec.grids, spec.sources), key=lambda gs: math.prod(len(v) for v in gs[0].values()))
        axes = " x ".join(f"{k} ({len(v)})" for k, v in largest[0].items() if len(v) > 1)
        shown = f" ({largest[1]}: {axes})" if axes else ""
        raise ConfigError(
            f"the sweep declares {total} runs{shown}, more than the limit of {limit}"
            f"{f' ({MAX_RUNS_ENV}={limit})' if MAX_RUNS_ENV in os.environ else ''}; "
            f"set {MAX_RUNS_ENV}={total} to run them all, or shorten the lists"
        )
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
    no run can fail on its configuration after the sweep has started.

    Args:
        raws: the expanded configurations (:func:`expand`).
        names: maps a key to how the user wrote it (e.g. ``methods`` -> ``--method``).
        device: where the runs will compute (the problems are built there).
        cache: problems already built, shared with the caller (default: a new cache).

    Raises:
        ConfigError: naming where the value was declared, the key, the value and what is allowed.
    """
    devices.check(device)
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
                    + methods.UNKNOWN_HINT
                ) from None
            cfg["method"] = cls.name
            spec = _str(names("compressors"), v["compressors"])
            try:
                comp = compressors.get(spec, workers=cfg["workers"])
            except ConfigError as exc:
                raise ConfigError(f"{names('compressors')} = {spec!r}: {exc}") from None
            reason = cls.accepts(comp)
            if reason is not None:
                raise ConfigError(f"{names('compressors')} = {reason}")
            cfg["compressor"] = comp.spec
            cfg["seed"] = _int(names("seeds"), v.get("seeds", 0), 0)
            cfg["iterations"] = _int(names("iterations"), v["iterations"], 1)
            cfg["log_every"] = _int(
                names("log_every"), v.get("log_every", default_log_every(cfg["iterations"])), 1
            )
            if "links" in v:
                try:
                    cfg["link"] = parse_link(_str(names("links"), v["links"])).spec
                except ConfigError as exc:
                    raise ConfigError(f"{names('links')}: {exc}") from None
            allowed = cls.parameter_names()
            params = {}
            for key in PARAM_KEYS:
                if key not in v:
                    continue
                if key not in allowed:
                    where = " in their own [[grid]] table" if "[[grid]]" in raw.where else ""
                    raise ConfigError(
                        f"{names(key)} = {v[key]!r} is not a parameter of {cls.name} (it takes: "
                        f"{', '.join(allowed)}); set it only for the methods that take it{where}"
                    )
                try:  # the type now; the range once the problem is known (Method.resolve)
                    parameters.by_name(key).canonical(v[key])
                except ConfigError as exc:
                    raise ConfigError(f"{cls.name}: {exc}") from None
                params[key] = v[key]
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
                comp.omega(int(prob.dim)) if comp.unbiased else comp.alpha(int(prob.dim))
            except ConfigError as exc:
                raise ConfigError(
                    f"{names('compressors')} = {cfg['compressor']!r} on {cfg['problem']}: {exc}"
                ) from None
            methods.plan(
                cfg["method"],
                prob,
                comp,
                iterations=cfg["iterations"],
                overrides=cfg["params"],
                seed=cfg["seed"],
                compressor_key=f"{names('compressors')} = ",
            )
        except ConfigError as exc:
            raise ConfigError(pre + str(exc)) from None
        rc = RunConfig(**cfg, device=device)
        out.setdefault(rc.run_id, rc)
    return list(out.values())


# -- shards -------------------------------------------------------------------------------------------
def parse_shard(text: str, name: str = "--shard") -> tuple[int, int]:
    """``"I/N"`` (1-based, as ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``) -> ``(I, N)``.

    Args:
        text: the shard, ``"I/N"``.
        name: how the errors name the option.

    Raises:
        ConfigError: not two integers with 1 <= I <= N.
    """
    index, sep, count = str(text).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = 0
    if not sep or not 1 <= i <= n:
        raise ConfigError(f"{name} {text!r}, must be I/N with integers 1 <= I <= N (e.g. 2/8)")
    return i, n


def shard(configs: Sequence[RunConfig], index: int, count: int) -> list[RunConfig]:
    """The configurations shard ``index`` of ``count`` owns: every ``count``-th of the grid in
    run-id order, starting at the ``index``-th (1-based).

    The assignment depends on the grid alone, not on what a results directory holds, so shards
    started at different times, or started again after a kill, own disjoint sets covering the
    grid; each then runs the configurations of its set not yet complete.

    Args:
        configs: the whole grid's configurations.
        index: I, the shard (1-based).
        count: N, the number of shards.
    """
    ordered = sorted(configs, key=lambda c: c.run_id)
    return ordered[index - 1 :: count]
