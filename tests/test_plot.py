"""Figures from results tables: curves per configuration, mean and band over seeds, files."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import stats

from marina import plotting
from marina.errors import ConfigError
from marina.experiments import results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_results(seeds=(0, 1, 2), problems=("a9a", "w8a"), extra: dict | None = None) -> pd.DataFrame:
    """A results table of 2 methods x 2 compressors x seeds per problem, with known values."""
    rng = np.random.default_rng(0)  # fixed: the values are data, not a random test
    frames = []
    for problem in problems:
        for method in ("marina", "diana"):
            for comp in ("randk:1", "randk:5"):
                for seed in seeds:
                    it = np.arange(0, 101, 10)
                    h = pd.DataFrame(
                        {
                            "iteration": it,
                            "grad_norm_sq": (1.0 + 0.1 * seed)
                            / (1.0 + it)
                            * (2.0 if method == "diana" else 1.0),
                            "loss": 1.0 / (1.0 + it) + seed,
                            # bits differ per seed (like MARINA's random dense rounds)
                            "bits_up": it * 32.0 * (1 + int(comp.split(":")[1]))
                            + rng.uniform(0, 5, it.size).cumsum(),
                            "bits_down": it * 64.0,
                            "oracle_calls": it * 50.0,
                            "time_s": it * 1e-3,
                        }
                    )
                    rec = {
                        "run_id": f"{problem}-{method}-{comp}-{seed}",
                        "config": {
                            "problem": problem,
                            "workers": 5,
                            "split": "contiguous",
                            "method": method,
                            "compressor": comp,
                            "seed": seed,
                            "iterations": 100,
                            "log_every": 10,
                            "params": dict(extra or {}),
                        },
                        "m": 25.0,
                    }
                    frames.append(results.history_frame(rec, h))
    return pd.concat(frames, ignore_index=True)


def labelled_lines(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def test_one_panel_per_problem_one_curve_per_configuration():
    df = make_results()
    fig = plotting.plot(df, "rounds", "grad_norm_sq")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["a9a, n = 5", "w8a, n = 5"]
    for ax in axes:
        lines = labelled_lines(ax)
        assert sorted(ln.get_label() for ln in lines) == [
            "DIANA, randk:1",
            "DIANA, randk:5",
            "MARINA, randk:1",
            "MARINA, randk:5",
        ]
        assert len(ax.collections) == 4  # one min-max band per curve (3 seeds)
        assert ax.get_yscale() == "log"
        assert ax.get_legend() is None  # one legend for the whole figure
        by_label = {ln.get_label(): ln for ln in lines}
        for comp in ("randk:1", "randk:5"):  # one color per compressor, one style per method
            marina, diana = by_label[f"MARINA, {comp}"], by_label[f"DIANA, {comp}"]
            assert marina.get_color() == diana.get_color()
            assert marina.get_linestyle() != diana.get_linestyle()
        assert by_label["MARINA, randk:1"].get_color() != by_label["MARINA, randk:5"].get_color()
    (legend,) = fig.legends
    assert sorted(t.get_text() for t in legend.get_texts()) == sorted(ln.get_label() for ln in lines)


def test_mean_and_band_over_seeds_on_rounds():
    df = make_results(problems=("a9a",))
    (c,) = [c for c in plotting.curves(df, "rounds", "grad_norm_sq") if c.label == "DIANA, randk:5"]
    it = np.arange(0, 101, 10)
    per_seed = np.array([(1.0 + 0.1 * s) / (1.0 + it) * 2.0 for s in (0, 1, 2)])
    np.testing.assert_allclose(c.x, it)
    np.testing.assert_allclose(c.mean, per_seed.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(c.lo, per_seed.min(axis=0), rtol=1e-12)
    np.testing.assert_allclose(c.hi, per_seed.max(axis=0), rtol=1e-12)
    assert c.seeds == [0, 1, 2]
    # the plotted line is that mean
    fig = plotting.plot(df, "rounds", "grad_norm_sq")
    (line,) = [ln for ln in labelled_lines(fig.axes[0]) if ln.get_label() == "DIANA, randk:5"]
    np.testing.assert_allclose(line.get_ydata(), per_seed.mean(axis=0), rtol=1e-12)


def test_bits_axis_interpolates_each_seed_on_common_grid():
    df = make_results(problems=("a9a",))
    sub = df[(df.method == "marina") & (df.compressor == "randk:1")]
    (c,) = [c for c in plotting.curves(sub, "bits", "grad_norm_sq")]
    runs = [g.sort_values("iteration") for _, g in sub.groupby("run_id")]
    lo = max(r.bits_up.min() for r in runs)
    hi = min(r.bits_up.max() for r in runs)
    assert c.x.min() >= lo and c.x.max() <= hi
    # at an interior grid point, the mean is the mean of the seeds' log-linear interpolants
    x0 = c.x[len(c.x) // 2]
    expected = np.mean([np.exp(np.interp(x0, r.bits_up, np.log(r.grad_norm_sq))) for r in runs])
    np.testing.assert_allclose(c.mean[len(c.x) // 2], expected, rtol=1e-12)
    assert np.all(c.lo <= c.mean) and np.all(c.mean <= c.hi)


def test_epochs_are_oracle_calls_over_m():
    df = make_results(seeds=(0,), problems=("a9a",))
    c = plotting.curves(df, "epochs", "loss")[0]
    np.testing.assert_allclose(c.x, np.arange(0, 101, 10) * 50.0 / 25.0)


def test_varying_parameters_appear_in_legends():
    df = pd.concat(
        [
            make_results(seeds=(0,), problems=("a9a",)),
            make_results(seeds=(0,), problems=("a9a",), extra={"stepsize_multiplier": 2.0}),
        ],
        ignore_index=True,
    )
    df["run_id"] = df["run_id"] + df["stepsize_multiplier"].astype(str)
    labels = sorted(c.label for c in plotting.curves(df, "rounds", "grad_norm_sq"))
    assert "MARINA, randk:1, γ × 2" in labels and "MARINA, randk:1, γ × theory" in labels
    assert len(labels) == 8


def test_accuracy_columns_and_y_errors():
    df = make_results(seeds=(0, 1), problems=("a9a",)).assign(train_acc=0.5)
    fig = plotting.plot(df, "rounds", "train_acc")
    assert fig.axes[0].get_yscale() == "linear"
    with pytest.raises(
        ConfigError, match=r"--y 'nope' is not a numeric history column.*available: grad_norm_sq, loss"
    ):
        plotting.plot(df, "rounds", "nope")
    with pytest.raises(ConfigError, match="not a numeric history column"):
        plotting.plot(df, "rounds", "method")
    with pytest.raises(ConfigError, match="allowed: rounds, bits, epochs, time"):
        plotting.plot(df, "seconds", "loss")


@pytest.mark.parametrize("suffix,magic", [(".png", PNG_SIGNATURE), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_save_formats(tmp_path, suffix, magic):
    fig = plotting.plot(make_results(seeds=(0,), problems=("a9a",)), "bits", "grad_norm_sq")
    path = plotting.save(fig, tmp_path / f"fig{suffix}")
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [f"fig{suffix}"]


def test_save_rejects_unknown_format(tmp_path):
    fig = plotting.plot(make_results(seeds=(0,), problems=("a9a",)), "rounds", "loss")
    with pytest.raises(ConfigError, match=r"unknown figure format '.jpg'; allowed: .png, .pdf, .svg"):
        plotting.save(fig, tmp_path / "f.jpg")


def test_one_legend_below_the_panels_markers_and_plain_tick_labels():
    df = make_results()
    df["bits_up"] *= 1000.0  # millions of bits: matplotlib would write a "1e7" offset
    fig = plotting.plot(df, "bits", "grad_norm_sq")
    fig.savefig(io.BytesIO(), format="png")  # lay out and draw
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in axes)
    legend_top = fig.legends[0].get_window_extent().y1
    assert all(legend_top <= ax.get_window_extent().y0 for ax in axes)  # outside, below the panels
    for ax in axes:
        assert ax.xaxis.get_offset_text().get_text() == ""
        ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert ticks and all("e" not in t for t in ticks) and any(t.endswith("M") for t in ticks)
        lines = labelled_lines(ax)
        assert all(ln.get_marker() not in (None, "None", "") for ln in lines)
        assert len({ln.get_markevery() for ln in lines}) == len(lines)  # coinciding curves stay apart
    assert plotting._compact(2_500_000) == "2.5M" and plotting._compact(0.01) == "0.01"


def test_band_kinds():
    df = make_results(problems=("a9a",))
    it = np.arange(0, 101, 10)
    per_seed = np.array([(1.0 + 0.1 * s) / (1.0 + it) * 2.0 for s in (0, 1, 2)])
    mean, sd = per_seed.mean(axis=0), per_seed.std(axis=0, ddof=1)
    half = {
        "minmax": None,
        "std": sd,
        "ci95": stats.t.ppf(0.975, 2) * sd / np.sqrt(3),
    }
    assert list(plotting.BANDS) == ["minmax", "std", "ci95"]
    for band, h in half.items():
        (c,) = [c for c in plotting.curves(df, "rounds", "grad_norm_sq", band) if c.label == "DIANA, randk:5"]
        lo, hi = (per_seed.min(axis=0), per_seed.max(axis=0)) if h is None else (mean - h, mean + h)
        np.testing.assert_allclose(c.mean, mean, rtol=1e-12)
        np.testing.assert_allclose(c.lo, lo, rtol=1e-12)
        np.testing.assert_allclose(c.hi, hi, rtol=1e-12)
        fig = plotting.plot(df, "rounds", "grad_norm_sq", band=band)
        assert len(fig.axes[0].collections) == 4
    with pytest.raises(ConfigError, match=r"--band 'iqr' is not a band; allowed: minmax, std, ci95"):
        plotting.plot(df, "rounds", "grad_norm_sq", band="iqr")


def test_plot_into_given_axes():
    fig = Figure()
    ax = fig.subplots()
    assert plotting.plot(make_results(problems=("a9a",)), "rounds", "grad_norm_sq", ax=ax) is fig
    assert len(labelled_lines(ax)) == 4 and ax.get_legend() is not None
    with pytest.raises(ConfigError, match="ax= draws one problem, these results hold 2: a9a, w8a"):
        plotting.plot(make_results(), "rounds", "grad_norm_sq", ax=fig.subplots())


def multiplier_grid(adjust, stopped: str) -> pd.DataFrame:
    """Results of a stepsize_multiplier grid {0.5, 1, 2} (run ids told apart), each frame changed
    by ``adjust(frame, mult)``; the runs of method ``stopped`` end early (round 50) at 0.5."""
    frames = []
    for mult in (0.5, 1.0, 2.0):
        f = make_results(problems=("a9a",), extra={"stepsize_multiplier": mult})
        f["run_id"] = f["run_id"] + f"-x{mult}"
        adjust(f, mult)
        if mult == 0.5:
            f = f[(f.method != stopped) | (f.iteration <= 50)]
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def test_best_keeps_the_multiplier_with_the_lowest_final_value():
    def adjust(f, mult):
        # MARINA is best at 2, DIANA at 1; DIANA at 0.5 would be best but diverged (stopped early)
        f.loc[f.method == "marina", "grad_norm_sq"] *= {0.5: 0.9, 1.0: 1.0, 2.0: 0.5}[mult]
        f.loc[f.method == "diana", "grad_norm_sq"] *= {0.5: 0.1, 1.0: 1.0, 2.0: 3.0}[mult]

    df = multiplier_grid(adjust, stopped="diana")
    kept, choices = plotting.best(df, "stepsize_multiplier", "grad_norm_sq")
    by_label = {c["label"]: c for c in choices}
    assert {k: c["kept"] for k, c in by_label.items()} == {
        "DIANA, randk:1": 1.0,
        "DIANA, randk:5": 1.0,
        "MARINA, randk:1": 2.0,
        "MARINA, randk:5": 2.0,
    }
    assert by_label["DIANA, randk:1"]["tried"][0.5] == float("inf")
    assert kept.groupby(["method", "compressor"])["stepsize_multiplier"].nunique().eq(1).all()
    labels = sorted(c.label for c in plotting.curves(kept, "rounds", "grad_norm_sq"))
    assert labels == [
        "DIANA, randk:1, γ × 1",
        "DIANA, randk:5, γ × 1",
        "MARINA, randk:1, γ × 2",
        "MARINA, randk:5, γ × 2",
    ]
    with pytest.raises(ConfigError, match=r"--best 'method' is not a configuration column; allowed: workers"):
        plotting.best(df, "method")


def test_best_keeps_the_highest_final_accuracy():
    # an accuracy column: the largest final value wins, a run stopped early counts as -inf
    def adjust(f, mult):
        f["test_acc"] = {0.5: 0.9, 1.0: 0.7, 2.0: 0.8}[mult] * f["iteration"] / f["iteration"].max()

    # 0.5 has the best accuracy, but MARINA's runs there stopped early
    kept, choices = plotting.best(
        multiplier_grid(adjust, stopped="marina"), "stepsize_multiplier", "test_acc"
    )
    by_label = {c["label"]: c for c in choices}
    assert {k: c["kept"] for k, c in by_label.items()} == {
        "DIANA, randk:1": 0.5,
        "DIANA, randk:5": 0.5,
        "MARINA, randk:1": 2.0,
        "MARINA, randk:5": 2.0,
    }
    assert by_label["MARINA, randk:1"]["tried"][0.5] == float("-inf")
    assert by_label["MARINA, randk:1"]["final"] == pytest.approx(0.8)


def curves_table(methods, compressors, problems, entries=None) -> pd.DataFrame:
    """One seed of every method x compressor (the first ``entries`` pairs) on every problem,
    grad_norm_sq = c / (1 + k)."""
    frames = []
    pairs = [(m, c) for m in methods for c in compressors][:entries]
    for problem in problems:
        for i, (method, comp) in enumerate(pairs):
            it = np.arange(0, 51, 10)
            h = pd.DataFrame(
                {"iteration": it, "grad_norm_sq": (1.0 + i) / (1.0 + it), "loss": 1.0 / (1 + it)}
            )
            h = h.assign(bits_up=it * 32.0, bits_down=it * 64.0, oracle_calls=it * 5.0, time_s=it * 1e-3)
            config = dict(problem=problem, workers=5, split="contiguous", method=method, compressor=comp)
            config.update(seed=0, iterations=50, log_every=10, params={})
            rec = {"run_id": f"{problem}-{method}-{comp}", "config": config, "m": 25.0}
            frames.append(results.history_frame(rec, h))
    return pd.concat(frames, ignore_index=True)


METHODS_12 = ["marina", "vr-marina", "pp-marina", "ef21", "ef21-pp", "dasha"]


@pytest.mark.parametrize("panels", [1, 2, 3])
def test_the_legend_lies_inside_the_figure_for_1_to_12_entries(panels):
    """Legend box (window extent after layout) inside the figure box, below the panels, for 1..12
    entries of long labels and 1..3 panels."""
    problems = ["a9a", "w8a", "mushrooms"][:panels]
    for entries in range(1, 13):
        methods = METHODS_12[: (entries + 1) // 2]
        comps = ["randk:10+natural", "qsgd:4"][: 1 if entries == 1 else 2]
        df = curves_table(methods, comps, problems, entries)
        fig = plotting.plot(df, "bits", "grad_norm_sq", title="a long title of the figure")
        if entries == 12:
            fig.savefig(io.BytesIO(), format="png", dpi=150)  # laid out again, as saving does
        else:
            fig.draw_without_rendering()
        (legend,) = fig.legends
        assert len(legend.get_texts()) == entries
        box, frame = legend.get_window_extent(), fig.bbox
        inside = box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= frame.x1 + 0.5 and box.y1 <= frame.y1 + 0.5
        assert inside, (entries, panels, box, frame)
        top = legend.get_window_extent().y1
        assert all(top <= ax.get_window_extent().y0 for ax in fig.axes if ax.get_visible())


def test_color_by_method_or_compressor():
    """One compressor, three methods: auto colors by method (MARINA, DASHA and DIANA differ);
    --color-by compressor gives them one color and tells them apart by line style."""

    def by_label(fig):
        return {ln.get_label(): ln for ln in labelled_lines(fig.axes[0])}

    df = curves_table(["marina", "dasha", "diana"], ["randk:1"], ["a9a"])
    lines = by_label(plotting.plot(df))
    assert len({ln.get_color() for ln in lines.values()}) == 3
    assert by_label(plotting.plot(df, color_by="method")).keys() == lines.keys()
    one = by_label(plotting.plot(df, color_by="compressor"))
    assert len({ln.get_color() for ln in one.values()}) == 1
    assert len({ln.get_linestyle() for ln in one.values()}) == 3
    # two methods, two compressors: auto keeps one color per compressor
    lines = by_label(plotting.plot(curves_table(["marina", "diana"], ["randk:1", "randk:5"], ["a9a"])))
    assert lines["MARINA, randk:1"].get_color() == lines["DIANA, randk:1"].get_color()
    assert lines["MARINA, randk:1"].get_color() != lines["MARINA, randk:5"].get_color()
    by_method = by_label(
        plotting.plot(curves_table(["marina", "diana"], ["randk:1", "randk:5"], ["a9a"]), color_by="method")
    )
    assert by_method["MARINA, randk:1"].get_color() == by_method["MARINA, randk:5"].get_color()
    assert by_method["MARINA, randk:1"].get_color() != by_method["DIANA, randk:1"].get_color()
    # each method with its own compressor (EF21 with TopK): auto colors by method
    mixed = pd.concat(
        [
            curves_table(["marina", "dasha"], ["randk:10"], ["a9a"]),
            curves_table(["ef21"], ["topk:10"], ["a9a"]),
        ]
    )
    lines = by_label(plotting.plot(mixed))
    assert len({ln.get_color() for ln in lines.values()}) == 3
    with pytest.raises(
        ConfigError, match="--color-by 'size' is not allowed; allowed: auto, method, compressor"
    ):
        plotting.plot(df, color_by="size")
