"""LibSVM / svmlight binary-classification data: bundled sets by name, or any file by path.

Parsing uses scikit-learn's :func:`sklearn.datasets.load_svmlight_file` (plain, ``.gz`` and
``.bz2`` files). Labels are mapped to {-1, +1}: a file must use exactly two distinct label
values; the larger one becomes +1 (so mushrooms' {1, 2} -> {-1, +1}, phishing's {0, 1} ->
{-1, +1}). Features stay sparse (``scipy.sparse.csr_matrix``, float64) throughout.

Bundled data sets (see ``src/marina/data/libsvm/SOURCES.md`` for provenance and checksums) are
looked up with :mod:`importlib.resources` in the package folder ``marina/data/libsvm``; their
``n_features`` is fixed to the LibSVM page's figure (a9a.t uses only 122 of a9a's 123 columns).

A file is parsed only if its text fits the memory budget (:mod:`marina.memory`): parsing takes
up to :data:`TEXT_FACTOR` bytes of memory per byte of text, so a plain file is checked by its
size before it is read, and a compressed one is decompressed in pieces of :data:`PIECE_BYTES`
into memory, stopping (MemoryBudgetError) as soon as its text passes the budget over
:data:`TEXT_FACTOR` (a compression bomb costs that much time, no more), or at the first NUL
byte (binary data: never LibSVM text). Bundled files are trusted.

Parsed files are cached in memory per process (keyed by resolved path, size and modification
time), so tests and sweeps that rebuild problems pay for parsing once. Cached arrays are
read-only; code that transforms them makes copies.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from marina import memory
from marina.errors import ConfigError, MemoryBudgetError

__all__ = [
    "BUNDLED",
    "Dataset",
    "bundled_dir",
    "bundled_names",
    "bundled_path",
    "clear_cache",
    "load",
    "resolve",
]

BUNDLED: dict[str, int] = {
    "a9a": 123,
    "a9a.t": 123,
    "w8a": 300,
    "mushrooms": 112,
    "phishing": 68,
    "ijcnn1": 22,
    "ijcnn1.t": 22,
}
"""Bundled data set name -> number of features (the LibSVM datasets page's figure)."""

TEXT_FACTOR = 4
"""Bytes of memory that parsing a LibSVM text takes per byte of it, at most: the text itself,
and every feature token of at least 4 bytes (``"1:1 "``) becomes a float64 value and an int32
index (12 bytes)."""
PIECE_BYTES = 2**20
"""Decompressed bytes read at a time from a compressed file."""
MAX_FEATURE_INDEX = 2**31 - 2
"""Largest feature index a file may use (the parser's indices are int32)."""


@dataclass(frozen=True)
class Dataset:
    """A parsed binary-classification data set.

    Attributes:
        name: bundled name, or the file name for a path.
        path: the file it was read from.
        X: (N, d) float64 CSR matrix of features (read-only arrays).
        y: (N,) float64 labels in {-1, +1} (read-only).
        label_values: the file's two label values (low, high); low -> -1, high -> +1.
        label_counts: {file label value: count}.
    """

    name: str
    path: str
    X: sp.csr_matrix
    y: np.ndarray
    label_values: tuple[float, float]
    label_counts: dict[float, int]

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def nnz(self) -> int:
        return int(self.X.nnz)

    @property
    def density(self) -> float:
        """nnz / (N d)."""
        return self.nnz / max(1, self.n_rows * self.n_features)


def bundled_dir() -> Path:
    """The folder that holds the bundled files (``marina/data/libsvm`` inside the package)."""
    return Path(str(resources.files("marina") / "data" / "libsvm"))


def bundled_names() -> list[str]:
    """Names of the bundled data sets, in the order of :data:`BUNDLED`."""
    return list(BUNDLED)


def bundled_path(name: str) -> Path:
    """Path of a bundled data set's (gzip-compressed) file.

    Args:
        name: a bundled data set's name (a key of :data:`BUNDLED`).
    """
    if name not in BUNDLED:
        raise ConfigError(
            f"data set {name!r} is not bundled; bundled data sets (in {bundled_dir()}): {', '.join(BUNDLED)}"
        )
    return bundled_dir() / f"{name}.gz"


def resolve(name_or_path: str | os.PathLike[str]) -> tuple[str, Path, int | None]:
    """(display name, file path, n_features or None) for a bundled name or a file path.

    A string that names a bundled data set wins over a file of the same name in the current
    folder. Anything else must be an existing file.

    Args:
        name_or_path: a bundled data set's name or a LibSVM file's path.
    """
    text = os.fspath(name_or_path)
    if text in BUNDLED:
        return text, bundled_path(text), BUNDLED[text]
    path = Path(text).expanduser()
    if path.is_dir():
        raise ConfigError(f"data set {text!r} is a directory, must be a LibSVM file or a bundled name")
    if not path.is_file():
        raise ConfigError(
            f"data set {text!r}: no such file, and not a bundled name; bundled data sets "
            f"(looked up in {bundled_dir()}): {', '.join(BUNDLED)}"
        )
    return path.name, path, None


def load(name_or_path: str | os.PathLike[str], n_features: int | None = None) -> Dataset:
    """Load a bundled data set by name or a LibSVM file by path (cached per process).

    Args:
        name_or_path: a bundled name (:func:`bundled_names`) or a path to a LibSVM/svmlight
            file, plain or compressed (``.gz``, ``.bz2``).
        n_features: number of feature columns (default: the LibSVM page's figure for bundled
            sets, the largest index used for files). Must be >= the largest index used.

    Raises:
        ConfigError: missing file, malformed line (file and line number), labels that are not
            exactly two distinct values.
    """
    name, path, default_d = resolve(name_or_path)
    if n_features is None:
        n_features = default_d
    elif n_features < 1:
        raise ConfigError(f"n_features == {n_features}, must be >= 1")
    stat = path.stat()
    trusted = default_d is not None  # bundled
    return _load_cached(name, str(path.resolve()), n_features, stat.st_size, stat.st_mtime_ns, trusted)


def clear_cache() -> None:
    """Forget every parsed file (the next :func:`load` parses again)."""
    _load_cached.cache_clear()


def _compressed(path: str) -> bool:
    return path.endswith((".gz", ".bz2"))


def _bounded_text(path: str, size: int) -> str | io.BytesIO:
    """What the parser reads: ``path`` itself when it is plain text that fits the budget, the
    decompressed text of a compressed file when that fits (read in pieces, refused as soon as
    it passes); MemoryBudgetError otherwise."""
    if not _compressed(path):
        memory.check(
            {"text": size, "parsed arrays": (TEXT_FACTOR - 1) * size},
            f"{path}: {memory.format_bytes(size)} of text",
        )
        return path
    limit, source = memory.budget()
    most = limit // TEXT_FACTOR
    text = io.BytesIO()
    try:
        with _open_text(path) as fh:
            while piece := fh.read(PIECE_BYTES):
                nul = piece.find(b"\0")
                if nul >= 0:  # never in a text file: binary data, or a bomb of zeros
                    raise ConfigError(
                        f"{path}: not a LibSVM text file (a NUL byte at byte {text.tell() + nul} of its "
                        "decompressed contents)"
                    )
                text.write(piece)
                if text.tell() > most:
                    raise MemoryBudgetError(
                        f"{path}: decompresses to more than {memory.format_bytes(most)} of text, and "
                        f"parsing takes up to {TEXT_FACTOR} bytes of memory per byte of text: more than "
                        f"the memory budget of {memory.format_bytes(limit)} ({source})"
                    )
    except (OSError, EOFError, ValueError) as err:  # corrupt stream (BadGzipFile is an OSError)
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path}: cannot decompress ({type(err).__name__}: {err})") from None
    text.seek(0)
    return text


