"""marina.run: reproducibility, guarantees, the paper's headline, divergence, errors, checkpoints."""

from __future__ import annotations

import pytest
import torch

import marina
from marina import problems, theory
from marina.errors import ConfigError
from marina.runner import HISTORY_COLUMNS
from test_methods import _one_thread  # noqa: F401 - autouse fixture: one torch thread here too


@pytest.fixture(scope="module")
def synth():
    return problems.synthetic(workers=4, dim=12, samples=25, seed=5)


@pytest.fixture(scope="module")
def mushrooms5():
    return problems.libsvm("mushrooms", workers=5)


@pytest.fixture(scope="module")
def mushrooms_small():
    """120 rows from each fifth of mushrooms: 5 workers, m = 120, d = 112."""
    return problems.libsvm(
        "mushrooms", workers=5, split=[list(range(i * 1600, i * 1600 + 120)) for i in range(5)]
    )


def _drop_time(res):
    return res.history.drop(columns="time_s")


def test_history_columns_and_params(synth):
    res = marina.run(method="marina", problem=synth, compressor="randk:3", iterations=20, log_every=6)
    assert tuple(res.history.columns) == HISTORY_COLUMNS
    assert res.history["iteration"].tolist() == [0, 6, 12, 18, 20]
    assert res.status == "finished"
    for key in ("stepsize", "stepsize_theory", "p", "omega", "zeta", "L"):
        assert key in res.params
    assert res.params["omega"] == 12 / 3 - 1 and res.params["zeta"] == 3.0
    assert res.params["p"] == pytest.approx(3 / 12)
    assert res.params["stepsize"] == pytest.approx(theory.marina_stepsize(synth.L, 3.0, 4, 0.25), rel=1e-14)
    # grad_norm_sq is the norm of the whole gradient at the logged iterate
    g = synth.grad(res.x)
    assert res.history["grad_norm_sq"].iloc[-1] == pytest.approx(float(g @ g), rel=1e-12)
    # multiplier scales the theory stepsize
    half = marina.run(
        method="marina", problem=synth, compressor="randk:3", iterations=2, stepsize_multiplier=0.5
    )
    assert half.params["stepsize"] == pytest.approx(res.params["stepsize"] / 2, rel=1e-15)


@pytest.mark.parametrize("method", ["qgd", "diana", "vr-diana", "marina", "vr-marina", "pp-marina"])
def test_same_seed_same_history_different_seed_differs(synth, method, seed):
    kw = dict(method=method, problem=synth, compressor="randk:2", iterations=15, log_every=1, p=0.5)
    if method in ("qgd", "diana", "vr-diana"):
        kw.pop("p")
    a = marina.run(seed=seed, **kw)
    b = marina.run(seed=seed, **kw)
    c = marina.run(seed=seed + 1, **kw)
    assert _drop_time(a).equals(_drop_time(b)) and torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)


# Each method with its theory defaults for a budget K where its guarantee is informative (below
# ||grad f(x^0)||^2) on 600 mushrooms rows; VR-DIANA with b = m (M = 1), the default b = m/100
# would need K ~ 10^5 rounds for an informative bound.
GUARANTEE_CASES = [
    ("gd", "identity", 200, {}),
    ("qgd", "identity", 200, {}),
    ("diana", "identity", 1500, {}),
    ("vr-diana", "identity", 1000, {"batch_size": 120}),
    ("marina", "randk:10", 400, {}),
    ("vr-marina", "identity", 300, {}),
    ("pp-marina", "randk:10", 400, {}),
]


@pytest.mark.parametrize("method, spec, K, params", GUARANTEE_CASES)
def test_theory_defaults_meet_their_guarantee(mushrooms_small, method, spec, K, params):
    """mean_{k<K} ||grad f(x^k)||^2 <= the bound of the method's theorem (Delta_0 <= f(x^0): f >= 0).
    The bounds hold in expectation; they are loose by large factors, so one run suffices."""
    prob = mushrooms_small
    res = marina.run(method=method, problem=prob, compressor=spec, iterations=K, log_every=1, **params)
    gns = res.history["grad_norm_sq"].to_numpy()
    delta0 = float(res.history["loss"].iloc[0])  # f(x^0) - f* <= f(x^0) since f >= 0
    kw = {}
    if method == "qgd":
        s = res.params
        _, _, C = theory.qgd_abc_constants(float(prob.L_i.max()), s["omega"], 5, delta0)
        kw = dict(L_f=s["L_f"], qgd_C=C)
    bound = theory.guarantee(method, delta0, res.params["stepsize"], K, **kw)
    assert bound < gns[0], "budget too small for an informative guarantee"
    assert gns[:K].mean() <= bound


