"""Atomic file writes: readers, and a process killed at any moment, never see a partial file."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _disk_full(directory: Path) -> bool:
    """Whether the file system of ``directory`` has (almost) no room left for this user."""
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):  # pragma: no cover - no statvfs
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create ``path`` atomically: ``write(tmp)`` fills a temporary file next to it, which is
    fsynced and renamed over ``path`` (``os.replace``); the directory is fsynced after.

    Readers see either the old file or the complete new one, never a partial file, whatever
    happens to this process (including SIGKILL) or the machine. A failed write raises an
    OSError naming ``path`` (ENOSPC when the disk is full, whatever the writer raised).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have created
        try:
            write(tmp)
        except Exception as err:
            if _disk_full(path.parent):  # writers hide ENOSPC (torch.save: "iostream error")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
            if isinstance(err, OSError) and err.filename is None:  # name the file (pyarrow does not)
                raise OSError(err.errno, err.strerror or str(err), str(path)) from err
            raise
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path