@functools.lru_cache(maxsize=16)
def _load_cached(
    name: str, path: str, n_features: int | None, size: int, mtime_ns: int, trusted: bool = False
) -> Dataset:
    from sklearn.datasets import load_svmlight_file

    source = path if trusted else _bounded_text(path, size)
    try:
        X, y = load_svmlight_file(source, n_features=n_features, dtype=np.float64)
    except Exception as err:  # sklearn raises ValueError/TypeError/IndexError with no line number
        where = _first_bad_line(path)
        if where is not None:
            lineno, line, why = where
            raise ConfigError(f"{path}:{lineno}: malformed LibSVM line ({why}): {line[:80]!r}") from err
        raise ConfigError(f"{path}: cannot parse as LibSVM/svmlight: {err}") from err
    if X.shape[0] == 0:
        raise ConfigError(f"{path}: no data rows")
    _check_values(path, X, y)
    _check_dim(path, int(X.shape[1]), n_features)
    X = sp.csr_matrix(X, dtype=np.float64)
    X.sum_duplicates()
    X.sort_indices()
    values, counts = np.unique(y, return_counts=True)
    if values.size != 2:
        shown = ", ".join(f"{v:g}" for v in values[:10]) + (", ..." if values.size > 10 else "")
        raise ConfigError(
            f"{path}: {values.size} distinct label values ({shown}), must be exactly 2 "
            "(binary classification)"
        )
    del source  # the decompressed text, if any
    low, high = float(values[0]), float(values[1])
    y_pm = np.where(y == high, 1.0, -1.0)
    for arr in (X.data, X.indices, X.indptr, y_pm):
        arr.flags.writeable = False
    return Dataset(
        name=name,
        path=path,
        X=X,
        y=y_pm,
        label_values=(low, high),
        label_counts={low: int(counts[0]), high: int(counts[1])},
    )


