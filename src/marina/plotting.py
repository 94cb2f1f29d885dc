"""Paper-style figures drawn from a results table (one curve per configuration).

A *configuration* is a run's configuration without its seed: problem, workers, split, method,
compressor, iterations, log_every and the parameter overrides. Its runs over several seeds are
drawn as one curve, the mean over seeds, with a shaded band (:data:`BANDS`: min-max, mean +-
one standard deviation, or a 95% confidence interval of the mean). Curves are aligned on a
common x grid (the union of the seeds' logged x values, restricted to the range every seed
reaches; y is interpolated linearly in log y when y > 0, linearly otherwise), so x may be
communication rounds, bits sent per worker, epochs or wall time alike. One panel per problem,
one legend per figure below the panels, markers every few points so that coinciding curves stay
distinguishable, plain tick labels (``2M``, never a ``1e6`` offset). :func:`best` keeps, per
curve, the value of a parameter (e.g. the stepsize multiplier) with the lowest final metric.

Built on :class:`matplotlib.figure.Figure` directly (no pyplot state): safe in scripts,
notebooks and worker processes.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from scipy import stats

from marina import memory, methods, parameters
from marina.errors import ConfigError
from marina.experiments.results import CONFIG_COLUMNS, PARAM_COLUMNS
from marina.files import atomic_write

__all__ = [
    "BANDS",
    "COLOR_BY",
    "FIGURE_FORMATS",
    "X_AXES",
    "Curve",
    "available_y",
    "best",
    "curves",
    "figure_path",
    "method_label",
    "plot",
    "save",
    "x_values",
]

X_AXES: dict[str, str] = {
    "rounds": "communication rounds",
    "bits": "#bits / n",
    "epochs": "epochs (oracle calls / m)",
    "time": "time, s",
    "link_time": "modelled link time, s",
}
"""The x axes ``marina plot --x`` accepts, with their axis labels."""

Y_LABELS: dict[str, str] = {
    "grad_norm_sq": r"$\|\nabla f(x^k)\|^2$",
    "loss": r"$f(x^k)$",
    "bits_up": "#bits / n",
    "bits_down": "broadcast bits",
    "oracle_calls": "oracle calls per worker",
}

FIGURE_FORMATS = (".png", ".pdf", ".svg")

BANDS: dict[str, str] = {
    "minmax": "min-max over seeds",
    "std": "mean +- one standard deviation over seeds",
    "ci95": "95% confidence interval of the mean (Student t)",
}
"""The bands ``marina plot --band`` draws around each mean curve."""

MARKERS = ("o", "s", "^", "D", "v", "P", "X")

# Columns that identify a configuration (seed and run_id are what varies inside one).
_KEY_COLUMNS = [c for c in CONFIG_COLUMNS if c not in ("run_id", "seed", "m")]

# How a varying configuration column is named in a legend.
_LEGEND_NAMES = {
    "workers": "n",
    "split": "split",
    "iterations": "T",
    "log_every": "log every",
    **{c: p.legend for p in parameters.PARAMETERS for c in p.columns},  # p_rule: "p=bits"
}


def _method_class(method: str):
    """The registered method class called ``method``, or None (e.g. results of an unregistered one)."""
    try:
        return methods.get(str(method))
    except ConfigError:
        return None


def method_label(method: str) -> str:
    """Display name of a method (its declared ``label``; ``vr-marina`` -> ``VR-MARINA``).

    Args:
        method: the method's name (an unknown one is shown upper-cased).
    """
    cls = _method_class(method)
    return cls.display_name() if cls is not None else str(method).upper()


def _method_order(method: str) -> int:
    """Where a method's curves come in a legend (its declared ``plot_order``; 99 if unknown)."""
    cls = _method_class(method)
    return cls.plot_order if cls is not None else 99


