"""Theory formulas against values computed by hand from the theorems."""

from __future__ import annotations

import math

import pytest

from marina import theory
from marina.errors import ConfigError
from marina.methods.base import Setting


def test_gd_and_qgd_stepsizes():
    assert theory.gd_stepsize(4.0) == 0.25
    # Khaled & Richtarik: A = omega L_max / n = 9 * 2 / 3 = 6, B = 1, C = 2 A delta_inf = 12 * 0.5
    assert theory.qgd_abc_constants(2.0, 9.0, 3, 0.5) == (6.0, 1.0, 6.0)
    # gamma = min(1/(L_f B), 1/sqrt(L_f A K)) = min(1/4, 1/sqrt(4 * 6 * 100)) = 1/sqrt(2400)
    assert theory.qgd_stepsize(4.0, 2.0, 9.0, 3, 100) == pytest.approx(1 / math.sqrt(2400), rel=1e-15)
    # omega = 0: A = 0, only 1/L_f remains
    assert theory.qgd_stepsize(4.0, 2.0, 0.0, 3, 100) == 0.25


def test_diana_defaults():
    assert theory.diana_alpha(3.0) == 0.25
    # M = 1: gamma = 1/(10 L sqrt(1 + omega/n) (1 + omega + 1)) = 1/(10 * 2 * sqrt(1 + 3/3) * 5)
    assert theory.diana_stepsize(2.0, 3.0, 3) == pytest.approx(1 / (100 * math.sqrt(2)), rel=1e-14)
    # VR-DIANA: M = m/b = 64/8 = 8, M^{2/3} = 4: 1/(10 * 2 * sqrt(2) * (4 + 3 + 1))
    M = theory.vr_diana_epoch_length(64, 8)
    assert M == 8.0
    assert theory.diana_stepsize(2.0, 3.0, 3, M) == pytest.approx(1 / (160 * math.sqrt(2)), rel=1e-14)


def test_marina_defaults():
    # randk:1 on d = 100: omega = 99, zeta = 1, p = 1/100
    p = theory.marina_p(1, 100)
    assert p == 0.01
    # gamma = 1/(L (1 + sqrt((1 - p) omega/(p n)))) with n = 11: (0.99 * 99)/(0.01 * 11) = 891
    assert theory.marina_stepsize(2.0, 99.0, 11, p) == pytest.approx(
        1 / (2 * (1 + math.sqrt(891))), rel=1e-14
    )
    # identity: zeta = d, p = 1, gamma = 1/L: MARINA is GD
    assert theory.marina_p(100, 100) == 1.0
    assert theory.marina_stepsize(2.0, 0.0, 11, 1.0) == 0.5
    # PL (Thm 2.2): min(1/(L(1 + sqrt(2 * 891))), p/(2 mu)); mu small -> first term, large -> second
    first = 1 / (2 * (1 + math.sqrt(2 * 891)))
    assert theory.marina_pl_stepsize(2.0, 99.0, 11, p, 1e-9) == pytest.approx(first, rel=1e-14)
    assert theory.marina_pl_stepsize(2.0, 99.0, 11, p, 10.0) == pytest.approx(0.01 / 20, rel=1e-14)


def test_vr_marina_defaults():
    # finite sum: p = min(zeta/d, b'/(m + b')) = min(5/50, 10/(90 + 10)) = 0.1
    assert theory.vr_marina_p(5, 50, 90, 10) == pytest.approx(0.1)
    assert theory.vr_marina_p(5, 50, 190, 10) == pytest.approx(10 / 200)
    # online: b'/(b + b') = 10/(30 + 10) = 0.25 > zeta/d = 0.1
    assert theory.vr_marina_online_p(5, 50, 30, 10) == pytest.approx(0.1)
    assert theory.vr_marina_online_p(25, 50, 30, 10) == pytest.approx(0.25)
    # gamma = 1/(L + sqrt((1-p)/(p n) (omega L^2 + (1 + omega) Lavg^2/b')))
    #       = 1/(2 + sqrt(0.75/(0.25 * 3) (9 * 4 + 10 * 9/10))) = 1/(2 + sqrt(45))
    gamma = theory.vr_marina_stepsize(2.0, 3.0, 9.0, 3, 0.25, 10)
    assert gamma == pytest.approx(1 / (2 + math.sqrt(45)), rel=1e-14)


def test_pp_marina_defaults():
    # p = zeta r/(d n) = 2 * 5/(20 * 10) = 0.05
    p = theory.pp_marina_p(2, 20, 10, 5)
    assert p == pytest.approx(0.05)
    # gamma = 1/(L (1 + sqrt((1-p)(1+omega)/(p r)))) = 1/(3 (1 + sqrt(0.95 * 10/(0.05 * 5))))
    assert theory.pp_marina_stepsize(3.0, 9.0, p, 5) == pytest.approx(
        1 / (3 * (1 + math.sqrt(38))), rel=1e-12
    )