def test_marina_needs_fewer_bits_than_diana_on_mushrooms(mushrooms5, seed):
    """The paper's headline (Figure 1, randk:1, theory stepsizes): MARINA reaches a grad_norm_sq
    level with fewer bits per worker than DIANA sends in total to get there."""
    mar = marina.run(
        method="marina", problem=mushrooms5, compressor="randk:1", iterations=300, seed=seed, log_every=5
    )
    dia = marina.run(
        method="diana", problem=mushrooms5, compressor="randk:1", iterations=600, seed=seed, log_every=5
    )
    target = 0.05
    hit = mar.history[mar.history["grad_norm_sq"] <= target]
    assert len(hit) > 0
    bits_marina = hit["bits_up"].iloc[0]
    # every DIANA iterate reached with at least MARINA's bits is still above the target
    dia_after = dia.history[dia.history["bits_up"] >= bits_marina]
    assert len(dia_after) > 0
    assert dia.history[dia.history["grad_norm_sq"] <= target].empty


def test_divergence_keeps_history_and_names_stepsize(synth):
    res = marina.run(
        method="marina", problem=synth, compressor="randk:3", iterations=500, stepsize=1e3, log_every=2
    )
    assert res.status == "diverged"
    last = int(res.history["iteration"].iloc[-1])
    assert 0 < last < 500
    assert res.history["iteration"].tolist()[:-1] == list(range(0, last, 2))[: len(res.history) - 1]
    assert "stepsize 1000" in res.message and "stepsize_multiplier" in res.message


@pytest.mark.parametrize(
    "method, params, match",
    [
        ("marina", {"stepsize": 0}, r"marina: stepsize == 0, must be a finite number > 0"),
        ("gd", {"stepsize": -1.0}, r"gd: stepsize == -1.0, must be a finite number > 0"),
        ("marina", {"stepsize_multiplier": 0.0}, r"stepsize_multiplier == 0.0, must be a finite number > 0"),
        (
            "marina",
            {"stepsize": 0.1, "stepsize_multiplier": 2},
            "give stepsize or stepsize_multiplier, not both",
        ),
        ("marina", {"p": 0}, r"marina: p == 0, must be in \(0, 1\]"),
        ("pp-marina", {"p": 1.5}, r"pp-marina: p == 1.5, must be in \(0, 1\]"),
        ("diana", {"alpha": 2.0}, r"diana: alpha == 2.0, must be in \(0, 1\]"),
        ("vr-marina", {"batch_size": 0}, r"batch_size == 0, must be in \[1, 25\]"),
        ("vr-marina", {"batch_size": 26}, r"batch_size == 26, must be in \[1, 25\]"),
        ("vr-diana", {"batch_size": 2.5}, r"batch_size == 2.5, must be an integer"),
        ("pp-marina", {"clients": 0}, r"clients == 0, must be in \[1, 4\]"),
        ("pp-marina", {"clients": 5}, r"clients == 5, must be in \[1, 4\]"),
        ("marina", {"alpha": 0.5}, r"marina: unknown parameter\(s\) alpha; marina takes stepsize"),
        ("vr-marina", {"dense_batch_size": 10}, "dense_batch_size == 10 is used only with online=True"),
        ("vr-diana", {"refresh_p": 0.0}, r"refresh_p == 0.0, must be in \(0, 1\]"),
    ],
)
def test_bad_overrides_raise_config_error(synth, method, params, match):
    with pytest.raises(ConfigError, match=match):
        marina.run(method=method, problem=synth, compressor="randk:2", iterations=3, **params)


def test_bad_run_arguments(synth):
    with pytest.raises(ConfigError, match="iterations == 0, must be >= 1"):
        marina.run(method="marina", problem=synth, iterations=0)
    with pytest.raises(ConfigError, match="log_every == 0, must be >= 1"):
        marina.run(method="marina", problem=synth, iterations=3, log_every=0)
    with pytest.raises(ConfigError, match="unknown method 'adam'"):
        marina.run(method="adam", problem=synth, iterations=3)
    with pytest.raises(ConfigError, match=r"x0 has shape \(3,\), must be \(12,\)"):
        marina.run(method="gd", problem=synth, iterations=3, x0=torch.zeros(3))
    with pytest.raises(ConfigError, match="workers == 3, but the given problem has 4 workers"):
        marina.run(method="gd", problem=synth, workers=3, iterations=3)


