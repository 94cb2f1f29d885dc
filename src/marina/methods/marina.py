"""MARINA, VR-MARINA (finite sum and online) and PP-MARINA (Gorbunov et al., ICML 2021)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from marina import theory
from marina.compressors.base import Compressor
from marina.errors import ConfigError
from marina.lazy_rows import LazyRows
from marina.methods.base import (
    IterateState,
    Method,
    Setting,
    TheoryRow,
    added,
    cpu_field,
    lazy_field,
)
from marina.methods.diana import default_batch_size
from marina.network.base import Network
from marina.problems.base import Problem

__all__ = ["MARINA", "VRMARINA", "PPMARINA", "EstimatorState", "MarinaState", "PPMarinaState"]


@dataclass
class EstimatorState(IterateState):
    """VR-MARINA's state after round k: x^k and the estimator."""

    g: Tensor
    """g^k (d,), the server's estimator of grad f(x^k), replicated on every process."""


@dataclass
class MarinaState(EstimatorState):
    """MARINA's state after round k: VR-MARINA's plus the workers' last local gradients."""

    lazy_local_grads: LazyRows = lazy_field()
    """grad f_i(x^k) (n_local, d) as lazy rows, kept for the next round's difference (a
    sparsifier reads K entries of it); :func:`marina.lazy_rows.materialize` gives the tensor."""


@dataclass
class PPMarinaState(MarinaState):
    """PP-MARINA's state after round k: MARINA's plus which clients hold their gradient."""

    fresh: Tensor = cpu_field()
    """(n,) bool over ALL workers, on the CPU: client i holds grad f_i(x^k) (it took part in
    round k - 1, or that round was dense)."""


def _first_dense_round(method: Method, x0: Tensor) -> tuple[Tensor, LazyRows]:
    """Line 2 of MARINA and PP-MARINA: g^0 = grad f(x^0), every worker sending grad f_i(x^0)
    dense. Returns g^0 and the local gradients, kept for the difference of round 0."""
    lazy_local_grads = method.problem.lazy_local_grads(x0)
    method._charge_full()
    return method.net.aggregate_dense(lazy_local_grads, 0, method.dense), lazy_local_grads


def _p_size(s: Setting, given: dict[str, Any]) -> float:
    """What Corollaries 2.1, 3.1, 3.2 and 4.1 divide by d to get p: zeta_Q (non-zeros), or with
    ``p="bits"`` the expected message bits over the bits of one dense value, so that p d / zeta
    becomes dense bits over message bits (:func:`marina.theory.bits_p`)."""
    if given.get("p") == "bits":
        if not math.isfinite(s.message_bits):
            raise ConfigError("p == 'bits' needs the expected message size of the compressor, unknown here")
        return s.message_bits / s.wire_bits
    return s.zeta


def _given_p(given: dict[str, Any], default: float) -> float:
    """The given p, or ``default`` (the theory value) when none or "bits" was given; warns when
    the default is 1 (MARINA then sends dense rounds only: it is GD)."""
    p = given.get("p", "theory")
    if p not in ("theory", "bits"):
        return p
    if default >= 1.0:
        why = "p='bits': a message costs a dense one" if p == "bits" else "zeta_Q = d: nothing is sparsified"
        warnings.warn(
            f"the theory p is 1 ({why}), so every round is dense and the method reduces to GD; "
            "give p" + ("" if p == "bits" else ", or p='bits' for the bit-aware choice"),
            stacklevel=4,
        )
    return default


def _prediction(
    cls: type[Method], s: Setting, K: int, gamma: float, p: float, oracle: float, **kw: Any
) -> theory.Prediction:
    """A MARINA-family prediction: the dense g^0 plus K rounds of p d + (1 - p) message values
    (``kw["share"]``, default 1, of the messages sent), ``oracle`` calls in all."""
    dense, msg = float(s.d) * s.wire_bits, float(kw["message_bits"])
    bits = dense + K * (p * dense + (1.0 - p) * kw.get("share", 1.0) * msg)
    return theory.Prediction(kw.get("name", cls.name), K, float(bits), float(oracle), gamma, p)


def _rounds(cls: type[Method], gamma: float, **kw: Any) -> int:
    return theory.rounds_to_reach(cls.guarantee_factor, kw["delta0"], gamma, kw["eps"], kw.get("rounds"))