def x_values(df: pd.DataFrame, x: str) -> pd.Series:
    """The x coordinate of every row for axis ``x`` (see :data:`X_AXES`).

    Args:
        df: a results table.
        x: the axis, a key of :data:`X_AXES`.

    Raises:
        ConfigError: an unknown axis, or one whose columns the results lack.
    """
    if x == "rounds":
        return df["iteration"].astype("float64")
    if x == "bits":
        return df["bits_up"].astype("float64")
    if x == "time":
        return df["time_s"].astype("float64")
    if x == "link_time":
        if "link_time_s" not in df.columns or df["link_time_s"].isna().any():
            raise ConfigError(
                "--x link_time needs the column link_time_s of every run: run them with a link model "
                "(marina run --link 100mbit, links = ... in a sweep, marina.run(link=...))"
            )
        return df["link_time_s"].astype("float64")
    if x == "epochs":
        m = df["m"].astype("float64")
        if m.isna().any() or (m <= 0).any():
            raise ConfigError("--x epochs needs the local data-set size m of every run, missing here")
        return df["oracle_calls"].astype("float64") / m
    raise ConfigError(f"--x {x!r} is not an x axis; allowed: {', '.join(X_AXES)}")


def available_y(df: pd.DataFrame) -> list[str]:
    """Numeric history columns that ``--y`` accepts (everything but configuration columns).

    Args:
        df: a results table.
    """
    return [
        c
        for c in df.columns
        if c not in CONFIG_COLUMNS and c != "iteration" and pd.api.types.is_numeric_dtype(df[c])
    ]


@dataclass
class Curve:
    """One configuration's curve: mean over seeds and its band (``lo``, ``hi``), on a common x grid.

    Attributes:
        problem: the problem of its panel.
        key: the configuration (the values of the configuration columns).
        label: the legend's text (method, compressor, varying parameters).
        x: the common x grid.
        mean: the mean over seeds at each x.
        lo: the band's lower edge at each x.
        hi: the band's upper edge at each x.
        seeds: the seeds averaged.
        variant: the label without the method (compressor and varying parameters).
    """

    problem: str
    key: dict[str, Any]
    label: str
    x: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    seeds: list[int] = field(default_factory=list)
    variant: str = ""
    """The label without the method (compressor and varying parameters): one color per variant."""


def _aggregate(runs: list[tuple[np.ndarray, np.ndarray]], band: str = "minmax") -> tuple[np.ndarray, ...]:
    """Mean and band (:data:`BANDS`) over runs of y(x), on the union of their x in the common range."""
    runs = [(x[np.isfinite(x) & ~np.isnan(y)], y[np.isfinite(x) & ~np.isnan(y)]) for x, y in runs]
    runs = [(x, y) for x, y in runs if len(x)]
    if not runs:
        empty = np.array([], dtype=float)
        return empty, empty, empty, empty
    if len(runs) == 1:
        x, y = runs[0]
        return x, y, y, y
    lo_x = max(float(x.min()) for x, _ in runs)
    hi_x = min(float(x.max()) for x, _ in runs)
    grid = np.unique(np.concatenate([x for x, _ in runs]))
    grid = grid[(grid >= lo_x) & (grid <= hi_x)]
    positive = all(bool(np.all(y > 0)) for _, y in runs)
    ys = []
    for x, y in runs:
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        if positive:
            ys.append(np.exp(np.interp(grid, x, np.log(y))))
        else:
            ys.append(np.interp(grid, x, y))
    stack = np.vstack(ys)
    mean = stack.mean(axis=0)
    if band == "minmax":
        return grid, mean, stack.min(axis=0), stack.max(axis=0)
    half = stack.std(axis=0, ddof=1)
    if band == "ci95":
        half = half * float(stats.t.ppf(0.975, len(ys) - 1)) / math.sqrt(len(ys))
    return grid, mean, mean - half, mean + half