def _open_text(path: str) -> Iterator[bytes]:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def _line_problem(line: bytes) -> str | None:
    """Why a LibSVM line is malformed, or None when it is well formed (comments allowed)."""
    text = line.split(b"#", 1)[0].strip()
    if not text:
        return None
    tokens = text.split()
    try:
        float(tokens[0])
    except ValueError:
        return f"label {tokens[0].decode(errors='replace')!r} is not a number"
    last = -1
    for tok in tokens[1:]:
        key, sep, value = tok.partition(b":")
        if not sep:
            return f"token {tok.decode(errors='replace')!r} is not index:value"
        if key == b"qid":
            continue
        try:
            index = int(key)
            float(value)
        except ValueError:
            return f"token {tok.decode(errors='replace')!r} is not index:value"
        if index < 0:
            return f"negative feature index {index}"
        if index > MAX_FEATURE_INDEX:
            return f"feature index {index}, must be at most {MAX_FEATURE_INDEX}"
        if index <= last:
            return f"feature indices not increasing ({last} then {index})"
        last = index
    return None


def _first_bad_line(
    path: str, problem: Callable[[bytes], str | None] = _line_problem
) -> tuple[int, str, str] | None:
    """(line number, line text, reason) of the first line of a LibSVM file for which
    ``problem(line)`` gives a reason (default: the first malformed line)."""
    try:
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                why = problem(line)
                if why is not None:
                    return lineno, line.decode(errors="replace").rstrip("\n"), why
    except (OSError, EOFError, ValueError):
        return None
    return None


MAX_ABS_VALUE = 1e30
"""Largest magnitude of a feature value or label: the smoothness constants use squared row
norms squared (sum_k a_k^2)^2, finite in float64 for any realistic row below it, and the value
itself fits float32 (3.4e38)."""


def _values(line: bytes) -> list[tuple[str, float]]:
    """(what, value) of a well-formed line's label and feature values (qid left out)."""
    tokens = line.split(b"#", 1)[0].split()
    out = [("label", float(tokens[0]))] if tokens else []
    for tok in tokens[1:]:
        key, _, value = tok.partition(b":")
        if key != b"qid":
            out.append((f"feature {key.decode(errors='replace')}", float(value)))
    return out


def _value_problem(line: bytes) -> str | None:
    for what, v in _values(line):
        if not np.isfinite(v):
            return f"{what} is {v}, must be finite"
        if abs(v) > MAX_ABS_VALUE:
            return f"{what} is {v:g}, must be at most {MAX_ABS_VALUE:g} in magnitude"
    return None


def _check_values(path: str, X: sp.csr_matrix, y: np.ndarray) -> None:
    """ConfigError naming the file and line of the first non-finite or huge value."""
    ok = bool(np.all(np.abs(X.data) <= MAX_ABS_VALUE)) and bool(np.all(np.abs(y) <= MAX_ABS_VALUE))
    if ok:  # NaN fails both comparisons
        return
    where = _first_bad_line(path, _value_problem)
    if where is None:
        raise ConfigError(f"{path}: holds a non-finite value or one beyond {MAX_ABS_VALUE:g}")
    lineno, line, why = where
    raise ConfigError(f"{path}:{lineno}: {why}: {line[:80]!r}")


def _check_dim(path: str, d: int, n_features: int | None) -> None:
    """Refuse a dimension no run could hold (MemoryBudgetError naming the line that sets it)."""
    need = memory.state_bytes(1, d)
    if need <= memory.budget()[0]:
        return
    if n_features is not None:
        what = f"{path}: n_features == {d}"
    else:

        def sets_dim(line: bytes) -> str | None:
            keys = [int(w.split()[1]) for w, _ in _values(line) if w.startswith("feature ")]
            return "" if keys and max(keys) >= d - 1 else None  # one- or zero-based indices

        where = _first_bad_line(path, sets_dim)
        what = f"{path}:{where[0]}: feature index {d}" if where else f"{path}: dimension {d}"
    memory.check({"method state at n = 1": need}, f"{what} makes d = {d}, and a run")
