"""Progress of runs and sweeps: terminal bars, plain lines for logs, tqdm in notebooks.

One bar per run in flight (rounds done, rounds per second, current ||grad f||^2) under an
optional header for the sweep (runs done out of the total), on stderr, in one of the
:data:`MODES`: ``bars`` redrawn in place when stderr is a terminal; ``lines`` otherwise (nohup,
SLURM logs, pipes): one plain line per run every ``line_interval`` seconds and one per finished
run; ``tqdm`` (``tqdm.auto``: widgets in Jupyter) in a notebook when tqdm is installed; ``off``
with ``--quiet``. :meth:`ProgressDisplay.message` lines are printed in every mode but ``off``'s
bars-free plain form.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["MODES", "ProgressDisplay", "terminal_enabled"]

MODES = ("bars", "lines", "tqdm", "off")


def terminal_enabled(stream: TextIO | None = None, quiet: bool = False) -> bool:
    """Whether live bars should be drawn on ``stream`` (default stderr)."""
    stream = sys.stderr if stream is None else stream
    if quiet or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def auto_mode(stream: TextIO | None = None) -> str:
    """``bars`` on a terminal, ``tqdm`` in a notebook with tqdm installed, else ``lines``."""
    if terminal_enabled(stream):
        return "bars"
    if _in_notebook():
        if importlib.util.find_spec("tqdm") is not None:
            return "tqdm"
    return "lines"


def _fmt_num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2e}"


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class Bar:
    """State of one bar: ``done`` out of ``total`` units (rounds, or runs for a sweep)."""

    desc: str
    total: int
    unit: str = "rounds"
    done: int = 0
    value: float | None = None
    value_name: str = "|grad f|^2"
    elapsed: bool = False
    """Show the time since the bar started instead of the rate (the sweep's bar)."""
    started: float = field(default_factory=time.monotonic)
    _base: int | None = None
    _base_time: float | None = None

    def update(self, done: int, value: float | None = None) -> None:
        """Move to ``done`` units (absolute; the first update fixes the rate's origin, so a
        run resumed from a checkpoint reports its own speed)."""
        now = time.monotonic()
        if self._base is None:
            self._base, self._base_time = int(done), now
        self.done = int(done)
        if value is not None:
            self.value = float(value)

    @property
    def rate(self) -> float | None:
        """Units per second since the first update."""
        if self._base is None or self._base_time is None:
            return None
        elapsed = time.monotonic() - self._base_time
        if elapsed <= 0 or self.done <= self._base:
            return None
        return (self.done - self._base) / elapsed

    def status(self) -> str:
        """The bar as plain text: ``desc: done/total unit, rate unit/s, value``."""
        parts = [f"{self.desc}: {self.done}/{self.total} {self.unit}"]
        if self.elapsed:
            parts.append(f"{_clock(time.monotonic() - self.started)} elapsed")
        elif (rate := self.rate) is not None:
            parts.append(f"{_fmt_num(rate)} {self.unit}/s")
        if self.value is not None:
            parts.append(f"{self.value_name} {self.value:.3e}")
        return ", ".join(parts)

    def render(self, width: int) -> str:
        """The bar as one line of at most ``width`` characters."""
        frac = min(1.0, self.done / self.total) if self.total > 0 else 0.0
        right = f" {self.done}/{self.total} {self.unit}"
        if self.elapsed:
            right += f" {_clock(time.monotonic() - self.started)} elapsed"
        elif (rate := self.rate) is not None:
            right += f" {_fmt_num(rate)} {self.unit}/s"
        if self.value is not None:
            right += f" {self.value_name} {self.value:.3e}"
        desc = self.desc
        bar_width = max(10, min(30, width - len(desc) - len(right) - 4))
        filled = int(round(frac * bar_width))
        line = f"{desc} [{'#' * filled}{'.' * (bar_width - filled)}]{right}"
        return line[:width]


class ProgressDisplay:
    """Progress of runs (and a sweep) in one of the :data:`MODES`.

    Args:
        stream: where to write (default stderr).
        enabled: False: ``off``; True: ``bars``; None (default): ``mode``, else :func:`auto_mode`.
        min_interval: seconds between redraws of bars (updates in between are folded together).
        mode: one of :data:`MODES` (overrides ``enabled``).
        line_interval: ``lines`` mode: seconds between two lines of one run.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        min_interval: float = 0.1,
        mode: str | None = None,
        line_interval: float = 5.0,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        if mode is None:
            mode = auto_mode(self.stream) if enabled is None else ("bars" if enabled else "off")
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}; allowed: {', '.join(MODES)}")
        self.mode = mode
        self.enabled = mode != "off"
        self.min_interval = min_interval
        self.line_interval = line_interval
        self.header: Bar | None = None
        self.bars: dict[Any, Bar] = {}
        self._drawn = 0
        self._last = 0.0
        self._printed: dict[Any, float] = {}  # lines: when each bar last printed
        self._tqdm: dict[Any, Any] = {}  # tqdm: the tqdm object of each bar (None: the header)

    # -- bars --------------------------------------------------------------------------------------
    def set_header(self, desc: str, total: int, unit: str = "runs", done: int = 0) -> Bar:
        """The sweep's own bar (``done`` of ``total`` already), drawn above the per-run bars."""
        self.header = Bar(desc, total, unit=unit, value_name="", elapsed=True)
        self.header.update(done)
        if self.mode == "tqdm":
            self._tqdm[None] = self._new_tqdm(desc, total, unit, done)
        return self.header

    def add(self, key: Any, desc: str, total: int) -> Bar:
        bar = Bar(desc, total)
        self.bars[key] = bar
        if self.mode == "tqdm":
            self._tqdm[key] = self._new_tqdm(desc, total, "rounds", 0)
        self._printed[key] = time.monotonic()
        self.refresh()
        return bar

    def update(self, key: Any, done: int, value: float | None = None) -> None:
        bar = self.bars.get(key)
        if bar is None:
            return
        bar.update(done, value)
        if self.mode == "lines":
            now = time.monotonic()
            if now - self._printed.get(key, 0.0) >= self.line_interval:
                self._printed[key] = now
                self._write(bar.status())
        elif self.mode == "tqdm":
            self._tqdm_set(key, bar)
        self.refresh()

    def _new_tqdm(self, desc: str, total: int, unit: str, done: int) -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=total, desc=desc, unit=unit.rstrip("s"), initial=done, file=self.stream, leave=False
        )

    def _tqdm_set(self, key: Any, bar: Bar) -> None:
        t = self._tqdm.get(key)
        if t is not None:
            t.update(bar.done - t.n)
            if bar.value is not None:
                t.set_postfix_str(f"{bar.value_name} {bar.value:.3e}", refresh=False)

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def callback(self, key: Any):
        """A ``progress`` callback for :func:`marina.run`: ``callback(row, iterations)`` with a
        history row (a mapping with ``iteration`` and ``grad_norm_sq``) updates bar ``key``."""

        def on_row(row: Mapping[str, Any], total: int | None = None) -> None:
            self.update(key, int(row["iteration"]), float(row["grad_norm_sq"]))

        return on_row

    def remove(self, key: Any) -> None:
        self.bars.pop(key, None)
        self._printed.pop(key, None)
        t = self._tqdm.pop(key, None)
        if t is not None:
            t.close()
        self.refresh(force=True)

    def advance_header(self, n: int = 1) -> None:
        if self.header is not None:
            self.header.update(self.header.done + n)
            if self.mode == "lines":
                self._write(self.header.status())
            elif self.mode == "tqdm":
                self._tqdm_set(None, self.header)
            self.refresh(force=True)

    # -- drawing -------------------------------------------------------------------------------------
    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return max(40, columns - 1) if columns > 0 else 119

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def refresh(self, force: bool = False) -> None:
        """Redraw bars (at most every ``min_interval`` seconds unless ``force``)."""
        if self.mode != "bars":
            return
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        width = self._width()
        lines = ([self.header] if self.header is not None else []) + list(self.bars.values())
        self._clear()
        for bar in lines:
            self.stream.write(bar.render(width) + "\n")
        self._drawn = len(lines)
        self.stream.flush()

    def message(self, text: str) -> None:
        """Print a line above the bars (plainly when bars are off)."""
        if self.mode == "bars":
            self._clear()
        if self.mode == "tqdm":
            from tqdm.auto import tqdm

            tqdm.write(text.rstrip("\n"), file=self.stream)
        else:
            self._write(text.rstrip("\n"))
        if self.mode == "bars":
            self.refresh(force=True)

    def close(self) -> None:
        """Erase the bars."""
        if self.mode == "bars":
            self._clear()
            self.stream.flush()
        for t in self._tqdm.values():
            t.close()
        self._tqdm.clear()
        self.bars.clear()
        self._printed.clear()
        self.header = None

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