def _check_band(band: str) -> None:
    if band not in BANDS:
        raise ConfigError(f"--band {band!r} is not a band; allowed: {', '.join(BANDS)}")


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.3g}"
    return str(value)


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def curves(df: pd.DataFrame, x: str = "rounds", y: str = "grad_norm_sq", band: str = "minmax") -> list[Curve]:
    """The curves of ``df`` for axes ``x`` and ``y``: one per (problem, configuration), with
    bands of kind ``band`` (:data:`BANDS`).

    Labels name the method and the compressor, plus every configuration column that varies
    among the curves of the same problem (e.g. ``n=10``, ``γ × 2``, ``b'=65``).

    Args:
        df: a results table (:func:`marina.experiments.results.load_results`).
        x: the x axis, a key of :data:`X_AXES`.
        y: a numeric history column (:func:`available_y`).
        band: the band over seeds, a key of :data:`BANDS`.
    """
    if y not in df.columns or y not in available_y(df):
        raise ConfigError(
            f"--y {y!r} is not a numeric history column of these results; "
            f"available: {', '.join(available_y(df)) or '(none)'}"
        )
    _check_band(band)
    if df.empty:
        return []
    df = df.assign(_x=x_values(df, x).to_numpy(), _y=df[y].astype("float64").to_numpy())
    keys = [c for c in _KEY_COLUMNS if c in df.columns]
    out: list[Curve] = []
    for problem, pdf in df.groupby("problem", sort=True, dropna=False):
        groups = list(pdf.groupby(keys, sort=False, dropna=False))
        varying = [
            c
            for c in keys
            if c not in ("problem", "method", "compressor")
            and pdf[c].astype("string").fillna("<NA>").nunique() > 1
        ]
        for key_values, gdf in groups:
            key = dict(zip(keys, key_values))
            per_run = [
                (r["_x"].to_numpy(dtype=float), r["_y"].to_numpy(dtype=float))
                for _, r in gdf.sort_values("iteration").groupby("run_id", sort=True)
            ]
            gx, mean, lo, hi = _aggregate(per_run, band)
            parts = [str(key["compressor"])]
            for c in varying:
                v = key[c]
                name = _LEGEND_NAMES.get(c, c)
                if _is_missing(v):
                    rule = key.get(c + "_rule")
                    if c in PARAM_COLUMNS and not c.endswith("_rule") and _is_missing(rule):
                        parts.append(f"{name} theory")  # neither a value nor a rule: the default
                    continue
                sep = " " if name.endswith("×") else "="
                parts.append(f"{name}{sep}{_format_value(v)}")
            seeds = sorted(int(s) for s in gdf["seed"].unique()) if "seed" in gdf else []
            variant = ", ".join(parts)
            label = f"{method_label(key['method'])}, {variant}"
            out.append(Curve(str(problem), key, label, gx, mean, lo, hi, seeds, variant))
    out.sort(key=lambda c: (c.problem, _method_order(c.key["method"]), _natural(c.variant)))
    return out


def _natural(text: str) -> tuple:
    """Sort key that orders numbers inside strings by value (randk:5 before randk:10)."""
    return tuple(
        (1, float(t), "") if i % 2 else (0, 0.0, t) for i, t in enumerate(re.split(r"(\d+(?:\.\d+)?)", text))
    )


def higher_is_better(y: str) -> bool:
    """An accuracy column (``..._acc``, ``...accuracy...``): larger final values are better."""
    return y.endswith("acc") or "accuracy" in y


def _auto_yscale(y: str, cs: list[Curve]) -> str:
    if higher_is_better(y):
        return "linear"
    values = [c.lo for c in cs if len(c.lo)]
    if values and all(bool(np.all(v > 0)) for v in values):
        return "log"
    return "linear"


