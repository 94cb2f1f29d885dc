"""Trackers fed from history rows, read back with each library's own reader."""

from __future__ import annotations

import json
import time

import pytest

import marina
from marina import problems, trackers
from marina.cli import main
from marina.errors import ConfigError


@pytest.fixture(scope="module")
def synth():
    return problems.synthetic(workers=3, dim=8, samples=20, seed=1)


def run_with(synth, loggers, tmp_path):
    made = trackers.make(loggers, root=tmp_path, run_name="r1")
    res = marina.run(
        method="marina", problem=synth, compressor="randk:2", iterations=20, log_every=5, seed=0, loggers=made
    )
    return res


def test_tensorboard_event_files_hold_every_row(synth, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = run_with(synth, "tensorboard", tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "r1"))
    acc.Reload()
    events = acc.Scalars("marina/grad_norm_sq")
    assert [e.step for e in events] == res.history["iteration"].tolist()
    assert [e.value for e in events] == pytest.approx(res.history["grad_norm_sq"].tolist(), rel=1e-6)
    assert "marina/bits_up" in acc.Tags()["scalars"]


def test_mlflow_client_reads_the_metrics_back(synth, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = run_with(synth, ["mlflow"], tmp_path)
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("marina").experiment_id])
    assert run.info.run_name == "r1" and run.info.status == "FINISHED"
    assert run.data.tags["marina.status"] == "finished"
    assert run.data.params["method"] == "marina" and float(run.data.params["params.stepsize"]) > 0
    history = client.get_metric_history(run.info.run_id, "grad_norm_sq")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == res.history["iteration"].tolist()
    assert run.data.metrics["grad_norm_sq"] == pytest.approx(res.history["grad_norm_sq"].iloc[-1])


def test_wandb_offline_run_files(synth, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tracker,) = trackers.make("wandb", root=tmp_path, run_name="r1")
    res = marina.run(
        method="marina", problem=synth, compressor="randk:2", iterations=20, log_every=5, loggers=[tracker]
    )
    run = tracker.run  # wandb's own run object, finished
    assert run.name == "r1" and run.config["method"] == "marina"
    assert len(res.history) == 5
    # wandb 0.31 has no offline reader; the transaction log (uploaded by `wandb sync`) holds the rows
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    (log,) = folder.glob("*.wandb")
    deadline = time.monotonic() + 30  # wandb's service process may still be flushing it
    while b"marina.status" not in (data := log.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"grad_norm_sq" in data and b"bits_up" in data and b"marina.status" in data


def test_sweep_log_tensorboard_writes_one_folder_per_run(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    (tmp_path / "s.toml").write_text(
        'problems = "synthetic"\nworkers = 3\niterations = 10\nmethods = "marina"\ncompressors = "randk:1"\n'
        "seeds = [0, 1]\n"
    )
    out = tmp_path / "out"
    assert (
        main(["sweep", str(tmp_path / "s.toml"), "--out", str(out), "--quiet", "--log", "tensorboard"]) == 0
    )
    records = json.loads((out / "runs.json").read_text())
    # named readably: problem, method, compressor without ':', seed, then the run id
    expected = sorted(f"synthetic-marina-randk1-seed{r['config']['seed']}-{r['run_id']}" for r in records)
    assert len(expected) == 2
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == expected


def test_run_names_are_readable_and_safe_as_folder_names():
    config = {"problem": "a9a", "method": "vr-marina", "compressor": "randk:5+natural", "seed": 3}
    assert trackers.run_name(config) == "a9a-vr-marina-randk5+natural-seed3"
    assert trackers.run_name(config, "0123abcd") == "a9a-vr-marina-randk5+natural-seed3-0123abcd"
    for problem, shown in [
        ("fashion-mnist:/data/fm", "fashion-mnist"),
        ("/data/libsvm/my set.svm/", "myset.svm"),
    ]:
        assert trackers.run_name({**config, "problem": problem}).startswith(shown + "-vr-marina-")


def test_custom_tracker_objects_and_name_errors(synth):
    class Recorder:
        def __init__(self):
            self.rows, self.config, self.status = [], None, None

        def start(self, config):
            self.config = config

        def log(self, row, step):
            self.rows.append((step, row["grad_norm_sq"]))

        def finish(self, status, message):
            self.status = status

    rec = Recorder()
    res = marina.run(method="gd", problem=synth, iterations=10, log_every=2, loggers=[rec])
    assert [s for s, _ in rec.rows] == res.history["iteration"].tolist()
    assert rec.config["method"] == "gd" and rec.status == "finished"
    with pytest.raises(ConfigError, match=r"loggers 'neptune': unknown tracker; allowed: tensorboard"):
        marina.run(method="gd", problem=synth, iterations=10, loggers="neptune")
