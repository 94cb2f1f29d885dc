"""Error types marina raises on purpose, so front ends report them without a traceback and
callers decide by type, never by message text."""

from __future__ import annotations

__all__ = [
    "MarinaError",
    "ConfigError",
    "ValueRangeError",
    "MemoryBudgetError",
    "CheckpointError",
    "LockTimeoutError",
    "RunInterrupted",
    "MarinaWarning",
    "DamagedFileWarning",
]


class MarinaError(Exception):
    """Base class of every error marina raises on purpose."""


class ConfigError(MarinaError, ValueError):
    """A value given by the user breaks a constraint.

    The message names the value and the constraint, e.g. ``"randk: K == 0, must be >= 1"``.
    The command line prints it and exits with status 2.
    """


class ValueRangeError(ConfigError):
    """Values left the representable range: a non-finite entry, or one beyond the largest value
    of the wire format. Given as input it is a bad value (hence a :class:`ConfigError`); raised
    in the middle of a run it means the run diverged, and :func:`marina.run` catches it by this
    type to end the run with status ``"diverged"``.

    Args:
        message: what left the range, with the value and the limit.
        non_finite: True for a NaN or infinite entry, False for a finite value beyond the range
            (tells the two cases apart without reading the message).
    """

    def __init__(self, message: str, *, non_finite: bool = False) -> None:
        super().__init__(message)
        self.non_finite = bool(non_finite)


class MemoryBudgetError(ConfigError):
    """A run (or a data file) would need more memory than the budget allows
    (:mod:`marina.memory`); the message gives the estimate and the budget."""


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed: unreadable, or written by another run."""


class LockTimeoutError(MarinaError):
    """A lock of a results directory (or of one run in it) stayed held by another process
    longer than the timeout asked for; the message names the lock file."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT) between or inside rounds: ``RunInterrupted(round,
    iterations, checkpoint_round, checkpoint_path)``, the last two None when no checkpoint
    was written. A :class:`KeyboardInterrupt`, so code that catches that still does."""

    @property
    def round(self) -> int:
        """The round the run had reached."""
        return self.args[0]

    @property
    def iterations(self) -> int:
        return self.args[1]

    @property
    def checkpoint_round(self) -> int | None:
        """The round of the checkpoint a rerun resumes from (None: no checkpoint)."""
        return self.args[2]

    @property
    def checkpoint_path(self) -> str | None:
        return self.args[3] if self.args[2] is not None else None

    def __str__(self) -> str:
        text = f"interrupted at round {self.round} of {self.iterations}"
        if self.checkpoint_round is None:
            return text + "; no checkpoint written"
        return text + f"; checkpoint of round {self.checkpoint_round} in {self.checkpoint_path}"


class MarinaWarning(UserWarning):
    """Base class of the warnings marina issues on purpose (the command line prints each as one
    line)."""


class DamagedFileWarning(MarinaWarning):
    """A file of a results directory could not be read; the message names it and what was done
    instead (the run treated as not done, a combined file rebuilt)."""