def _compact(value: float, _pos: Any = None) -> str:
    """A tick label without offset or exponent: ``2.5M``, ``300k``, ``0.01``."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"


def _style_axes(ax: Axes, x: str, y: str, xscale: str, yscale: str) -> None:
    ax.set_yscale(yscale)
    ax.set_xscale(xscale)
    for axis, scale in ((ax.xaxis, xscale), (ax.yaxis, yscale)):
        if scale == "linear":
            axis.set_major_formatter(FuncFormatter(_compact))
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(Y_LABELS.get(y, y))
    ax.grid(True, which="major", alpha=0.3)


def plot(
    df: pd.DataFrame,
    x: str = "rounds",
    y: str = "grad_norm_sq",
    *,
    yscale: str = "auto",
    xscale: str = "linear",
    title: str | None = None,
    ncols: int | None = None,
    band: str = "minmax",
    ax: Axes | None = None,
    color_by: str = "auto",
) -> Figure:
    """Draw ``y`` against ``x`` for every configuration of ``df`` (see :func:`curves`).

    One panel per problem (titled with the problem and, when it is the same for every curve,
    the number of workers n); mean over seeds as a line, ``band`` over seeds shaded. Colors follow
    ``color_by``, line styles and markers the other of method and compressor (markers every few
    points, offset per curve, so that coinciding curves stay apart), the same in every panel. One
    legend for the figure, below the panels, in as many columns as fit the figure's width (the
    figure grows when even one column does not fit): it never leaves the figure.

    Args:
        df: a results table (:func:`marina.experiments.results.load_results`).
        x: ``rounds``, ``bits`` (#bits/n), ``epochs`` (oracle calls / m), ``time`` or
            ``link_time`` (the modelled ``link_time_s``).
        y: any numeric history column (``grad_norm_sq``, ``loss``, ``train_acc``, ...).
        yscale: ``log``, ``linear`` or ``auto`` (log unless y is an accuracy or not positive).
        xscale: ``linear`` or ``log``.
        title: the figure's title (None: none).
        ncols: panels per row (default: all problems in one row up to 3, else a square grid).
        band: ``minmax``, ``std`` or ``ci95`` (:data:`BANDS`).
        ax: draw into these axes (one problem only; legend inside them) instead of a new figure.
        color_by: ``method`` (one color per method), ``compressor`` (one per compressor and
            varying parameters, so that e.g. MARINA and DIANA with randk:1 share a color), or
            ``auto`` (:data:`COLOR_BY`): by method when each method comes with one compressor
            (e.g. MARINA, DASHA, DIANA with randk:10 and EF21 with topk:10), else by compressor.

    Returns:
        The :class:`matplotlib.figure.Figure` (save it with :func:`save`).
    """
    if x not in X_AXES:
        raise ConfigError(f"--x {x!r} is not an x axis; allowed: {', '.join(X_AXES)}")
    scales = (("yscale", yscale, ("auto", "log", "linear")), ("xscale", xscale, ("log", "linear")))
    for name, value, allowed in scales:
        if value not in allowed:
            raise ConfigError(f"{name} {value!r} is not allowed; allowed: {', '.join(allowed)}")
    if color_by not in COLOR_BY:
        raise ConfigError(f"--color-by {color_by!r} is not allowed; allowed: {', '.join(COLOR_BY)}")
    if df.empty:
        raise ConfigError("the results table is empty: no completed run to plot")
    cs = curves(df, x, y, band)
    problems = list(dict.fromkeys(c.problem for c in cs))
    if ax is not None:
        if len(problems) != 1:
            raise ConfigError(
                f"ax= draws one problem, these results hold {len(problems)}: {', '.join(problems)}"
            )
        fig, panels = ax.figure, [ax]
    else:
        ncols = ncols or (len(problems) if len(problems) <= 3 else math.ceil(math.sqrt(len(problems))))
        nrows = math.ceil(len(problems) / ncols)
        fig = Figure(figsize=(4.6 * ncols, 3.6 * nrows + 0.9), layout="constrained")
        FigureCanvasAgg(fig)  # a renderer to measure the legend with
        panels = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    scale = _auto_yscale(y, cs) if yscale == "auto" else yscale
    color_of, style_of = _color_and_style_keys(cs, color_by)
    colors: dict[str, Any] = {}
    cycle = [f"C{i}" for i in range(10)]
    styled = list(dict.fromkeys(style_of(c) for c in cs))
    styles = ["-", "--", "-.", ":"]
    handles: dict[str, Any] = {}
    for panel, problem in zip(panels, problems):
        pcs = [c for c in cs if c.problem == problem]
        for i, c in enumerate(pcs):
            color = colors.setdefault(color_of(c), cycle[len(colors) % len(cycle)])
            m = styled.index(style_of(c))
            (line,) = panel.plot(
                c.x,
                c.mean,
                styles[m % len(styles)],
                color=color,
                label=c.label,
                linewidth=1.6,
                marker=MARKERS[m % len(MARKERS)],
                markersize=4,
                markevery=((0.013 * i) % 0.1, 0.1),
            )
            handles.setdefault(c.label, line)
            if len(c.seeds) > 1:
                panel.fill_between(c.x, c.lo, c.hi, color=color, alpha=0.18, linewidth=0)
        workers = {c.key.get("workers") for c in pcs}
        panel.set_title(f"{problem}, n = {workers.pop()}" if len(workers) == 1 else str(problem))
        _style_axes(panel, x, y, xscale, scale)
    if ax is not None:
        ax.legend(fontsize="small")
        return fig
    for panel in panels[len(problems) :]:
        panel.set_visible(False)
    if title:
        fig.suptitle(title)
    _legend_below(fig, list(handles.values()), list(handles))
    return fig


COLOR_BY = ("auto", "method", "compressor")
"""What ``plot(color_by=...)`` and ``marina plot --color-by`` color the curves by."""


def _color_and_style_keys(cs: list[Curve], color_by: str) -> tuple[Any, Any]:
    """(color key, line style key) of a curve: method and variant (compressor and varying
    parameters), one for colors and the other for line styles and markers, per ``color_by``."""
    pairs = {(c.problem, c.key["method"]) for c in cs}
    by_method = color_by == "method" or (  # auto: when each method comes with one variant only
        color_by == "auto" and len({m for _, m in pairs}) > 1 and len(cs) == len(pairs)
    )
    method, variant = (lambda c: c.key["method"]), (lambda c: c.variant)
    return (method, variant) if by_method else (variant, method)


LEGEND_COLUMNS = 4
"""Most columns of the figure legend (fewer when they do not fit the figure's width)."""


def _legend_below(fig: Figure, handles: list[Any], labels: list[str]) -> None:
    """The figure legend below the panels, in the most columns (up to :data:`LEGEND_COLUMNS`)
    whose rows fit the figure's width; the figure widens (one column too wide) or grows taller
    (too many rows for the panels' height) until the legend's box lies inside the figure's."""
    renderer = fig.canvas.get_renderer()
    ncols = max(1, min(len(labels), LEGEND_COLUMNS))
    for _ in range(4 * LEGEND_COLUMNS):
        legend = fig.legend(
            handles, labels, loc="outside lower center", ncols=ncols, fontsize="small", frameon=False
        )
        width, height = fig.get_size_inches()
        wide = legend.get_window_extent(renderer).width  # its size does not depend on the layout
        if wide > 0.98 * fig.bbox.width and ncols > 1:
            ncols -= 1
        elif wide > 0.98 * fig.bbox.width:
            fig.set_size_inches(width * wide / (0.95 * fig.bbox.width), height)
        else:
            fig.draw_without_rendering()  # runs the constrained layout: where the legend goes
            box, frame = legend.get_window_extent(), fig.bbox
            if not (box.y0 < 0 or box.y1 > frame.height or box.height > 0.6 * frame.height):
                return
            fig.set_size_inches(width, height + 1.25 * box.height / fig.dpi)
        legend.remove()


def best(df: pd.DataFrame, column: str, y: str = "grad_norm_sq") -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Per curve (configuration without ``column``), the runs of the value of ``column`` whose
    final ``y`` (last logged value, mean over seeds) is best: lowest, or highest for an accuracy
    (:func:`higher_is_better`); a run that diverged or stopped early counts as the worst value
    (+inf, or -inf for an accuracy). This is how tuned-stepsize figures are drawn from a grid
    of ``stepsize_multiplier`` values.

    Args:
        df: a results table.
        column: the configuration column tuned (``stepsize_multiplier``, ``p``, ...).
        y: the history column whose final value decides.

    Returns:
        (the kept rows of ``df``, one dict per curve: ``problem``, ``label`` (method,
        compressor), ``kept``, ``final`` and ``tried`` (value -> final)).
    """
    allowed = [c for c in _KEY_COLUMNS if c not in ("problem", "method", "compressor")]
    if column not in allowed:
        raise ConfigError(f"--best {column!r} is not a configuration column; allowed: {', '.join(allowed)}")
    if y not in available_y(df):
        raise ConfigError(f"--y {y!r} is not a numeric history column of these results")
    if df.empty or column not in df.columns:
        return df, []
    last = df.sort_values("iteration").groupby("run_id", sort=False).tail(1)
    ok = np.isfinite(last[y].astype("float64")) & (last["iteration"] >= last["iterations"])
    higher = higher_is_better(y)
    finals = last.assign(_final=np.where(ok, last[y].astype("float64"), -np.inf if higher else np.inf))
    keys = [c for c in _KEY_COLUMNS if c in df.columns and c != column]
    kept_runs: list[str] = []
    choices: list[dict[str, Any]] = []
    for key_values, g in finals.groupby(keys, sort=True, dropna=False):
        key = dict(zip(keys, key_values))
        tried: dict[Any, float] = {}
        for value, gv in g.groupby(column, sort=True, dropna=False):
            tried[None if _is_missing(value) else value] = float(gv["_final"].mean())
        kept = (max if higher else min)(tried, key=lambda v: tried[v])
        mask = g[column].isna() if kept is None else g[column] == kept
        kept_runs += g.loc[mask, "run_id"].tolist()
        label = f"{method_label(key['method'])}, {key['compressor']}"
        choices.append(dict(problem=key["problem"], label=label, kept=kept, final=tried[kept], tried=tried))
    return df[df["run_id"].isin(kept_runs)], choices


def figure_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path, checked to end in a known figure format (:data:`FIGURE_FORMATS`).

    Args:
        path: the figure's file.
    """
    path = Path(path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise ConfigError(
            f"-o {str(path)!r}: unknown figure format {path.suffix or '(no suffix)'!r}; "
            f"allowed: {', '.join(FIGURE_FORMATS)}"
        )
    return path


MAX_PIXELS_A_SIDE = 2**16 - 1
"""Largest side of a PNG matplotlib's Agg renderer draws."""


def save(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` as PNG (``dpi`` dots per inch), PDF or SVG, chosen by the file suffix
    (atomically). A PNG's sides must stay within :data:`MAX_PIXELS_A_SIDE` and its pixels (4
    bytes each) within the memory budget (:mod:`marina.memory`).

    Args:
        fig: the figure.
        path: the file; its suffix picks the format.
        dpi: dots per inch of a PNG.

    Returns:
        The path written.
    """
    path = figure_path(path)
    if not dpi > 0:
        raise ConfigError(f"dpi == {dpi}, must be > 0")
    fmt = path.suffix.lower()[1:]
    if fmt == "png":
        width, height = (float(v) for v in fig.get_size_inches())
        w, h = math.ceil(width * dpi), math.ceil(height * dpi)
        if max(w, h) > MAX_PIXELS_A_SIDE:
            most = int(MAX_PIXELS_A_SIDE / max(width, height))
            raise ConfigError(
                f"dpi == {dpi} makes a {w} x {h} pixel image of this {width:g} x {height:g} in figure, "
                f"must be at most {MAX_PIXELS_A_SIDE} pixels a side (dpi <= {most})"
            )
        memory.check({"image": 4 * w * h}, f"dpi == {dpi}: a {w} x {h} pixel image")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
