"""Results directories: per-run files, the combined table, atomic writes.

A results directory ``DIR`` (written by ``marina run`` and ``marina sweep``) holds::

    DIR/results.parquet          one row per logged iteration of every completed run
    DIR/runs.json                one record per run (configuration, parameters used, status, versions)
    DIR/runs/<run_id>/history.parquet   the run's own history (written before run.json)
    DIR/runs/<run_id>/run.json          the run's record; its ``status`` says whether the run completed
    DIR/runs/<run_id>/checkpoint.pt     while a long run is in flight (deleted once it completes)

Every file is written atomically (temporary file in the same directory, ``fsync``,
``os.replace``, then ``fsync`` of the directory), so a reader, or a process killed at any moment,
never sees a half-written file. The per-run files are the source of truth; the combined
``results.parquet`` and ``runs.json`` are rebuilt from them (under an advisory lock, so two
processes finishing runs in the same directory cannot lose each other's rows; a
:class:`filelock.FileLock`). A run whose
``run.json`` has a terminal status (``finished`` or ``diverged``) is complete and is never
run again by a resumed sweep.

Numbers are strict JSON: a non-finite metric (a diverged run's loss or ||grad f||^2) is ``null``
for NaN and the number ``1e999`` / ``-1e999`` for +-inf, which JSON readers (Python's ``json``,
JavaScript) parse as +-infinity. Records of older versions that hold ``"inf"`` strings are read
as floats.

Damaged files never block a directory: a per-run file that cannot be read (a truncated
``run.json`` or ``history.parquet``) is reported (:class:`marina.errors.DamagedFileWarning`,
naming the path) and its run is treated as not done, so a sweep or ``marina run`` runs it again;
a damaged ``results.parquet`` or ``runs.json`` is rebuilt from, or read from, ``runs/``.
Per-run files are read only when they are regular files below a size cap
(:data:`MAX_RECORD_BYTES`, :data:`MAX_HISTORY_BYTES`; a link to ``/dev/zero`` or a named pipe is
damage, as is a record whose configuration fields have the wrong types, or a history whose
``run_id`` is another run's or whose metric columns are not numbers). A run's folder must be a
real folder inside ``DIR``: one that is a symbolic link is never read (reported) nor written
(ConfigError).

Both combined files are readable with plain pandas::

    df = pandas.read_parquet("DIR/results.parquet")
    runs = pandas.json_normalize(json.load(open("DIR/runs.json")))
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from marina import parameters
from marina.errors import ConfigError, DamagedFileWarning, LockTimeoutError, MarinaWarning
from marina.files import atomic_write
from marina.runner import HISTORY_COLUMNS

__all__ = [
    "SCHEMA_VERSION",
    "CONFIG_COLUMNS",
    "HISTORY_COLUMNS",
    "PARAM_COLUMNS",
    "TERMINAL_STATUSES",
    "TIME_COLUMNS",
    "checkpoint_path",
    "collect",
    "completed_record",
    "completed_run_ids",
    "dumps_json",
    "history_frame",
    "jsonable",
    "load_results",
    "load_runs",
    "read_history",
    "read_run_record",
    "rebuild",
    "run_lock",
    "run_dir",
    "schema_version",
    "write_run",
]

RESULTS_FILE = "results.parquet"
RUNS_FILE = "runs.json"
RUNS_DIR = "runs"
HISTORY_FILE = "history.parquet"
RECORD_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".lock"

MAX_RECORD_BYTES = 16 * 2**20
"""Largest ``run.json`` read (a record is a few KB, a failed run's traceback included)."""
MAX_HISTORY_BYTES = 2**30
"""Largest per-run ``history.parquet`` read."""

TIME_COLUMNS: tuple[str, ...] = ("time_s",)
"""Columns that depend on the machine's speed (everything else is a function of the config)."""

SCHEMA_VERSION = 3
"""Version of the files' layout, recorded in every run record (``schema``) and in the metadata of
every Parquet file (``marina_schema``). 3: the string column ``p_rule`` (``"bits"`` for
``p = "bits"``) follows ``p``; 2: per-run histories carry the configuration columns (``run_id``
first) and every method parameter of :data:`marina.parameters.PARAMETERS` is a column; 1:
histories without configuration columns, six parameter columns. Older files are read with the
columns they lack added as missing values."""

PARAM_COLUMNS: dict[str, str] = {c: t for p in parameters.PARAMETERS for c, t in p.columns.items()}
"""Every method parameter (:data:`marina.parameters.PARAMETERS`) as given (missing: the theory
default was used), with its dtype: runs that differ in any parameter differ in these columns.
``p`` given as ``"bits"`` is ``p`` missing and ``p_rule`` = ``"bits"``."""

CONFIG_COLUMNS: dict[str, str] = {
    "run_id": "string",
    "problem": "string",
    "workers": "int64",
    "split": "string",
    "method": "string",
    "compressor": "string",
    "seed": "int64",
    "iterations": "int64",
    "log_every": "int64",
    "link": "string",
    **PARAM_COLUMNS,
    "m": "float64",
}
"""Configuration columns leading every row of ``results.parquet``; ``m`` is the mean local
data-set size (epochs = oracle_calls / m)."""

TERMINAL_STATUSES = frozenset({"finished", "diverged"})
"""Statuses of a completed run (a resumed sweep skips it)."""


def jsonable(value: Any) -> Any:
    """``value`` with tensors and numpy scalars made plain, recursively through dicts, lists and
    tuples: NaN -> None; +-inf stay floats, which :func:`dumps_json` writes as the JSON numbers
    +-1e999 (see the module docstring)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if hasattr(value, "tolist") and callable(value.tolist):  # torch / numpy scalars and arrays
        return jsonable(value.tolist())
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return None if math.isnan(value) else float(value)
    return str(value)


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?Infinity')


def dumps_json(obj: Any, indent: int | None = 1) -> str:
    """``obj`` (through :func:`jsonable`) as strict JSON: NaN as ``null``, +-inf as the numbers
    ``1e999`` / ``-1e999`` (every JSON reader parses them as +-infinity, Python's included)."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=True)
    return _JSON_TOKEN.sub(lambda m: m[0] if m[0][0] == '"' else m[0].replace("Infinity", "1e999"), text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (:func:`dumps_json`), atomically."""
    text = dumps_json(obj) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    """Write ``df`` to Parquet (pyarrow, no index; :data:`SCHEMA_VERSION` in the metadata as
    ``marina_schema``), atomically."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"marina_schema": str(SCHEMA_VERSION).encode()}
    table = table.replace_schema_metadata(meta)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def schema_version(path: str | os.PathLike) -> int:
    """The ``marina_schema`` of a Parquet file written by marina (1 for files older than it)."""
    meta = pq.read_schema(path).metadata or {}
    return int(meta.get(b"marina_schema", b"1"))


def _lock_timeout_error(path: Path, timeout: float, holder: str) -> LockTimeoutError:
    return LockTimeoutError(
        f"the lock of {holder} is still held by another process after {timeout:g} s "
        f"(lock file {str(path)!r}): "
        "another marina run or sweep is writing there; wait for it to finish or stop it"
    )


@contextlib.contextmanager
def _locked(out: Path, timeout: float | None = None) -> Iterator[None]:
    """Exclusive lock on ``out/.lock`` (:class:`filelock.FileLock`: ``flock`` on POSIX, released
    by the system when the holder dies). Waits at most ``timeout`` seconds (None: for ever),
    then raises :class:`marina.errors.LockTimeoutError`."""
    out.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(out / LOCK_FILE)
    try:
        lock.acquire(timeout=-1 if timeout is None else timeout)
    except filelock.Timeout:
        raise _lock_timeout_error(
            out / LOCK_FILE, float(timeout or 0), f"the results directory {str(out)!r}"
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def run_lock(out: str | os.PathLike, run_id: str, timeout: float | None = None) -> Iterator[bool]:
    """Hold the lock of one run (``runs/<run_id>/.lock``, a :class:`filelock.FileLock`) while
    computing it, so two processes never compute the same run at once. Yields whether another
    process held it (this one waited, at most ``timeout`` seconds, None: for ever; then
    :class:`marina.errors.LockTimeoutError`): the run may be complete now. The lock file is
    removed on release, so a run's folder holds only its own files."""
    folder = run_dir(out, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(folder / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
        waited = False
    except filelock.Timeout:
        busy = f"run {run_id} is being computed by another process; waiting for it"
        warnings.warn(MarinaWarning(busy), stacklevel=3)
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except filelock.Timeout:
            raise _lock_timeout_error(folder / LOCK_FILE, float(timeout or 0), f"run {run_id}") from None
        waited = True
    try:
        yield waited
    finally:  # the file goes while still locked: a waiter then finds the run's record
        with contextlib.suppress(OSError):
            os.unlink(folder / LOCK_FILE)
        lock.release()


def completed_record(out: str | os.PathLike, run_id: str) -> dict[str, Any] | None:
    """The record of ``run_id`` if the run is complete in ``out`` (terminal status, readable
    history), else None."""
    record = read_run_record(out, run_id)
    return record if record is not None and _is_complete(Path(out), record) else None


# -- per-run files ---------------------------------------------------------------------------------
def run_dir(out: str | os.PathLike, run_id: str) -> Path:
    """``out/runs/<run_id>``: where one run keeps its own files.

    Raises:
        ConfigError: when that folder is a symbolic link, or ``runs/`` leads outside ``out``
            (marina never reads or writes a run's files through a link).
    """
    path = Path(out) / RUNS_DIR / run_id
    why = _escapes(Path(out), path)
    if why:
        raise ConfigError(f"{path} {why}; remove the link")
    return path


def _escapes(out: Path, folder: Path) -> str:
    """Why a run's folder is not a real folder inside ``out`` (empty when it is)."""
    if folder.is_symlink():
        return f"is a symbolic link to {folder.resolve()}, outside its own folder of {out}"
    runs = folder.parent
    if runs.exists() and not runs.resolve().is_relative_to(out.resolve()):
        return f"is in {runs}, which leads outside {out} (to {runs.resolve()})"
    return ""


def checkpoint_path(out: str | os.PathLike, run_id: str) -> Path:
    """Where a run of ``out`` keeps its checkpoint while in flight."""
    return run_dir(out, run_id) / CHECKPOINT_FILE


def history_frame(record: dict[str, Any], history: pd.DataFrame) -> pd.DataFrame:
    """``history`` with the run's configuration columns (:data:`CONFIG_COLUMNS`) in front."""
    config = record["config"]
    history = history.reset_index(drop=True)
    n = len(history)
    given = config.get("params") or {}
    params = {c: v for p in parameters.PARAMETERS for c, v in p.column_values(given.get(p.name)).items()}
    cols: dict[str, pd.Series] = {}
    for name, dtype in CONFIG_COLUMNS.items():
        if name == "run_id":
            value = record["run_id"]
        elif name == "m":
            value = record.get("m")
        elif name in PARAM_COLUMNS:
            value = params[name]
        else:
            value = config.get(name)
        cols[name] = pd.Series([value] * n, dtype=dtype if value is not None else _missing(dtype))
    front = pd.DataFrame(cols)
    extra = [c for c in history.columns if c in front.columns]
    if extra:
        raise ValueError(f"history columns {extra} clash with configuration columns")
    return pd.concat([front, history], axis=1)


def _missing(dtype: str) -> str:
    return dtype if dtype in ("float64", "Int64", "string", "boolean") else "float64"


def write_run(out: str | os.PathLike, record: dict[str, Any], history: pd.DataFrame | None = None) -> Path:
    """Write one run's files: ``history.parquet`` (if given) first, then ``run.json``.

    ``record`` must hold ``run_id``, ``status`` and ``config``. The history is stored as its
    rows of ``results.parquet`` (:func:`history_frame`: configuration columns in front), and the
    record gets ``schema`` = :data:`SCHEMA_VERSION`. Since ``run.json`` is written last, a run is
    complete exactly when its ``run.json`` says so, whatever moment a kill hits.
    """
    directory = run_dir(out, record["run_id"])
    record = {**record, "schema": SCHEMA_VERSION}
    if history is not None:
        atomic_write_parquet(directory / HISTORY_FILE, history_frame(record, history))
    return atomic_write_json(directory / RECORD_FILE, record)


def _damaged(path: Path, err: BaseException, consequence: str) -> None:
    warnings.warn(
        DamagedFileWarning(f"{path} is damaged ({type(err).__name__}: {err}); {consequence}"), stacklevel=3
    )


_NUMBER_STRINGS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _restore_numbers(value: Any) -> Any:
    """Metrics of records written before numbers-or-null: "inf" / "-inf" / "nan" -> floats."""
    if isinstance(value, dict):
        return {k: _restore_numbers(v) for k, v in value.items()}
    if isinstance(value, str) and value in _NUMBER_STRINGS:
        return _NUMBER_STRINGS[value]
    return value


class _NotRegular(ValueError):
    """A per-run path that is not a regular file below its size cap."""


def _open_regular(path: Path, cap: int) -> int:
    """A descriptor of ``path`` opened for reading without blocking (a named pipe would), when
    it is a regular file of at most ``cap`` bytes; FileNotFoundError, or _NotRegular saying why."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a device, pipe or socket"
            raise _NotRegular(f"not a regular file but {kind}")
        if st.st_size > cap:
            raise _NotRegular(
                f"{st.st_size} bytes, more than the {cap} bytes a marina file of its kind holds"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_regular(path: Path, cap: int) -> None:
    os.close(_open_regular(path, cap))


def _read_bounded(path: Path, cap: int) -> str:
    with os.fdopen(_open_regular(path, cap), "rb") as fh:
        return fh.read(cap + 1).decode("utf-8")


_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    **{k: (str,) for k in ("problem", "split", "method", "compressor", "device")},
    **{k: (int,) for k in ("workers", "seed", "iterations", "log_every")},
    "params": (dict,),
    "link": (str, type(None)),
}
"""Types of the configuration fields a record may hold (others are ignored)."""


def _check_config(config: dict[str, Any]) -> None:
    for key, kinds in _CONFIG_TYPES.items():
        value = config.get(key)
        if key in config and (not isinstance(value, kinds) or isinstance(value, bool)):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise ValueError(f"config {key!r} == {shown}, must be a {names}")


def _read_record(path: Path) -> dict[str, Any] | None:
    """The record of a ``run.json``; None if missing, or damaged (reported: the run is not done)."""
    try:
        record = json.loads(_read_bounded(path, MAX_RECORD_BYTES))
        if not isinstance(record, dict):
            raise ValueError(f"a JSON {type(record).__name__}, not an object")
        for key, kind in (("run_id", str), ("status", str), ("config", dict)):
            if not isinstance(record.get(key), kind):
                raise ValueError(f"{key!r} missing or not a {kind.__name__}")
        if record["run_id"] != path.parent.name:
            raise ValueError(f"run_id {record['run_id']!r} is not its folder's name")
        _check_config(record["config"])
    except FileNotFoundError:
        return None
    except RecursionError:
        _damaged(
            path, ValueError("JSON nested too deeply"), "the run is treated as not done and will be run again"
        )
        return None
    except (ValueError, OSError) as err:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        _damaged(path, err, "the run is treated as not done and will be run again")
        return None
    for key in ("final", "params"):
        if isinstance(record.get(key), dict):
            record[key] = _restore_numbers(record[key])
    return record


def _history_readable(path: Path, run_id: str) -> bool:
    """Whether a run's ``history.parquet`` exists, is a regular file below
    :data:`MAX_HISTORY_BYTES`, its footer reads, its metric columns (:data:`HISTORY_COLUMNS`) are
    numbers and its ``run_id`` column (schema >= 2) holds ``run_id`` only (damage is reported)."""
    try:
        _check_regular(path, MAX_HISTORY_BYTES)
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
        for column in HISTORY_COLUMNS:
            if column in schema.names:
                kind = schema.field(column).type
                if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                    raise ValueError(f"column {column!r} holds {kind}, not numbers")
        if "run_id" in schema.names:
            ids = _run_ids(path, meta, schema.get_field_index("run_id"))
            if ids not in ([], [run_id]):  # no rows: nothing of another run
                shown = ", ".join(repr(i) for i in ids[:3]) + (", ..." if len(ids) > 3 else "")
                raise ValueError(f"holds the rows of run_id {shown}, not of its folder's run {run_id!r}")
    except FileNotFoundError:
        return False
    except (OSError, ValueError, pa.ArrowException) as err:
        _damaged(path, err, "the run is treated as not done and will be run again")
        return False
    return True


def _run_ids(path: Path, meta: Any, column: int) -> list[str]:
    """The distinct ``run_id`` values of a history: from the row groups' min/max statistics
    when each holds one value, else read from the column."""
    found: set[str] = set()
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max or stats.min != stats.max:
            return pq.read_table(path, columns=["run_id"]).column(0).unique().to_pylist()
        found.add(stats.min)
    return sorted(found)


def read_history(out: str | os.PathLike, record: dict[str, Any]) -> pd.DataFrame:
    """A completed run's rows of ``results.parquet`` (files of schema 1 get their
    configuration columns here)."""
    frame = pd.read_parquet(run_dir(out, record["run_id"]) / HISTORY_FILE)
    return with_config_columns(frame) if "run_id" in frame.columns else history_frame(record, frame)


def with_config_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the configuration columns an older schema lacks (``p_rule`` before
    schema 3) inserted, in :data:`CONFIG_COLUMNS` order, as missing values."""
    missing = [c for c in CONFIG_COLUMNS if c not in frame.columns]
    if not missing or "run_id" not in frame.columns:
        return frame
    frame = frame.copy()
    for name in missing:
        at = list(CONFIG_COLUMNS).index(name)
        before = [c for c in list(CONFIG_COLUMNS)[:at] if c in frame.columns]
        pos = frame.columns.get_loc(before[-1]) + 1 if before else 0
        frame.insert(pos, name, pd.Series([None] * len(frame), dtype=_missing(CONFIG_COLUMNS[name])))
    return frame


def read_run_record(out: str | os.PathLike, run_id: str) -> dict[str, Any] | None:
    """The ``run.json`` record of ``run_id`` in ``out``, or None if there is none yet."""
    return _read_record(run_dir(out, run_id) / RECORD_FILE)


def _records(out: Path) -> list[dict[str, Any]]:
    runs = out / RUNS_DIR
    if not runs.is_dir():
        return []
    found = []
    for path in sorted(runs.glob(f"*/{RECORD_FILE}")):
        why = _escapes(out, path.parent)
        if why:
            warnings.warn(DamagedFileWarning(f"{path.parent} {why}; not read"), stacklevel=3)
            continue
        found.append(_read_record(path))
    return [r for r in found if r is not None]


def _is_complete(out: Path, record: dict[str, Any]) -> bool:
    return record.get("status") in TERMINAL_STATUSES and _history_readable(
        run_dir(out, record["run_id"]) / HISTORY_FILE, record["run_id"]
    )


def completed_run_ids(out: str | os.PathLike) -> set[str]:
    """Ids of the runs of ``out`` that completed (terminal status and history on disk)."""
    out = Path(out)
    return {r["run_id"] for r in _records(out) if _is_complete(out, r)}


def _sort_key(record: dict[str, Any]) -> tuple:
    c = record.get("config", {})
    return (
        str(c.get("problem")),
        int(c.get("workers") or 0),
        str(c.get("method")),
        str(c.get("compressor")),
        json.dumps(c.get("params") or {}, sort_keys=True),
        int(c.get("iterations") or 0),
        int(c.get("seed") or 0),
        record["run_id"],
    )


def rebuild(out: str | os.PathLike) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Rebuild ``results.parquet`` (completed runs) and ``runs.json`` (every run) from the
    per-run files of ``out``, atomically and under the directory lock. Returns both."""
    out = Path(out)
    with _locked(out):
        # temporaries of a rebuild killed mid-write (rebuilds hold the lock: none is in flight)
        for name in (RESULTS_FILE, RUNS_FILE):
            for stale in out.glob(f".{name}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        records = sorted(_records(out), key=_sort_key)
        frames = [f for f in (_readable_history(out, r) for r in records) if f is not None]
        if frames:
            df = pd.concat(frames, ignore_index=True)
        else:
            df = pd.DataFrame({c: pd.Series(dtype=t) for c, t in CONFIG_COLUMNS.items()})
        atomic_write_parquet(out / RESULTS_FILE, df)
        atomic_write_json(out / RUNS_FILE, records)
    return df, records


def collect(out: str | os.PathLike) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """:func:`rebuild` of an existing results directory (``marina collect DIR``)."""
    out = Path(out)
    if not (out / RUNS_DIR).is_dir():
        raise ConfigError(f"{str(out)!r} is not a results directory: no {RUNS_DIR}/ folder in it")
    return rebuild(out)


def _readable_history(out: Path, record: dict[str, Any]) -> pd.DataFrame | None:
    """A completed run's rows, or None (not complete, or its history is damaged: reported)."""
    if not _is_complete(out, record):
        return None
    try:
        return read_history(out, record)
    except (OSError, ValueError, pa.ArrowException) as err:
        path = run_dir(out, record["run_id"]) / HISTORY_FILE
        _damaged(path, err, "its rows are left out of results.parquet; remove it to run it again")
        return None


def load_results(out: str | os.PathLike) -> pd.DataFrame:
    """The combined table of a results directory (rebuilt first if it is missing or older than
    a per-run file, e.g. after a killed sweep)."""
    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"results directory {str(out)!r} does not exist")
    path = out / RESULTS_FILE
    newest = max(
        (p.stat().st_mtime for p in (out / RUNS_DIR).glob(f"*/{RECORD_FILE}")),
        default=None,
    )
    if newest is not None and (not path.is_file() or path.stat().st_mtime < newest):
        return rebuild(out)[0]
    if not path.is_file():
        raise ConfigError(
            f"{str(out)!r} is not a results directory: no {RESULTS_FILE} and no {RUNS_DIR}/*/"
            f"{RECORD_FILE} (write one with `marina run --out` or `marina sweep --out`)"
        )
    try:
        return with_config_columns(pd.read_parquet(path))
    except (OSError, ValueError, pa.ArrowException) as err:
        if not (out / RUNS_DIR).is_dir():
            raise ConfigError(
                f"{path} is damaged ({err}) and there is no {RUNS_DIR}/ to rebuild it from"
            ) from None
        _damaged(path, err, f"rebuilt from {out / RUNS_DIR}")
        return rebuild(out)[0]


def load_runs(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The run records of ``out`` (``runs.json``, or the per-run files if it is missing or
    damaged)."""
    out = Path(out)
    path = out / RUNS_FILE
    if path.is_file():
        try:
            runs = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
                raise ValueError("not a JSON list of run records")
            return [_restore_numbers(r) for r in runs]
        except ValueError as err:
            _damaged(path, err, f"the records are read from {out / RUNS_DIR} instead")
    return sorted(_records(out), key=_sort_key)
