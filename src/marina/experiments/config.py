"""One run's configuration and its run id.

A run is fully described by a :class:`RunConfig` (problem, workers, split, method, compressor,
seed, iterations, log_every and the method overrides). Its ``run_id`` is a stable hash of that
description and of the generator version (the device is left out: moving a run to a GPU is not
a new experiment), so a results directory knows which runs it already holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from marina import parameters
from marina.rng import GENERATOR_VERSION

__all__ = ["DEFAULT_CHECKPOINT_EVERY", "RunConfig", "default_log_every"]

IDENTITY_VERSION = 2
"""Bumped only if the meaning of a configuration field changes (it is hashed into run ids).
2: parameters hashed in their canonical types, the generator version hashed too."""

DEFAULT_CHECKPOINT_EVERY = 1000


def default_log_every(iterations: int) -> int:
    """History rows every ``iterations // 200`` rounds (at least 1): ~200 points per curve.

    Args:
        iterations: the run's number of rounds K.
    """
    return max(1, int(iterations) // 200)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run's history (plus ``device``, where it runs).

    ``params`` holds the method overrides that were given (any of
    :data:`marina.parameters.PARAMETERS`), in their canonical types
    (:meth:`marina.parameters.Parameter.canonical`: ``p = 1`` and ``p = 1.0`` are one
    configuration); a missing key means the theory default.

    Attributes:
        problem: the problem spec (bundled name, file path, ``synthetic``, ``fashion-mnist``, ...).
        workers: n, the number of workers.
        method: the method's name (``marina``, ``vr-marina``, ...).
        compressor: the compressor spec (``randk:5``, ...).
        seed: keys every random draw.
        iterations: number of communication rounds K.
        log_every: a history row every this many rounds.
        split: how the data is split among the workers (``contiguous``, ``shuffled``, ...).
        params: the method overrides given (see above).
        device: where the run computes (not part of the run's identity).
        link: a link model (``"100mbit"``), or None.
    """

    problem: str
    workers: int
    method: str
    compressor: str
    seed: int = 0
    iterations: int = 1000
    log_every: int = 10
    split: str = "contiguous"
    params: Mapping[str, float | int | bool] = field(default_factory=dict)
    device: str = "cpu"
    link: str | None = None
    """A link model (``"100mbit"``, :mod:`marina.network.link`): the history gets ``link_time_s``."""

    def __post_init__(self) -> None:
        canonical = {k: parameters.by_name(k).canonical(self.params[k]) for k in sorted(self.params)}
        object.__setattr__(self, "params", canonical)

    def identity(self) -> dict[str, Any]:
        """The hashed description: every field but ``device``, in canonical form, with the
        versions of this description and of the random generator (:data:`marina.rng.GENERATOR_VERSION`)."""
        return {
            "v": IDENTITY_VERSION,
            "generator": GENERATOR_VERSION,
            "problem": self.problem,
            "workers": int(self.workers),
            "split": self.split,
            "method": self.method,
            "compressor": self.compressor,
            "seed": int(self.seed),
            "iterations": int(self.iterations),
            "log_every": int(self.log_every),
            "params": dict(self.params),
            # only when set, so that the ids of runs without a link model stay what they were
            **({"link": self.link} if self.link is not None else {}),
        }

    @property
    def run_id(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical JSON of :meth:`identity`."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        d = self.identity()
        del d["v"], d["generator"]
        d["device"] = self.device
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def describe(self) -> str:
        """Short human description, e.g. ``a9a n=5 marina randk:1 p=0.1 seed=0``."""
        extra = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items())
        return " ".join(
            x
            for x in (
                f"{self.problem} n={self.workers}",
                "" if self.split == "contiguous" else f"split={self.split}",
                self.method,
                self.compressor,
                extra,
                f"link={self.link}" if self.link else "",
                f"seed={self.seed}",
            )
            if x
        )
