"""Wall time of every ``marina ... --help`` (a fresh interpreter each, as a user types it),
with the time of a bare ``python -c pass`` and of ``python -c "import torch"`` for scale.

Each line is the median of ``--repeats`` runs, the commands' runs interleaved so that load from
other processes hits all alike. The target is under 0.5 s for every one.

Run: ``python benchmarks/cli_help.py [--repeats R]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from marina.cli import COMMANDS

COMMANDS_TIMED = [["--help"], *([name, "--help"] for name in COMMANDS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    probes = {
        "python -c pass": [sys.executable, "-c", "pass"],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        **{"marina " + " ".join(c): [sys.executable, "-m", "marina", *c] for c in COMMANDS_TIMED},
    }
    times: dict[str, list[float]] = {name: [] for name in probes}
    for _ in range(args.repeats):
        for name, cmd in probes.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    width = max(map(len, probes))
    for name, ts in times.items():
        print(f"{name:<{width}}  {statistics.median(ts):6.3f} s  (median of {len(ts)})")


if __name__ == "__main__":
    main()