class MARINA(Method):
    """MARINA (Algorithm 1 of the paper).

    Algorithm:

    2. g^0 = grad f(x^0)  (every worker sends grad f_i(x^0) dense: counted in bits and oracle calls)
    3. for k = 0, 1, ..., K-1:
    4.   sample c_k ~ Be(p)  (shared stream "coin": the same on every worker; see
         :meth:`Method._shared_uniforms` for the keying)
    5.   broadcast g^k to all workers
    7.   x^{k+1} = x^k - gamma g^k
    8.   g_i^{k+1} = grad f_i(x^{k+1}) if c_k = 1,
         else g^k + Q_i(grad f_i(x^{k+1}) - grad f_i(x^k))  (own randomness: stream "compress", round k)
    10.  g^{k+1} = (1/n) sum_i g_i^{k+1}

    Every worker keeps grad f_i(x^k) from the previous round, so a round costs one local
    gradient evaluation (m_i oracle calls). Defaults: p = zeta_Q/d (Corollary 2.1),
    gamma = 1/(L (1 + sqrt((1-p) omega/(p n)))) (Theorem 2.1); with ``mu`` (a PL constant)
    gamma = min(1/(L (1 + sqrt(2 (1-p) omega/(p n)))), p/(2 mu)) (Theorem 2.2). A correlated
    compressor (PermK) gets gamma = 1/(L_f + sqrt((1-p)/p ((A-B) L^2 + B L_pm^2))) from the AB
    inequality (Szlendak, Tyurin, Richtarik 2022, cited as Theorem 4, numbering unverified;
    :func:`marina.theory.marina_ab_stepsize`), and omega_eff = n A in Theorem 2.2.
    ``p="bits"``: p = expected message bits / dense bits.
    State: :class:`MarinaState` (x^k, g^k, the lazy grad f_i(x^k)).
    """

    name = "marina"
    State = MarinaState
    takes = ("p", "mu")
    # Theorem 2.1 (full statement, Theorem C.1): E||grad f(x_hat^K)||^2 <= 2 Delta_0/(gamma K)
    guarantee_factor = 2.0
    theory_rows = (TheoryRow("marina", order=4), TheoryRow("marina bits", {"p": "bits"}, order=8))
    plot_order = 0

    @classmethod
    def predict(cls, setting: Setting, used: dict[str, Any], **kw: Any) -> theory.Prediction:
        """Corollary 2.1's p and Theorem 2.1's stepsize (Szlendak et al.'s for a correlated
        compressor, numbering unverified); per round m oracle calls."""
        s, size = setting, theory.p_size(used.get("p"), setting.zeta, kw["message_bits"], setting.wire_bits)
        p = theory.chosen_p(used.get("p"), theory.marina_p(size, s.d))
        if s.correlated:
            gamma = theory.marina_ab_stepsize(s.L_f, s.L, s.L_pm, s.ab_A, s.ab_B, p)
        else:
            gamma = theory.marina_stepsize(s.L, s.omega, s.n, p)
        K = _rounds(cls, gamma, **kw)
        return _prediction(cls, s, K, gamma, p, float(s.m) + K * float(s.m), **kw)

    state: MarinaState

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        p = _given_p(given, theory.marina_p(_p_size(s, given), s.d))
        out: dict[str, Any] = {"p": p}
        if "mu" in given:
            # Theorem 2.2's proof uses the variance of the average only: omega_eff is valid
            out["stepsize"] = theory.marina_pl_stepsize(s.L, s.omega_eff, s.n, p, given["mu"])
            out["mu"] = given["mu"]
        elif s.correlated:
            out["stepsize"] = theory.marina_ab_stepsize(s.L_f, s.L, s.L_pm, s.ab_A, s.ab_B, p)
        else:
            out["stepsize"] = theory.marina_stepsize(s.L, s.omega, s.n, p)
        return out

    def __init__(
        self, problem: Problem, network: Network, compressor: Compressor, params: dict[str, Any]
    ) -> None:
        super().__init__(problem, network, compressor, params)
        self.p = float(self.params["p"])

    def round_coin(self, k: int) -> bool:
        """c_k ~ Be(p) (line 4; shared stream "coin")."""
        return self._coin("coin", self.p, k)

    def is_dense_round(self, k: int) -> bool:
        return self.round_coin(k)

    def _initial_state(self, x0: Tensor) -> MarinaState:
        g, lazy_local_grads = _first_dense_round(self, x0)
        return MarinaState(x=x0, g=g, lazy_local_grads=lazy_local_grads)

    def step(self) -> None:
        k, state = self.k, self.state
        # 4. c_k ~ Be(p), shared
        c = self.is_dense_round(k)
        # 5. broadcast g^k
        self._broadcast()
        # 7. x^{k+1} = x^k - gamma g^k
        state.x = self._next_iterate(state.x, state.g)
        # 8. one local gradient evaluation per round: grad f_i(x^{k+1}) (lazy rows: a sparsifier
        #    reads only its K entries of the difference, see marina.lazy_rows)
        lazy_new_grads = self.problem.lazy_local_grads(state.x)
        self._charge_full()
        if c:
            # 8.+10. c_k = 1: g^{k+1} = (1/n) sum_i grad f_i(x^{k+1}), sent dense
            state.g = self.net.aggregate_dense(lazy_new_grads, k + 1, self.dense)
        else:
            # 8.+10. c_k = 0: g^{k+1} = g^k + (1/n) sum_i Q_i(grad f_i(x^{k+1}) - grad f_i(x^k))
            state.g = self.net.aggregate_added(state.g, self.Q, lazy_new_grads - state.lazy_local_grads, k)
        state.lazy_local_grads = lazy_new_grads
        self.k = k + 1


