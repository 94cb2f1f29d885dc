"""Sweep files, configuration checks, run identity, and execution with resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

import marina
from marina import experiments
from marina.errors import ConfigError
from marina.experiments import results


def spec_of(text: str, tmp_path, name="s.toml") -> experiments.SweepSpec:
    path = tmp_path / name
    path.write_text(text)
    return experiments.load_sweep(path)


def configs_of(text: str, tmp_path) -> list[experiments.RunConfig]:
    return experiments.validate(experiments.expand(spec_of(text, tmp_path)))


BASE = """
problems = "synthetic"
workers = 3
iterations = 40
"""


def test_grid_is_the_product_and_grids_inherit_the_top_level(tmp_path):
    cs = configs_of(
        BASE
        + """
seeds = [0, 1]
[[grid]]
methods = ["marina", "pp-marina"]
compressors = ["randk:1", "randk:2", "identity"]
p = [0.2, 0.5]
[[grid]]
methods = "diana"
compressors = "randk:1"
workers = 2
iterations = 10
""",
        tmp_path,
    )
    assert len(cs) == 2 * 3 * 2 * 2 + 2
    marina_runs = [c for c in cs if c.method in ("marina", "pp-marina")]
    assert {(c.method, c.compressor, c.params["p"], c.seed) for c in marina_runs} == {
        (m, k, p, s)
        for m in ("marina", "pp-marina")
        for k in ("randk:1", "randk:2", "identity")
        for p in (0.2, 0.5)
        for s in (0, 1)
    }
    assert all(c.workers == 3 and c.iterations == 40 and c.log_every == 1 for c in marina_runs)
    dianas = [c for c in cs if c.method == "diana"]
    assert [(c.workers, c.iterations, c.seed, c.params) for c in dianas] == [(2, 10, 0, {}), (2, 10, 1, {})]


def test_run_id_is_a_stable_hash_of_the_configuration():
    c = experiments.RunConfig("a9a", 5, "marina", "randk:1", seed=0, iterations=5000, log_every=25)
    # the documented canonical form, written out by hand: ids change only with the description's
    # version (v) or the generator's, or results directories could not be resumed
    canonical = (
        '{"compressor":"randk:1","generator":1,"iterations":5000,"log_every":25,"method":"marina",'
        '"params":{},"problem":"a9a","seed":0,"split":"contiguous","v":2,"workers":5}'
    )
    assert c.run_id == hashlib.sha256(canonical.encode()).hexdigest()[:16] == "451ce90c996d8bf7"
    assert experiments.RunConfig.from_dict(c.to_dict()) == c
    assert (
        experiments.RunConfig(**{**c.to_dict(), "device": "cuda"}).run_id == c.run_id
    )  # device is not identity
    changed = [
        experiments.RunConfig(**{**c.to_dict(), key: value})
        for key, value in [
            ("problem", "w8a"),
            ("workers", 4),
            ("method", "diana"),
            ("compressor", "randk:2"),
            ("seed", 1),
            ("iterations", 5001),
            ("log_every", 24),
            ("split", "shuffled"),
            ("params", {"p": 0.5}),
        ]
    ]
    assert len({x.run_id for x in changed} | {c.run_id}) == len(changed) + 1
    # parameter order does not matter
    a = experiments.RunConfig("a9a", 5, "marina", "randk:1", params={"p": 0.5, "stepsize": 0.1})
    b = experiments.RunConfig("a9a", 5, "marina", "randk:1", params={"stepsize": 0.1, "p": 0.5})
    assert a.run_id == b.run_id


def test_run_id_changes_with_the_generator_version(monkeypatch):
    c = experiments.RunConfig("a9a", 5, "marina", "randk:1", seed=0, iterations=5000, log_every=25)
    before = c.run_id
    monkeypatch.setattr(experiments.config, "GENERATOR_VERSION", 2)
    assert c.identity()["generator"] == 2
    assert c.run_id != before


def test_parameters_are_hashed_in_their_canonical_types():
    def run_id(**params):
        return experiments.RunConfig("a9a", 5, "vr-marina", "randk:1", params=params).run_id

    assert run_id(p=1) == run_id(p=1.0)
    assert run_id(batch_size=4) == run_id(batch_size=4.0)
    assert run_id(p=0.5) != run_id(p=0.25)
    for bad, message in [
        ({"p": "0.5"}, "p == '0.5', must be a number in (0, 1]"),
        ({"batch_size": 2.5}, "batch_size == 2.5, must be an integer >= 1"),
        ({"online": 1}, "online == 1, must be true or false"),
        ({"stepsize": True}, "stepsize == True, must be a finite number > 0"),
    ]:
        with pytest.raises(ConfigError) as err:
            run_id(**bad)
        assert message in str(err.value)


def test_duplicates_and_spellings_collapse(tmp_path):
    cs = configs_of(BASE + 'methods = ["marina", "MARINA"]\ncompressors = "randk:1"\n', tmp_path)
    assert len(cs) == 1 and cs[0].method == "marina"


@pytest.mark.parametrize(
    "text,message",
    [
        (
            BASE + 'methods = "marina"\ncompressors = "randk:1"\nmethod = "x"\n',
            "s.toml: unknown key 'method'; allowed: problems,",
        ),
        (
            BASE + 'methods = "marina"\n[[grid]]\ncompressors = "randk:1"\ndevice = "cpu"\n',
            "s.toml [[grid]] #1: unknown key 'device' (top level only)",
        ),
        ('problems = "synthetic"\nmethods = "marina"\ncompressors = "randk:1"\n', "missing key 'iterations'"),
        (BASE + 'methods = []\ncompressors = "randk:1"\n', "methods = [] is empty"),
        (
            BASE + 'methods = "marina"\ncompressors = "randk:1"\ncheckpoint_every = -1\n',
            "checkpoint_every = -1, must be an integer >= 0",
        ),
        (BASE + 'methods = "marina"\ncompressors = "randk:1\n', "not valid TOML"),
    ],
)
def test_file_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        spec_of(text, tmp_path)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            'methods = "marinaa"\ncompressors = "randk:1"',
            "methods = 'marinaa': unknown method; allowed: gd, qgd, diana",
        ),
        (
            'methods = "marina"\ncompressors = "randk:11"',
            "compressors = 'randk:11' on synthetic: randk:11: K == 11 exceeds the dimension d == 10",
        ),
        ('methods = "marina"\ncompressors = "randq:1"', "compressors = 'randq:1': unknown compressor"),
        ('methods = "marina"\ncompressors = "topk:1"', "compressors = 'topk:1' is biased"),
        ('methods = "marina"\ncompressors = "randk:1"\np = 1.5', "p == 1.5, must be in (0, 1]"),
        ('methods = "marina"\ncompressors = "randk:1"\np = 0', "p == 0, must be in (0, 1]"),
        (
            'methods = "marina"\ncompressors = "randk:1"\nstepsize = -0.1',
            "stepsize == -0.1, must be a finite number > 0",
        ),
        (
            'methods = "diana"\ncompressors = "randk:1"\np = 0.5',
            "p = 0.5 is not a parameter of diana (it takes: stepsize, stepsize_multiplier, alpha)",
        ),
        ('methods = "pp-marina"\ncompressors = "randk:1"\nclients = 4', "clients == 4, must be in [1, 3]"),
        (
            'methods = "vr-marina"\ncompressors = "randk:1"\nbatch_size = 21',
            "batch_size == 21, must be in [1, 20]",
        ),
        ('methods = "marina"\ncompressors = "randk:1"\nseeds = -1', "seeds = -1, must be >= 0"),
        ('methods = "marina"\ncompressors = "randk:1"\nlog_every = 0', "log_every = 0, must be >= 1"),
        (
            'methods = "marina"\ncompressors = "randk:1"\nworkers = 2.5',
            "workers = 2.5, must be an integer >= 1",
        ),
    ],
)
def test_value_errors_name_key_value_and_constraint(tmp_path, extra, message):
    text = BASE.replace("workers = 3\n", "") + extra + ("" if "workers" in extra else "\nworkers = 3")
    with pytest.raises(ConfigError) as err:
        configs_of(text, tmp_path)
    assert message in str(err.value)
    assert str(err.value).startswith("s.toml: ")


def test_grid_hint_for_parameters_of_other_methods(tmp_path):
    text = BASE + '[[grid]]\nmethods = "marina"\ncompressors = "randk:1"\n'
    text += '[[grid]]\nmethods = "qgd"\ncompressors = "randk:1"\nalpha = 0.5\n'
    with pytest.raises(
        ConfigError,
        match=r"s.toml \[\[grid\]\] #2: alpha = 0.5 is not a parameter of qgd .* in their own "
        r"\[\[grid\]\] table",
    ):
        configs_of(text, tmp_path)


def test_iterations_below_one_is_caught_before_any_problem_is_built(tmp_path):
    text = 'problems = "no-such-file.svm"\nworkers = 3\niterations = 0\n'
    text += 'methods = "marina"\ncompressors = "randk:1"\n'
    with pytest.raises(ConfigError, match="iterations = 0, must be >= 1"):
        configs_of(text, tmp_path)
    text = text.replace("iterations = 0", "iterations = 5")
    with pytest.raises(
        ConfigError, match="problems = 'no-such-file.svm': data set 'no-such-file.svm': no such file"
    ):
        configs_of(text, tmp_path)


def test_execute_writes_marina_run_history_and_record(tmp_path):
    (c,) = configs_of(
        BASE + 'methods = "diana"\ncompressors = "randk:2"\nseeds = 3\nlog_every = 7\n', tmp_path
    )
    record, result = experiments.execute(c, tmp_path / "out")
    direct = marina.run(
        method="diana",
        compressor="randk:2",
        problem="synthetic",
        workers=3,
        iterations=40,
        seed=3,
        log_every=7,
    )
    cols = [k for k in results.HISTORY_COLUMNS if k != "time_s"]
    pd.testing.assert_frame_equal(result.history[cols], direct.history[cols])
    folder = results.run_dir(tmp_path / "out", c.run_id)
    assert sorted(p.name for p in folder.iterdir()) == ["history.parquet", "run.json"]  # checkpoint removed
    disk = json.loads((folder / "run.json").read_text())
    assert disk["status"] == "finished" and disk["config"] == c.to_dict()
    assert disk["params"]["stepsize"] == pytest.approx(direct.params["stepsize"])
    assert disk["m"] == 20.0 and disk["d"] == 10
    assert disk["marina_version"] == marina.__version__ and disk["torch_version"]
    assert disk["started_at"] <= disk["finished_at"]


def test_sweep_skips_completed_runs(tmp_path):
    cs = configs_of(BASE + 'methods = ["marina", "diana"]\ncompressors = "randk:1"\n', tmp_path)
    out = tmp_path / "out"
    first = experiments.run_sweep(cs[:1], out)
    assert first.finished == [cs[0].run_id]
    before = results.read_run_record(out, cs[0].run_id)
    second = experiments.run_sweep(cs, out)
    assert second.skipped == [cs[0].run_id] and second.finished == [cs[1].run_id]
    assert results.read_run_record(out, cs[0].run_id) == before  # not run again
    df = pd.read_parquet(out / "results.parquet")
    assert set(df.run_id) == {c.run_id for c in cs}


@pytest.mark.parametrize(
    "name,methods", [("figure1.toml", {"marina", "diana"}), ("figure1_vr.toml", {"vr-marina", "vr-diana"})]
)
def test_example_sweep_files(name, methods):
    path = Path(__file__).resolve().parents[1] / "examples" / name
    spec = experiments.load_sweep(path)
    raws = experiments.expand(spec)
    assert len(raws) == 4 * 2 * 3 * 3  # problems x methods x compressors x seeds
    assert {r.values["methods"] for r in raws} == methods
    assert {r.values["problems"] for r in raws} == {"a9a", "mushrooms", "phishing", "w8a"}
    assert {r.values["compressors"] for r in raws} == {"randk:1", "randk:5", "randk:10"}
    assert spec.checkpoint_every and spec.name == path.stem
