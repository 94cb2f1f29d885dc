"""Memory estimate vs measured peak: one minibatch-difference oracle of mushrooms (n = 2) at
several batch sizes b, peak RSS growth (the kernel's high-water mark VmHWM, reset to the current
RSS through /proc/self/clear_refs just before the call, after a warm-up call) against
``minibatch_bytes(b, 2) + memory.WORKSPACE``; the estimate must stay above the measure.

Each b runs in a fresh process: ``python benchmarks/memory.py [b ...]``.
"""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import gc, sys, torch
from marina import memory, problems
b = int(sys.argv[1])
prob = problems.get("mushrooms", workers=2)
idx = (torch.arange(2 * b).reshape(2, b) * 7919) % int(prob.sizes.min())
x = prob.initial_point().double()
prob.minibatch_grad_diffs(x, x + 0.01, idx[:, :100])
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
gc.collect()
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # the peak (VmHWM) restarts from the current RSS: loading the data is not counted
before = status("VmRSS:")
prob.minibatch_grad_diffs(x, x + 0.01, idx)
after = status("VmHWM:")
print(after - before, prob.minibatch_bytes(b, 2) + memory.WORKSPACE)
"""


def measure(b: int) -> tuple[int, int]:
    """(measured peak growth, estimate) in bytes for batch size ``b``."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(b)], capture_output=True, text=True, check=True)
    measured, estimate = (int(v) for v in out.stdout.split())
    return measured, estimate


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [10_000, 50_000, 200_000]
    print(f"{'b':>9} {'measured MiB':>13} {'estimate MiB':>13} {'measured/estimate':>18}")
    for b in sizes:
        measured, estimate = measure(b)
        print(f"{b:>9} {measured / 2**20:>13.1f} {estimate / 2**20:>13.1f} {measured / estimate:>18.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
