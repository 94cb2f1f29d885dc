"""Problems without smoothness constants (neural networks) run with an explicit stepsize."""

from __future__ import annotations

import random

import pytest
import torch

import marina
from marina import problems
from marina.errors import ConfigError

MESSAGE = "smoothness constants unknown here: pass stepsize=..."
METHODS = ["gd", "qgd", "diana", "vr-diana", "marina", "vr-marina", "pp-marina"]
METHODS += ["ef21", "ef21-pp", "ef21-sgd", "ef21-sgdm", "dasha", "dasha-page", "dasha-mvr"]


def _unknown(self):
    raise ConfigError(MESSAGE)


def _NoConstants(problem):
    """The same problem, but its constants raise, as a wrapped torch model's do by default."""
    blind = type(
        "NoConstants", (type(problem),), {k: property(_unknown) for k in ("L_i", "L_f", "L_avg", "L")}
    )
    problem.__class__ = blind
    return problem


def _problem():
    return problems.synthetic(workers=4, dim=12, samples=10, seed=3)


@pytest.mark.parametrize("method", METHODS)
def test_explicit_stepsize_gives_the_same_run_as_with_constants(method):
    seed = random.randrange(10**6)
    known = marina.run(
        method=method, compressor="randk:3", problem=_problem(), iterations=12, seed=seed, stepsize=0.02
    )
    blind = marina.run(
        method=method,
        compressor="randk:3",
        problem=_NoConstants(_problem()),
        iterations=12,
        seed=seed,
        stepsize=0.02,
    )
    cols = ["grad_norm_sq", "loss", "bits_up", "oracle_calls"]
    assert blind.status == known.status == "finished"
    assert torch.equal(
        torch.tensor(blind.history[cols].to_numpy()), torch.tensor(known.history[cols].to_numpy())
    )
    assert blind.params["stepsize"] == 0.02
    # parameters that do not involve L (p, alpha, b', r, q, a, b) keep their theory values
    for key in ("p", "alpha", "batch_size", "clients", "participation", "momentum", "mvr_momentum"):
        assert blind.params.get(key) == known.params.get(key)


@pytest.mark.parametrize("override", [{}, {"stepsize_multiplier": 2.0}])
def test_theory_stepsize_without_constants_names_the_way_out(override):
    with pytest.raises(ConfigError, match="pass stepsize"):
        marina.run(
            method="marina",
            compressor="randk:3",
            problem=_NoConstants(_problem()),
            iterations=3,
            seed=0,
            **override,
        )