def test_guarantee_factors():
    assert theory.guarantee("marina", 1.0, 0.5, 10) == pytest.approx(2 * 1.0 / (0.5 * 10))
    assert theory.guarantee("gd", 2.0, 0.5, 10) == pytest.approx(0.8)
    assert theory.guarantee("diana", 1.0, 0.5, 10) == pytest.approx(0.8)
    # QGD: 2 e Delta_0/(gamma K) + L_f C gamma
    assert theory.guarantee("qgd", 1.0, 0.5, 10, L_f=2.0, qgd_C=3.0) == pytest.approx(2 * math.e / 5 + 3.0)
    for successor in ("ef21", "ef21-pp", "dasha", "dasha-page"):  # dense start: 2 Delta_0/(gamma K)
        assert theory.guarantee(successor, 1.0, 0.5, 10) == pytest.approx(0.4)
    with pytest.raises(ConfigError, match="no guarantee"):
        theory.guarantee("adam", 1.0, 0.5, 10)
    with pytest.raises(ConfigError, match="no guarantee"):
        theory.guarantee("ef21-sgd", 1.0, 0.5, 10)  # its bound adds a sigma^2 term


@pytest.mark.parametrize("method", ["ef21", "ef21-pp", "dasha", "dasha-page"])
def test_successor_predictions_solve_their_guarantee(method):
    setting = Setting(
        d=100,
        n=10,
        m=1000,
        m_min=1000,
        L=2.0,
        L_max=3.0,
        L_f=1.5,
        L_avg=4.0,
        omega=9.0,
        zeta=10.0,
        wire_bits=32,
        iterations=1,
        alpha=0.1,
    )
    eps, delta0 = 0.1, 0.25
    pred = theory.predict_successor(method, setting, eps=eps, delta0=delta0, message_bits=39.0, batch_size=10)
    # K rounds reach eps^2 and K - 1 do not
    assert theory.guarantee(method, delta0, pred.stepsize, pred.rounds) <= eps**2 * (1 + 1e-12)
    assert pred.rounds == 1 or theory.guarantee(method, delta0, pred.stepsize, pred.rounds - 1) > eps**2


@pytest.mark.parametrize(
    "method", ["gd", "qgd", "diana", "vr-diana", "marina", "vr-marina", "vr-marina-online", "pp-marina"]
)
def test_predict_is_consistent_with_guarantee(method):
    c = dict(
        d=100, n=10, m=1000, L=2.0, L_f=1.5, L_max=3.0, L_avg=4.0, omega=99.0, zeta=1.0, message_bits=39.0
    )
    eps, delta0 = 0.1, 0.25
    pred = theory.predict(method, eps=eps, delta0=delta0, batch_size=10, clients=5, dense_batch_size=100, **c)
    assert pred.rounds >= 1 and pred.bits_per_worker > 0 and pred.oracle_calls > 0
    if method != "qgd":
        name = "vr-marina" if method == "vr-marina-online" else method
        # K rounds reach eps^2 and K - 1 do not (the bound is solved exactly)
        assert theory.guarantee(name, delta0, pred.stepsize, pred.rounds) <= eps**2 * (1 + 1e-12)
        if pred.rounds > 1:
            assert theory.guarantee(name, delta0, pred.stepsize, pred.rounds - 1) > eps**2
    else:
        # Corollary 1 of Khaled & Richtarik with delta_inf = 0:
        # K >= 12 Delta_0 L_f/eps^2 max(1, 12 Delta_0 A/eps^2)
        A = 99.0 * 3.0 / 10
        assert pred.rounds == math.ceil(12 * delta0 * 1.5 / eps**2 * max(1.0, 12 * delta0 * A / eps**2))
    if method == "marina":
        p = 0.01
        assert pred.p == p
        # bits: one dense round, then p d w + (1 - p) message bits per round
        assert pred.bits_per_worker == pytest.approx(3200 + pred.rounds * (p * 3200 + (1 - p) * 39))
        assert pred.oracle_calls == pytest.approx(1000 * (pred.rounds + 1))
    if method == "gd":
        assert pred.bits_per_worker == pred.rounds * 3200


def test_marina_beats_diana_in_prediction_for_randk1():
    """Table 1: MARINA's rounds (1 + omega/sqrt(n)) vs DIANA's (1 + (1 + omega) sqrt(omega/n))."""
    c = dict(
        d=1000, n=100, m=100, L=1.0, L_f=1.0, L_max=1.0, L_avg=1.0, omega=999.0, zeta=1.0, message_bits=42.0
    )
    marina = theory.predict("marina", eps=0.01, delta0=1.0, **c)
    diana = theory.predict("diana", eps=0.01, delta0=1.0, **c)
    assert marina.rounds < diana.rounds and marina.bits_per_worker < diana.bits_per_worker


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: theory.marina_stepsize(1.0, 1.0, 2, 0.0), r"p == 0.0, must be in \(0, 1\]"),
        (lambda: theory.marina_stepsize(1.0, 1.0, 2, 1.5), r"p == 1.5, must be in \(0, 1\]"),
        (lambda: theory.gd_stepsize(0.0), r"L_f == 0.0, must be a finite number > 0"),
        (lambda: theory.diana_alpha(-1.0), r"omega == -1.0, must be a finite number >= 0"),
        (
            lambda: theory.predict(
                "sgd",
                eps=0.1,
                delta0=1,
                d=1,
                n=1,
                m=1,
                L=1,
                L_f=1,
                L_max=1,
                L_avg=1,
                omega=0,
                zeta=1,
                message_bits=1,
            ),
            "unknown method 'sgd'",
        ),
    ],
)
def test_theory_validation(call, match):
    with pytest.raises(ConfigError, match=match):
        call()