def test_progress_and_extra_metrics(synth):
    class WithAccuracy(type(synth)):
        def extra_metrics(self, x):
            return {"train_accuracy": 0.5, "norm_x": float(x @ x)}

    prob = problems.synthetic(workers=4, dim=12, samples=25, seed=5)
    prob.__class__ = WithAccuracy
    seen = []
    res = marina.run(
        method="gd",
        problem=prob,
        iterations=4,
        log_every=2,
        stepsize=0.1,
        progress=lambda row, K: seen.append((row, K)),
    )
    assert list(res.history.columns) == [*HISTORY_COLUMNS, "train_accuracy", "norm_x"]
    assert [r["iteration"] for r, _ in seen] == [0, 2, 4] and all(K == 4 for _, K in seen)
    assert res.history["norm_x"].iloc[-1] == pytest.approx(float(res.x @ res.x))


class _Stop(Exception):
    pass


@pytest.mark.parametrize("method", ["marina", "diana", "vr-diana", "pp-marina", "vr-marina"])
def test_checkpoint_resume_gives_the_uninterrupted_history(tmp_path, synth, method, seed):
    kw = dict(method=method, problem=synth, compressor="randk:2", iterations=40, seed=seed, log_every=3)
    full = marina.run(**kw)
    path = tmp_path / "run.ckpt"

    def stop_at_25(row, K):
        if row["iteration"] >= 25:
            raise _Stop

    with pytest.raises(_Stop):
        marina.run(checkpoint_path=path, checkpoint_every=10, progress=stop_at_25, **kw)
    state = torch.load(path, weights_only=True)  # plain tensors and primitives only
    assert state["method_state"]["k"] == 20 and state["status"] == "running"
    seen = []
    resumed = marina.run(
        checkpoint_path=path, checkpoint_every=10, progress=lambda r, K: seen.append(r), **kw
    )
    assert seen[0]["iteration"] == 21  # continued after the checkpoint of round 20
    assert _drop_time(resumed).equals(_drop_time(full))
    assert torch.equal(resumed.x, full.x)
    # a finished run is returned from its final checkpoint without recomputing
    seen.clear()
    again = marina.run(checkpoint_path=path, checkpoint_every=10, progress=lambda r, K: seen.append(r), **kw)
    assert not seen and _drop_time(again).equals(_drop_time(full)) and again.status == "finished"
    with pytest.raises(ConfigError, match="written by a different run"):
        marina.run(checkpoint_path=path, **{**kw, "seed": seed + 1})


def test_theory_parameters_used(synth):
    """Result.params holds the theorem values computed from the problem's constants."""
    n, L = 4, synth.L
    pl = marina.run(method="marina", problem=synth, compressor="randk:3", iterations=2, mu=0.01)
    assert pl.params["mu"] == 0.01
    assert pl.params["stepsize"] == pytest.approx(theory.marina_pl_stepsize(L, 3.0, n, 0.25, 0.01), rel=1e-14)
    on = marina.run(
        method="vr-marina", problem=synth, compressor="randk:3", iterations=2, online=True, batch_size=2
    )
    # b = min(m, 10 b') = 20; p = min(zeta/d, b'/(b + b')) = min(0.25, 2/22)
    assert on.params["dense_batch_size"] == 20 and on.params["p"] == pytest.approx(2 / 22)
    assert on.params["stepsize"] == pytest.approx(
        theory.vr_marina_stepsize(L, synth.L_avg, 3.0, n, 2 / 22, 2), rel=1e-14
    )
    pp = marina.run(method="pp-marina", problem=synth, compressor="randk:3", iterations=2)
    # r = ceil(n/2) = 2, p = zeta r/(d n) = 3 * 2/(12 * 4)
    assert pp.params["clients"] == 2 and pp.params["p"] == pytest.approx(6 / 48)
    vd = marina.run(method="vr-diana", problem=synth, compressor="randk:3", iterations=2, batch_size=5)
    # M = m/b = 5, refresh probability 1/M, alpha = 1/(1 + omega)
    assert vd.params["refresh_p"] == pytest.approx(0.2) and vd.params["alpha"] == pytest.approx(0.25)
    L_vr = max(float(synth.L_i.max()), synth.L_avg)
    assert vd.params["stepsize"] == pytest.approx(theory.diana_stepsize(L_vr, 3.0, n, 5.0), rel=1e-14)
    qgd = marina.run(method="qgd", problem=synth, compressor="randk:3", iterations=50)
    assert qgd.params["stepsize"] == pytest.approx(
        theory.qgd_stepsize(synth.L_f, float(synth.L_i.max()), 3.0, n, 50), rel=1e-14
    )
