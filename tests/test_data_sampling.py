"""Normal, Gamma and Dirichlet draws from keyed randomness: moments within CLT bounds, hosting."""

from __future__ import annotations

import math

import pytest
import torch

from marina.data.sampling import dirichlet, log_gamma, normal
from marina.rng import Randomness

SEEDS = ["random", "random", 0]  # the seed fixture draws a seed for each "random" entry
N = 50_000


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_normal_moments(seed):
    z = normal(Randomness(seed, "t", 0, [0]), N)[0]
    # mean ~ N(0, 1/N); variance estimate sd sqrt(2/N); fourth moment 3 (sd sqrt(96/N))
    assert abs(float(z.mean())) < 6 / math.sqrt(N)
    assert abs(float(z.var()) - 1) < 6 * math.sqrt(2 / N)
    assert abs(float((z**4).mean()) - 3) < 6 * math.sqrt(96 / N)


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
@pytest.mark.parametrize("shape", [0.05, 0.5, 1.0, 3.7])
def test_gamma_moments(seed, shape):
    """Gamma(a, 1): mean a, variance a; E[log G] = digamma(a)."""
    lg = log_gamma(Randomness(seed, "t", 0, [0]), shape, N)[0]
    g = torch.exp(lg)
    sd_mean = math.sqrt(shape / N)
    assert abs(float(g.mean()) - shape) < 6 * sd_mean
    # Var(log G) = trigamma(a)
    trigamma = float(torch.special.polygamma(1, torch.tensor(shape, dtype=torch.float64)))
    digamma = float(torch.special.digamma(torch.tensor(shape, dtype=torch.float64)))
    assert abs(float(lg.mean()) - digamma) < 6 * math.sqrt(trigamma / N)


def test_dirichlet_rows_are_keyed_by_worker():
    conc = torch.tensor([0.3, 1.0, 2.0])
    full = dirichlet(Randomness(7, "d", 0, range(6)), conc)
    part = dirichlet(Randomness(7, "d", 0, [4, 1]), conc)
    assert torch.equal(part, full[[4, 1]])
    torch.testing.assert_close(full.sum(dim=1), torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_dirichlet_mean(seed):
    """E q_k = alpha_k / alpha_0, Var q_k = m_k (1 - m_k) / (alpha_0 + 1)."""
    conc = torch.tensor([0.2, 0.5, 1.3])
    rows = 20_000
    q = dirichlet(Randomness(seed, "d", 0, range(rows)), conc)
    mean = conc / conc.sum()
    sd = torch.sqrt(mean * (1 - mean) / (conc.sum() + 1) / rows)
    assert (torch.abs(q.mean(dim=0) - mean.double()) < 6 * sd.double()).all()