class VRMARINA(Method):
    """VR-MARINA: finite-sum case (Algorithm 2) and online case (Algorithm 3, Theorem 3.2).

    Finite sum (``online=False``, the default):

    2. g^0 = grad f(x^0)  (dense round)
    3. for k = 0, 1, ..., K-1:
    4.   sample c_k ~ Be(p)  (shared stream "coin", block-keyed by round)
    5.   broadcast g^k
    7.   x^{k+1} = x^k - gamma g^k
    8.   g_i^{k+1} = grad f_i(x^{k+1}) if c_k = 1 (m_i oracle calls), else
         g^k + Q_i((1/b') sum_{j in I'_{i,k}} (grad f_ij(x^{k+1}) - grad f_ij(x^k)))
         with I'_{i,k} b' local samples drawn without replacement (stream "minibatch", keyed
         per worker and round): 2 b' oracle calls, never O(m)
    10.  g^{k+1} = (1/n) sum_i g_i^{k+1}

    Online (``online=True``): f_i(x) = E_{xi ~ D_i} f_xi(x) with D_i uniform on the local data,
    samples drawn i.i.d. (with replacement): g^0 and the c_k = 1 rounds use
    g_i = (1/b) sum_{j in I_{i,k}} grad f_{xi_ij}(x) on b = ``dense_batch_size`` samples (b oracle
    calls); the c_k = 0 rounds use the difference on b' i.i.d. samples.

    Defaults: b' = max(1, m/100) (the paper's Figure 1); p = min(zeta_Q/d, b'/(m+b'))
    (Corollary 3.1) or min(zeta_Q/d, b'/(b+b')) online (Corollary 3.2) with b = min(m, 10 b')
    (the theory's b = sigma^2/(n eps^2) needs the unknown noise level sigma);
    gamma = 1/(L + sqrt((1-p)/(p n) (omega L^2 + (1+omega) L_avg^2/b'))) (Theorems 3.1, 3.2).
    State: :class:`EstimatorState` (x^k, g^k).
    """

    name = "vr-marina"
    State = EstimatorState
    takes = ("p", "batch_size", "online", "dense_batch_size")
    guarantee_factor = 2.0  # Theorem 3.1 (finite sum), same form
    theory_rows = (
        TheoryRow("vr-marina", order=5),
        TheoryRow("vr-marina online", {"online": True}, order=6),
        TheoryRow("vr-marina bits", {"p": "bits"}, order=9),
        TheoryRow("vr-mar. online bits", {"online": True, "p": "bits"}, order=10),
    )
    plot_order = 1

    @classmethod
    def predict(cls, setting: Setting, used: dict[str, Any], **kw: Any) -> theory.Prediction:
        """Corollary 3.1's p (3.2's, and the name NAME-online, for the online variant) and Theorem
        3.1's stepsize; per round p m (p b online) + (1 - p) 2 b' oracle calls."""
        s, size = setting, theory.p_size(used.get("p"), setting.zeta, kw["message_bits"], setting.wire_bits)
        bp = int(used.get("batch_size") or 1)
        if used.get("online"):
            b = int(used.get("dense_batch_size") or s.m)
            p = theory.chosen_p(used.get("p"), theory.vr_marina_online_p(size, s.d, b, bp))
            dense_oracle, kw["name"] = float(b), cls.name + "-online"
        else:
            p = theory.chosen_p(used.get("p"), theory.vr_marina_p(size, s.d, s.m, bp))
            dense_oracle = float(s.m)
        gamma = theory.vr_marina_stepsize(s.L, s.L_avg, s.omega_eff, s.n, p, bp)
        per_round = p * dense_oracle + (1.0 - p) * 2.0 * bp
        K = _rounds(cls, gamma, **kw)
        return _prediction(cls, s, K, gamma, p, dense_oracle + K * per_round, **kw)

    state: EstimatorState

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        online = given.get("online", False)
        bp = given.get("batch_size", default_batch_size(s))
        out: dict[str, Any] = {"batch_size": bp, "online": online}
        if online:
            b = given.get("dense_batch_size", min(s.m, 10 * bp))
            p_theory = given.get("p", "theory") in ("theory", "bits")
            if b < bp:  # Corollary 3.2 takes b' <= b (the dense rounds' minibatch is the larger)
                what = f"dense_batch_size == {b} is smaller than batch_size == {bp}"
                if "batch_size" in given:
                    raise ConfigError(f"vr-marina: {what}, must be b >= b' (Corollary 3.2)")
                if p_theory:  # Corollary 3.2's p is not defined there
                    raise ConfigError(
                        f"vr-marina: {what} (the default b' = m/100), must be b >= b' for the theory p "
                        "(Corollary 3.2); give batch_size <= dense_batch_size, or p"
                    )
                warnings.warn(  # the default b' = m/100 with a given p: kept (recorded runs)
                    f"vr-marina: {what} (the default b' = m/100), outside Corollary 3.2 (b' <= b); "
                    "give batch_size <= dense_batch_size",
                    stacklevel=4,
                )
            out["dense_batch_size"] = b
            if p_theory:
                p = _given_p(given, theory.vr_marina_online_p(_p_size(s, given), s.d, b, bp))
            else:
                p = given["p"]
        else:
            if "dense_batch_size" in given:
                raise ConfigError(
                    f"vr-marina: dense_batch_size == {given['dense_batch_size']} is used only with "
                    "online=True (the finite-sum variant computes full local gradients on dense rounds)"
                )
            p = _given_p(given, theory.vr_marina_p(_p_size(s, given), s.d, s.m, bp))
        out["p"] = p
        # correlated Q: omega_eff = n A (the proof of Theorem 3.1 bounds the average's variance only)
        out["stepsize"] = theory.vr_marina_stepsize(s.L, s.L_avg, s.omega_eff, s.n, p, bp)
        out["L_avg"] = s.L_avg
        return out

    def __init__(
        self, problem: Problem, network: Network, compressor: Compressor, params: dict[str, Any]
    ) -> None:
        super().__init__(problem, network, compressor, params)
        self.p = float(self.params["p"])
        self.b_prime = int(self.params["batch_size"])  # b', the minibatch of compressed rounds
        self.online = bool(self.params["online"])
        self.b = int(self.params["dense_batch_size"]) if self.online else None  # online dense rounds

    def round_coin(self, k: int) -> bool:
        """c_k ~ Be(p) (line 4; shared stream "coin")."""
        return self._coin("coin", self.p, k)

    def is_dense_round(self, k: int) -> bool:
        return self.round_coin(k)

    def _dense_estimate(self, x: Tensor, round: int) -> Tensor:
        """Local gradients of the dense rounds, dense: full (finite sum) or a b-minibatch (online)."""
        if self.online:
            idx = self._minibatch(self.b, round, replace=True)
            self.oracle_calls += float(self.b)
            return self.problem.minibatch_grads(x, idx)
        self._charge_full()
        return self.problem.local_grads(x)

    def _initial_state(self, x0: Tensor) -> EstimatorState:
        # 2. g^0 = grad f(x^0) (online: minibatch of b samples, keyed as round -1)
        return EstimatorState(x=x0, g=self.net.aggregate_dense(self._dense_estimate(x0, -1), 0, self.dense))

    def step(self) -> None:
        k, state = self.k, self.state
        # 4. c_k ~ Be(p), shared
        c = self.is_dense_round(k)
        # 5. broadcast g^k
        self._broadcast()
        # 7. x^{k+1} = x^k - gamma g^k
        x_old = state.x
        state.x = self._next_iterate(x_old, state.g)
        if c:
            # 8.+10. dense round
            state.g = self.net.aggregate_dense(self._dense_estimate(state.x, k), k + 1, self.dense)
        else:
            # 8.+10. minibatch difference on the same b' samples at x^{k+1} and x^k, compressed
            idx = self._minibatch(self.b_prime, k, replace=self.online)
            diff = self.problem.lazy_minibatch_grad_diffs(state.x, x_old, idx)
            self.oracle_calls += 2.0 * self.b_prime
            state.g = self.net.aggregate_added(state.g, self.Q, diff, k)
        self.k = k + 1


