"""Issue 17 fuzz: randomly corrupted LibSVM files and sweep files end with exit status 2 and one
line naming the problem (never a traceback); randomly damaged per-run files of a results
directory are reported by path as one-line warnings and never stop a command. Issue 25: sweep
sizes, compressed data around the memory budget, hostile per-run files, link and timeout specs.
Every corruption is drawn from keyed randomness (:class:`marina.rng.Randomness`, stream per
kind, round = case)."""

from __future__ import annotations

import gzip
import math
import os
import re
import shutil
from pathlib import Path

import pytest

from marina import memory
from marina.cli import main
from marina.rng import Randomness

CASES = 200


class Pick:
    """Keyed choices for one fuzz case."""

    def __init__(self, kind: str, case: int) -> None:
        self.rng = Randomness(17, f"fuzz-{kind}", case, [0])

    def int(self, high: int) -> int:
        return int(self.rng.integers(high, 1)[0, 0])

    def of(self, options):
        return options[self.int(len(options))]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse
        rc = exc.code
    _, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return rc, err


# -- LibSVM files -----------------------------------------------------------------------------------
GOOD = [b"1 1:0.5 3:0.25", b"-1 2:1 4:0.5", b"1 1:1 2:2 5:0.125", b"-1 3:0.5", b"1 4:2", b"-1 1:0.75 5:1"]
BAD_VALUES = [b"nan", b"inf", b"-inf", b"1e308", b"-1e40", b"abc", b"", b"0x1p", b"1..2"]
BAD_INDICES = [b"-1", b"abc", b"1000000000", b"0.5", b""]
BAD_LABELS = [b"x", b"nan", b"inf", b"-1e999", b"1:2"]


def corrupt_libsvm(pick: Pick) -> tuple[str, bytes]:
    """(file suffix, contents) of a LibSVM file that is certainly invalid."""
    lines = list(GOOD)
    r = pick.int(len(lines))
    tokens = lines[r].split()
    kind = pick.int(9)
    if kind == 0:  # a feature value
        t = 1 + pick.int(len(tokens) - 1)
        tokens[t] = tokens[t].split(b":")[0] + b":" + pick.of(BAD_VALUES)
    elif kind == 1:  # a feature index
        t = 1 + pick.int(len(tokens) - 1)
        tokens[t] = pick.of(BAD_INDICES) + b":" + tokens[t].split(b":")[1]
    elif kind == 2:  # the label
        tokens[0] = pick.of(BAD_LABELS)
    elif kind == 3:  # a token without its colon
        t = 1 + pick.int(len(tokens) - 1)
        tokens[t] = tokens[t].replace(b":", b" ", 1) if pick.int(2) else tokens[t].replace(b":", b"")
        if tokens[t].count(b" ") or tokens[t].isdigit():  # "3 0.25": 0.25 is no index:value
            tokens[t] = tokens[t].replace(b" ", b"") + b"x"
    elif kind == 4:  # indices not increasing
        tokens = [tokens[0], b"4:1", b"2:1"]
    elif kind == 5:  # one label value only
        lines = [b"1" + line[line.index(b" ") :] for line in lines]
    elif kind == 6:  # no data rows
        return ".svm", b"" if pick.int(2) else b"# only a comment\n\n"
    elif kind == 7:  # binary garbage line (starting with a letter: never a label)
        garbage = bytes(pick.int(256) for _ in range(1 + pick.int(40)))
        lines.insert(r, b"Z" + garbage.replace(b"\n", b"").replace(b"\r", b""))
    else:  # a truncated gzip file
        data = gzip.compress(b"\n".join(lines) + b"\n")
        return ".svm.gz", data[: 10 + pick.int(len(data) - 14)]
    if kind not in (5, 7):
        lines[r] = b" ".join(tokens)
    return ".svm", b"\n".join(lines) + b"\n"


def test_fuzz_libsvm_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(memory.ENV_VAR, "1G")  # an index of 10^9 is then absurd on any machine
    good = tmp_path / "good.svm"
    good.write_bytes(b"\n".join(GOOD) + b"\n")
    assert run_cli(capsys, "theory", "--problem", str(good), "--workers", "2")[0] == 0
    for case in range(CASES):
        suffix, data = corrupt_libsvm(Pick("libsvm", case))
        f = tmp_path / f"case{case}{suffix}"
        f.write_bytes(data)
        command = ["theory"] if case % 2 else ["run", "--iterations", "2", "--quiet"]
        rc, err = run_cli(capsys, *command, "--problem", str(f), "--workers", "1")
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and str(f) in lines[0], (case, data, err)


