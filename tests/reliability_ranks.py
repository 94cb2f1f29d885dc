"""One rank of ``marina`` run by tests/test_reliability_ranks.py: ``python reliability_ranks.py
STOP ARGV...`` runs ``marina ARGV`` and, when STOP > 0, ends the process (exit 17) right after
the checkpoint of round STOP is written, as if the job were killed there."""

from __future__ import annotations

import os
import sys

from marina import runner
from marina.cli import main

STOPPED = 17


def stop_after_checkpoint(stop: int) -> None:
    save = runner.Checkpoint.save

    def save_then_stop(self, history, clock, status, message):
        save(self, history, clock, status, message)
        if self.setup.method.k == stop:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(STOPPED)

    runner.Checkpoint.save = save_then_stop


if __name__ == "__main__":
    if int(sys.argv[1]) > 0:
        stop_after_checkpoint(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
