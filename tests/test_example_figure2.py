"""examples/figure2.py: a clear exit 2 without the CIFAR-100 archive; a tiny archive runs both methods."""

import importlib.util
from pathlib import Path

import pandas as pd

from test_nets_datasets import _cifar_files, _write_archive
from test_torch_model_run import _one_thread  # noqa: F401 (autouse fixture)

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "figure2.py"


def _main():
    spec = importlib.util.spec_from_file_location("figure2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_without_the_archive_it_exits_2_saying_where_to_get_it(tmp_path, capsys):
    assert _main()(["--data-dir", str(tmp_path), "--out", str(tmp_path / "f.csv")]) == 2
    err = capsys.readouterr().err
    assert "cifar-100-python.tar.gz" in err and "does not download" in err
    assert not (tmp_path / "f.csv").exists()


def test_a_tiny_archive_runs_vr_marina_and_vr_diana(tmp_path):
    files, _ = _cifar_files(n_train=12, n_test=5)
    _write_archive(tmp_path / "cifar-100-python.tar.gz", files)
    out = tmp_path / "f.csv"
    argv = ["--data-dir", str(tmp_path), "--workers", "2", "--iterations", "2", "--k", "1000"]
    argv += ["--norm", "group", "--log-every", "1", "--out", str(out), "--plot", str(tmp_path / "f.png")]
    assert _main()(argv) == 0
    table = pd.read_csv(out)
    assert list(table["method"].unique()) == ["vr-marina", "vr-diana"]
    assert (table["m"] == 6).all() and (table["batch_size"] == 1).all()  # b' = max(1, round(6 / 50))
    assert table.groupby("method")["iteration"].max().tolist() == [2, 2]
