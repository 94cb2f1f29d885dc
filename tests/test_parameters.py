"""The parameter table is the one source of validation, sweep keys, results columns, CLI flags
and plot legends; runs that differ in any parameter stay apart in files and figures."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from marina import experiments, methods, parameters, plotting
from marina.cli import build_parser, main
from marina.errors import ConfigError
from marina.experiments import results


def test_results_columns_are_the_union_of_every_methods_parameters():
    union = set().union(*(parameters.of_method(name) for name in methods.METHODS))
    assert union == set(parameters.names())
    # one column a parameter, and p's rule ("bits") in its own string column right after p
    assert set(results.PARAM_COLUMNS) == union | {"p_rule"}
    assert results.PARAM_COLUMNS["p"] == "float64" and results.PARAM_COLUMNS["p_rule"] == "string"
    for name in union:
        assert name in results.CONFIG_COLUMNS
    assert list(results.CONFIG_COLUMNS)[0] == "run_id"


def test_sweep_keys_and_cli_flags_come_from_the_table():
    assert set(experiments.PARAM_KEYS) == set(parameters.names())
    assert set(parameters.names()) <= set(experiments.GRID_KEYS)
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    flags = {opt for action in run._actions for opt in action.option_strings}
    for prm in parameters.PARAMETERS:
        assert prm.flag in flags, prm.flag


def test_every_method_takes_exactly_its_declared_parameters():
    taken = {
        "gd": set(),
        "qgd": set(),
        "diana": {"alpha"},
        "vr-diana": {"alpha", "batch_size", "refresh_p"},
        "marina": {"p", "mu"},
        "vr-marina": {"p", "batch_size", "online", "dense_batch_size"},
        "pp-marina": {"p", "clients"},
    }
    for name, own in taken.items():
        assert set(parameters.of_method(name)) == own | {"stepsize", "stepsize_multiplier"}, name


@pytest.mark.parametrize(
    "name, good, canonical, bad",
    [
        ("p", 1, 1.0, ["0.5", True, None]),
        ("batch_size", 4.0, 4, [2.5, "4", False]),
        ("online", True, True, [1, "true"]),
        ("mu", 0.5, 0.5, ["x", [1]]),
    ],
)
def test_canonical_types(name, good, canonical, bad):
    prm = parameters.by_name(name)
    value = prm.canonical(good)
    assert value == canonical and type(value) is type(canonical)
    for b in bad:
        with pytest.raises(ConfigError, match=f"{name} == "):
            prm.canonical(b)


def test_an_unknown_parameter_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown parameter 'q'; known: stepsize"):
        parameters.by_name("q")


SWEEP = """
problems = "mushrooms"
workers = 2
methods = "vr-marina"
compressors = "randk:5"
iterations = 12
log_every = 4
online = [true, false]
"""


def test_online_true_and_false_are_two_runs_two_columns_two_curves(tmp_path):
    (tmp_path / "s.toml").write_text(SWEEP)
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "s.toml"), "--out", str(out), "--quiet"]) == 0
    df = pd.read_parquet(out / results.RESULTS_FILE)
    assert sorted(df["online"].unique().tolist()) == [False, True]
    assert df["run_id"].nunique() == 2
    # the two variants differ (online draws minibatches for the dense rounds)
    calls = df.groupby("online")["oracle_calls"].max()
    assert calls[True] != calls[False]
    curves = plotting.curves(df, "rounds", "grad_norm_sq")
    assert sorted(c.label for c in curves) == [
        "VR-MARINA, randk:5, online=False",
        "VR-MARINA, randk:5, online=True",
    ]
    # every per-run history carries its run id and the configuration columns, schema recorded
    for record in json.loads((out / results.RUNS_FILE).read_text()):
        assert record["schema"] == results.SCHEMA_VERSION
        path = results.run_dir(out, record["run_id"]) / results.HISTORY_FILE
        history = pd.read_parquet(path)
        assert set(history["run_id"]) == {record["run_id"]}
        assert list(history.columns[: len(results.CONFIG_COLUMNS)]) == list(results.CONFIG_COLUMNS)
        assert results.schema_version(path) == results.SCHEMA_VERSION
    assert results.schema_version(out / results.RESULTS_FILE) == results.SCHEMA_VERSION


def test_results_of_schema_1_are_still_read(tmp_path):
    """A directory written before the configuration columns moved into per-run files."""
    record = {
        "run_id": "0123456789abcdef",
        "status": "finished",
        "config": {
            "problem": "a9a",
            "workers": 2,
            "split": "contiguous",
            "method": "marina",
            "compressor": "randk:1",
            "seed": 0,
            "iterations": 1,
            "log_every": 1,
            "params": {"p": 0.5},
        },
        "m": 10.0,
    }
    folder = results.run_dir(tmp_path, record["run_id"])
    folder.mkdir(parents=True)
    pd.DataFrame({"iteration": [0, 1], "grad_norm_sq": [1.0, 0.5]}).to_parquet(folder / results.HISTORY_FILE)
    (folder / results.RECORD_FILE).write_text(json.dumps(record))
    df, _ = results.rebuild(tmp_path)
    assert df["run_id"].tolist() == [record["run_id"]] * 2 and df["p"].tolist() == [0.5, 0.5]
    assert df["online"].isna().all()