# -- sweep files ------------------------------------------------------------------------------------
SWEEP = """name = "fuzz"
problems = "synthetic"
workers = 2
seeds = [0, 1]
iterations = 5
[[grid]]
methods = "marina"
p = [0.5, 1.0]
compressors = "randk:1"
"""
BAD = {
    "workers": ["0", "-1", '"2"', "2.5", "true", "[]"],
    "seeds": ["-1", '"a"', "[0, 1.5]", "{}"],
    "iterations": ["0", '"20"', "-5", "1.5", "nan"],
    "p": ["0", "1.5", '"0.5"', "true", "-0.1", "nan", "inf", '[0.5, "0.5"]'],
    "methods": ['"nope"', "3", '""', "[]"],
    "compressors": ['"randk:0"', '"randk:x"', '"zz"', '"topk:1"', '"randk:1000"'],
    "problems": ['"/nonexistent/file"', '"."', "1"],
    "name": ["[1, 2]"],
}


def corrupt_sweep(pick: Pick, tmp_path: Path) -> bytes:
    text = SWEEP
    kind = pick.int(5)
    if kind == 0:  # truncated: the last line (a required key) is always cut or lost
        return text.encode()[: pick.int(len(text) - 3)]
    if kind == 1:  # one value made wrong
        key = pick.of(list(BAD))
        lines = text.splitlines()
        i = next(i for i, line in enumerate(lines) if line.startswith(f"{key} ="))
        lines[i] = f"{key} = {pick.of(BAD[key])}"
        return ("\n".join(lines) + "\n").encode()
    if kind == 2:  # a key no sweep has, or one a method does not take
        return (text + pick.of(["foo = 1\n", "alpha = 0.5\n", "stepsize = -1\n", "online = 3\n"])).encode()
    if kind == 3:  # bytes that are not UTF-8, or not TOML
        garbage = bytes(128 + pick.int(128) for _ in range(1 + pick.int(20)))
        return garbage if pick.int(2) else text.encode().replace(b"[[grid]]", b"[[grid]")
    return text.replace('"synthetic"', f'"{tmp_path}"').encode()  # a directory as the problem


