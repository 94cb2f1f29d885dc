"""Test-session settings.

On a small shared machine, libgomp's default (active) wait policy makes idle OpenMP threads spin
and starve the thread doing the work (a 10^7-coordinate compression went from 0.2 s to 16 s).
PASSIVE must be set before torch loads libgomp, hence here, before any test module imports torch.

The ``seed`` fixture gives tests their random seeds, and prints them when a test fails.
"""

import os
import random

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SEED_ENV = "MARINA_TEST_SEED"


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A random seed (from ``MARINA_TEST_SEED`` when set), shown in the report of a failing test.

    Parametrize indirectly to mix fixed seeds in: ``@pytest.mark.parametrize("seed", ["random",
    0], indirect=True)``; each "random" entry draws its own seed.
    """
    param = getattr(request, "param", "random")
    if param != "random":
        return int(param)
    env = os.environ.get(SEED_ENV)
    value = int(env) if env else random.SystemRandom().randrange(2**31)
    request.node.stash[_SEED] = value
    return value


_SEED = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    value = item.stash.get(_SEED, None)
    if value is not None and report.failed:
        report.sections.append(("seed", f"random seed {value}: rerun with {SEED_ENV}={value}"))
    return report