class PPMARINA(Method):
    """PP-MARINA: MARINA with partial participation (Algorithm 4 of the paper, Section 4).

    Algorithm:

    2. g^0 = grad f(x^0)  (dense round, all clients)
    3. for k = 0, 1, ..., K-1:
    4.   sample c_k ~ Be(p)  (shared stream "coin", block-keyed by round)
    5.   broadcast g^k
    7.   x^{k+1} = x^k - gamma g^k
    8.   c_k = 1: every client sends grad f_i(x^{k+1}) and g^{k+1} = (1/n) sum_i grad f_i(x^{k+1});
         c_k = 0: draw r clients i_1..i_r i.i.d. uniformly from {1..n} WITH replacement (shared
         stream "clients", block-keyed by round) and set
         g^{k+1} = (1/r) sum_{t=1}^r (g^k + Q_{i_t}(grad f_{i_t}(x^{k+1}) - grad f_{i_t}(x^k))).

    A client drawn c > 1 times sends c independent compressions of its difference (copy j uses
    the randomness stream "compress" for j = 0, so it draws what MARINA's worker draws, and
    "compress#j" after; see :meth:`marina.network.Network.aggregate_mean`): each draw of the
    theorem's i.i.d. sample is an independent message, and each message is counted in bits.
    Clients not drawn send nothing.

    Oracle calls: on c_k = 1 rounds every client evaluates grad f_i(x^{k+1}) (m_i). On c_k = 0
    rounds a sampled client evaluates grad f_i(x^{k+1}) and, unless it already holds
    grad f_i(x^k) (it took part in the previous round), grad f_i(x^k) too (m_i or 2 m_i);
    the others compute nothing. (The simulation evaluates the forward pass of every worker
    each round, batched, and only the sampled clients' K entries with a sparsifier; the counter
    charges what the clients would.)

    Defaults: r = ceil(n/2); p = zeta_Q r/(d n) (Corollary 4.1);
    gamma = 1/(L (1 + sqrt((1-p)(1+omega)/(p r)))) (Theorem 4.1).
    State: :class:`PPMarinaState` (MARINA's, plus which clients hold grad f_i(x^k)).
    """

    name = "pp-marina"
    State = PPMarinaState
    takes = ("p", "clients")
    guarantee_factor = 2.0  # Theorem 4.1, same form
    theory_rows = (TheoryRow("pp-marina", order=7), TheoryRow("pp-marina bits", {"p": "bits"}, order=11))
    plot_order = 2

    @classmethod
    def predict(cls, setting: Setting, used: dict[str, Any], **kw: Any) -> theory.Prediction:
        """Corollary 4.1's p and Theorem 4.1's stepsize; r of n clients send a compressed round;
        oracle calls as the method counts them (:func:`marina.theory.pp_marina_oracle_per_round`)."""
        s, size = setting, theory.p_size(used.get("p"), setting.zeta, kw["message_bits"], setting.wire_bits)
        if s.correlated:
            raise ConfigError(
                "pp-marina: no theorem for a correlated compressor (Theorem 4.1 assumes independence)"
            )
        r = int(used.get("clients") or s.n)
        p = theory.chosen_p(used.get("p"), theory.pp_marina_p(size, s.d, s.n, r))
        gamma = theory.pp_marina_stepsize(s.L, s.omega, p, r)
        K = _rounds(cls, gamma, **kw)
        # distinct clients pay m, plus m unless they hold the previous gradient
        first, later = theory.pp_marina_oracle_per_round(float(s.m), s.n, r, p)
        return _prediction(cls, s, K, gamma, p, float(s.m) + first + (K - 1) * later, share=r / s.n, **kw)

    state: PPMarinaState

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        if s.correlated:
            raise ConfigError(
                "pp-marina: the compressor is correlated across workers (permk); Theorem 4.1 assumes "
                "the sampled clients compress independently, and no version for correlated ones is "
                "implemented: use marina, or an independent compressor such as randk:K"
            )
        r = given.get("clients", math.ceil(s.n / 2))
        p = _given_p(given, theory.pp_marina_p(_p_size(s, given), s.d, s.n, r))
        return {"clients": r, "p": p, "stepsize": theory.pp_marina_stepsize(s.L, s.omega, p, r)}

    def __init__(
        self, problem: Problem, network: Network, compressor: Compressor, params: dict[str, Any]
    ) -> None:
        super().__init__(problem, network, compressor, params)
        self.p = float(self.params["p"])
        self.r = int(self.params["clients"])  # clients drawn on compressed rounds

    def round_coin(self, k: int) -> bool:
        """c_k ~ Be(p) (line 4; shared stream "coin")."""
        return self._coin("coin", self.p, k)

    def is_dense_round(self, k: int) -> bool:
        return self.round_coin(k)

    def participants(self, k: int) -> Tensor | None:
        """None on a dense round (every client), else the counts of the r clients drawn i.i.d.
        uniformly with replacement (line 8; shared stream "clients")."""
        if self.is_dense_round(k):
            return None
        draws = self._shared_choices("clients", k, self.net.n, self.r)
        return torch.bincount(draws, minlength=self.net.n)

    def _initial_state(self, x0: Tensor) -> PPMarinaState:
        g, lazy_local_grads = _first_dense_round(self, x0)  # with every client: all are fresh
        fresh = torch.ones(self.net.n, dtype=torch.bool)
        return PPMarinaState(x=x0, g=g, lazy_local_grads=lazy_local_grads, fresh=fresh)

    def step(self) -> None:
        k, state = self.k, self.state
        n = self.net.n
        # 4. c_k ~ Be(p), shared
        c = self.is_dense_round(k)
        # 5. broadcast g^k
        self._broadcast()
        # 7. x^{k+1} = x^k - gamma g^k
        state.x = self._next_iterate(state.x, state.g)
        # lazy rows: with a sparsifier, only the sampled clients' K entries are read
        lazy_new_grads = self.problem.lazy_local_grads(state.x)
        if c:
            # 8. full participation: g^{k+1} = (1/n) sum_i grad f_i(x^{k+1})
            self._charge_full()
            state.g = self.net.aggregate_dense(lazy_new_grads, k + 1, self.dense)
            state.fresh = torch.ones(n, dtype=torch.bool)
        else:
            # 8. r clients i.i.d. uniform with replacement, from the shared stream
            counts = self.participants(k)
            part = counts > 0
            # sampled clients pay grad f_i(x^{k+1}), plus grad f_i(x^k) unless they hold it
            self._charge_full(part.double() * (2.0 - state.fresh.double()))
            diffs = lazy_new_grads - state.lazy_local_grads
            if n == 1 and int(counts[0]) == 1:
                # one client drawn once: its message is the mean (copy 0 uses the plain stream)
                state.g = self.net.aggregate_added(state.g, self.Q, diffs, k)
            else:
                state.g = added(state.g, self.net.aggregate_mean(self.Q, diffs, k, multiplicity=counts))
            state.fresh = part
        state.lazy_local_grads = lazy_new_grads
        self.k = k + 1