def test_fuzz_sweep_files(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text(SWEEP)
    out = str(tmp_path / "D")
    assert run_cli(capsys, "sweep", str(good), "--out", out, "--dry-run")[0] == 0
    for case in range(CASES):
        f = tmp_path / f"case{case}.toml"
        f.write_bytes(corrupt_sweep(Pick("sweep", case), tmp_path))
        rc, err = run_cli(capsys, "sweep", str(f), "--out", out, "--dry-run")
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("marina sweep: error:"), (case, err)
    rc, err = run_cli(capsys, "sweep", str(tmp_path), "--out", out)
    assert rc == 2 and "is a directory" in err


# -- per-run files ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-results")
    (base / "s.toml").write_text(SWEEP)
    assert main(["sweep", str(base / "s.toml"), "--out", str(base / "D"), "--quiet"]) == 0
    return base


def damage(pick: Pick, data: bytes, json_file: bool) -> tuple[bytes, bool]:
    """(damaged contents, whether the damage certainly makes the file unreadable)."""
    kind = pick.int(6)
    if kind == 0:
        return data[: pick.int(len(data) - 1)], True  # truncated (a JSON or Parquet file never survives)
    if kind == 1:
        return b"", True
    if kind == 2:
        return bytes(pick.int(256) for _ in range(1 + pick.int(64))), False  # garbage; could be JSON "1"
    if kind == 3 and json_file:  # valid JSON of the wrong shape
        return pick.of([b"[]", b"3", b'{"run_id": 1}', b'"x"', b"null"]), True
    if kind == 4:  # bytes flipped: may go unnoticed (a digit of a number, a Parquet data page)
        b = bytearray(data)
        for _ in range(1 + pick.int(8)):
            b[pick.int(len(b))] ^= 1 + pick.int(255)
        return bytes(b), False
    return data + b"\x00trailing", not json_file  # JSON with trailing bytes is invalid; Parquet is not


def test_fuzz_per_run_files(results_dir, tmp_path, capsys):
    runs = sorted(p.name for p in (results_dir / "D" / "runs").iterdir())
    for case in range(CASES):
        pick = Pick("per-run", case)
        out = tmp_path / f"D{case}"
        shutil.copytree(results_dir / "D", out)
        run_id = pick.of(runs)
        name = pick.of(["run.json", "history.parquet", "runs.json", "results.parquet"])
        target = out / name if name in ("runs.json", "results.parquet") else out / "runs" / run_id / name
        data, certain = damage(pick, target.read_bytes(), name.endswith(".json"))
        target.write_bytes(data)
        rc, listing = 0, ""
        rc = main(["sweep", str(results_dir / "s.toml"), "--out", str(out), "--dry-run"])
        listing, err = capsys.readouterr()
        assert rc == 0 and "Traceback" not in err, (case, name, err)
        for line in err.strip().splitlines():  # warnings only, one line each, naming a file of out
            assert line.startswith(f"marina: warning: {out}"), (case, line)
        if certain and name in ("run.json", "history.parquet"):
            assert f"{run_id}  missing" in listing and str(target) in err, (case, name, listing, err)
        if case % 20 == 0:  # the sweep redoes what was lost; plot-side readers cope
            assert main(["sweep", str(results_dir / "s.toml"), "--out", str(out), "--quiet"]) == 0
            err = capsys.readouterr()[1]
            assert "Traceback" not in err
        shutil.rmtree(out)


# -- issue 25: sweep sizes, compressed data, hostile per-run files, link and timeout specs ------
def test_fuzz_sweep_sizes(tmp_path, capsys, monkeypatch):
    """Grids of random list lengths under a random MARINA_MAX_RUNS: the declared count is the sum
    of the grids' products; beyond the limit it is refused naming the count (never expanded),
    within it expanded to exactly that many."""
    from marina.errors import ConfigError
    from marina.experiments import grid

    for case in range(CASES):
        pick = Pick("sweep-size", case)
        tables = []
        for _ in range(1 + pick.int(3)):
            axes = {
                k: list(range(1, 2 + pick.int(12 if pick.int(4) else 2000))) for k in ("seeds", "iterations")
            }
            tables.append({k: v for k, v in axes.items() if pick.int(3)})
        spec = grid.SweepSpec(
            [
                {"problems": ["synthetic"], "methods": ["gd"], "compressors": ["identity"], **t}
                for t in tables
            ],
            [f"g{i}" for i in range(len(tables))],
        )
        total = sum(math.prod(len(v) for v in t.values()) for t in tables)
        limit = 1 + pick.int(300)
        monkeypatch.setenv(grid.MAX_RUNS_ENV, str(limit))
        if total > limit:
            with pytest.raises(ConfigError, match=f"declares {total} runs"):
                grid.expand(spec)
        else:
            assert len(grid.expand(spec)) == total
        if case % 25 == 0:  # the command line says the same in one line
            body = "".join(
                "[[grid]]\n" + "".join(f"{k} = {v}\n" for k, v in {"iterations": [2], **t}.items())
                for t in tables
            )
            f = tmp_path / f"case{case}.toml"
            f.write_text('problems = "synthetic"\nmethods = "gd"\ncompressors = "identity"\n' + body)
            rc, err = run_cli(capsys, "sweep", str(f), "--out", str(tmp_path / "D"), "--dry-run")
            assert (rc == 2 and f"declares {total} runs" in err) if total > limit else rc == 0, (case, err)


ROW_TEXTS = [b"1 1:0.5 2:0.25\n-1 3:1\n", b"\0" * 64, b"-1 7:2\n1 1:1 9:0.5\n", bytes(range(256))]


def test_fuzz_compressed_data(tmp_path, capsys, monkeypatch):
    """Plain, gzip and bz2 texts of random size around the budget's bound (a quarter of 2 MiB):
    beyond it refused as over the memory budget before parsing, within it parsed or refused
    naming the file; one line at the command line, never a traceback."""
    import bz2

    from marina import data
    from marina.errors import ConfigError, MemoryBudgetError

    monkeypatch.setenv(memory.ENV_VAR, "2M")
    bound = 2**19
    for case in range(30):
        pick = Pick("compressed", case)
        chunk = pick.of(ROW_TEXTS)
        size = pick.int(3 * bound)
        text = (chunk * (size // len(chunk) + 1))[:size]
        suffix = pick.of([".svm", ".svm.gz", ".svm.bz2"])
        f = tmp_path / f"case{case}{suffix}"
        f.write_bytes({".svm": bytes, ".svm.gz": gzip.compress, ".svm.bz2": bz2.compress}[suffix](text))
        data.clear_cache()
        if size > bound and not (b"\0" in chunk and suffix != ".svm"):  # NULs: refused at once
            with pytest.raises(MemoryBudgetError, match=re.escape(str(f))):
                data.load(str(f))
        else:
            try:
                data.load(str(f))
            except ConfigError as err:
                assert str(f) in str(err) and not isinstance(err, MemoryBudgetError), (case, err)
        if case % 5 == 0:
            rc, err = run_cli(capsys, "datasets", str(f))
            assert rc == 0 or (rc == 2 and len(err.strip().splitlines()) == 1 and str(f) in err), (case, err)


HOSTILE_VALUES = [
    b"1e400",
    b'"abc"',
    b"[2]",
    b"{}",
    b"null",
    b"true",
    b"-1e400",
    b"1.5",
    b"[" * 5000 + b"]" * 5000,
]


def test_fuzz_hostile_per_run_files(results_dir, tmp_path, capsys):
    """A configuration field of run.json given a hostile value, a history with a metric column
    as strings or another run's rows, or a per-run file replaced by /dev/zero or a named pipe:
    collect reports it by path (one-line warnings) and leaves that run out, never stops."""
    import json

    import pandas as pd

    runs = sorted(p.name for p in (results_dir / "D" / "runs").iterdir())
    for case in range(24):
        pick = Pick("hostile", case)
        out = tmp_path / f"D{case}"
        shutil.copytree(results_dir / "D", out)
        run_id, other = pick.of(runs), pick.of(runs)
        folder = out / "runs" / run_id
        kind = pick.int(4)
        if kind == 0:
            key = pick.of(["workers", "seed", "iterations", "log_every", "problem", "method", "params"])
            value = pick.of(HOSTILE_VALUES)
            record = json.loads((folder / "run.json").read_text())
            record["config"][key] = "__hostile__"
            target = folder / "run.json"
            target.write_bytes(json.dumps(record).encode().replace(b'"__hostile__"', value))
            expected = {
                "workers": (int,),
                "seed": (int,),
                "iterations": (int,),
                "log_every": (int,),
                "problem": (str,),
                "method": (str,),
                "params": (dict,),
            }[key]
            parsed = None if value.startswith(b"[[") else json.loads(value)
            certain = value.startswith(b"[[") or isinstance(parsed, bool) or not isinstance(parsed, expected)
        elif kind == 1:
            target = folder / "history.parquet"
            frame = pd.read_parquet(target)
            if pick.int(2):
                column = pick.of(["grad_norm_sq", "loss", "bits_up", "iteration"])
                frame[column] = frame[column].astype(str)
                certain = True
            else:
                frame = pd.read_parquet(out / "runs" / other / "history.parquet")
                certain = other != run_id
            frame.to_parquet(target, index=False)
        else:
            target = folder / pick.of(["run.json", "history.parquet"])
            target.unlink()
            target.symlink_to("/dev/zero") if kind == 2 else os.mkfifo(target)
            certain = True
        rc, err = run_cli(capsys, "collect", str(out))
        assert rc == 0, (case, err)
        for line in err.strip().splitlines():
            assert line.startswith(f"marina: warning: {out}"), (case, line)
        if certain:
            assert str(target) in err, (case, err)
            assert run_id not in set(pd.read_parquet(out / "results.parquet")["run_id"]), case
        shutil.rmtree(out)


def test_fuzz_link_and_timeout_specs():
    """Random numbers (huge, tiny, subnormal, non-finite, negative) in link specs and timeouts:
    either accepted with every modelled time finite and >= 0, or refused naming the value."""
    from marina import distributed
    from marina.errors import ConfigError
    from marina.network.launch import MAX_TIMEOUT_S
    from marina.network.link import parse_link

    numbers = ["0", "1", "2.5", "1e400", "1e-320", "1e-5", "1e15", "1e16", "nan", "inf", "-1", "1e308", "7"]
    for case in range(CASES):
        pick = Pick("link", case)
        rate = pick.of(numbers) + pick.of(["bit", "kbit", "mbit", "gbit", "tbit", ""])
        spec = rate + (f":{pick.of(numbers)}{pick.of(['s', 'ms', 'us', 'h'])}" if pick.int(2) else "")
        try:
            link = parse_link(spec)
        except ConfigError as err:
            assert f"link == {spec!r}" in str(err), (case, err)
        else:
            for world in (1, 2, 1000):
                t = link.aggregation_s(world, 1 + pick.int(2**40), size_slots=pick.int(10))
                assert math.isfinite(t) and t >= 0 and (t > 0 or world == 1), (case, spec, t)
        timeout = float(pick.of(numbers))
        with pytest.raises(ConfigError) as info:
            distributed.init("cpu", timeout_s=timeout, environ={})
        valid = 0 < timeout <= MAX_TIMEOUT_S
        assert ("environment variable" in str(info.value)) == valid, (case, timeout, info.value)
        assert valid or f"timeout == {timeout!r}" in str(info.value), (case, info.value)
