"""Head-to-head statistics for a gate without gold: an anytime-valid sequential test of a win rate,
and a length-controlled win rate.

`BettingCS` is the hedged betting confidence sequence of Waudby-Smith & Ramdas (2023, "Estimating
means of bounded random variables by betting", JRSS-B), with their predictable plug-in bets: for
outcomes x_t in [0, 1] with mean m*, the interval it reports after every observation covers m* at
all times at once with probability >= 1 - alpha. So the gate may look after every batch of judge
verdicts and stop as soon as the interval leaves the threshold behind, without the inflated error of
peeking at a fixed-sample test. The mean it estimates is the candidate's expected judge preference
over the last good policy on the evaluation prompts (ties 0.5).

`length_controlled_win_rate` is the GLM idea of AlpacaEval's length-controlled win rate (Dubois et
al. 2024): fit logit P(candidate preferred) = theta + phi * tanh(dlen / sd(dlen)) on the soft
preferences, and report sigmoid(theta), the win rate the judge would give if the two answers were
the same length. A candidate that wins only because it writes more loses this number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class BettingCS:
    alpha: float = 0.05
    grid_size: int = 1999
    c: float = 0.5                      # bets are truncated at c/m and c/(1-m)
    n: int = 0
    _sum: float = 0.0
    _sq: float = 0.25                   # running sum for the predictable variance estimate (prior 1/4)
    _mu: float = 0.5                    # predictable mean estimate (prior 1/2)
    lo: float = 0.0                     # running intersection: the reported interval only shrinks
    hi: float = 1.0
    _log_plus: np.ndarray = field(default=None, repr=False)
    _log_minus: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        self.m = np.linspace(0, 1, self.grid_size + 2)[1:-1]
        self._log_plus = np.zeros_like(self.m)
        self._log_minus = np.zeros_like(self.m)

    def update(self, x: float) -> tuple[float, float]:
        if not (0.0 <= x <= 1.0) or math.isnan(x):
            raise ValueError(f"an outcome must be in [0, 1], got {x}")
        t = self.n + 1
        var = self._sq / t  # sigma^2_{t-1}, from outcomes before x only (predictable)
        lam = math.sqrt(2 * math.log(2 / self.alpha) / (var * t * math.log(t + 1)))
        lp = np.minimum(lam, self.c / self.m)
        lm = np.minimum(lam, self.c / (1 - self.m))
        self._log_plus += np.log1p(lp * (x - self.m))
        self._log_minus += np.log1p(-lm * (x - self.m))
        self.n, self._sum = t, self._sum + x
        self._sq += (x - self._mu) ** 2
        self._mu = (0.5 + self._sum) / (t + 1)
        # Hedged capital: max(K+/2, K-/2) >= 1/alpha rejects m.
        log_k = np.maximum(self._log_plus, self._log_minus) + math.log(0.5)
        keep = self.m[log_k < math.log(1 / self.alpha)]
        if keep.size:
            self.lo, self.hi = max(self.lo, float(keep.min())), min(self.hi, float(keep.max()))
        if self.lo > self.hi:  # an empty intersection (probability <= alpha): report the point
            self.lo = self.hi = self.mean
        return self.lo, self.hi

    @property
    def mean(self) -> float:
        return self._sum / self.n if self.n else float("nan")


def sequential_decision(cs: BettingCS, threshold: float) -> str | None:
    """'lost' once the interval lies below the threshold, 'pass' once above; None: keep comparing."""
    if cs.hi < threshold:
        return "lost"
    if cs.lo >= threshold:
        return "pass"
    return None


def length_controlled_win_rate(p: np.ndarray, dlen: np.ndarray, ridge: float = 1e-3) -> tuple[float, float]:
    """(LC win rate, length slope phi) from soft preferences p (candidate over baseline) and length
    differences dlen (candidate - baseline, in words)."""
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    d = np.asarray(dlen, dtype=float)
    if len(p) == 0:
        return float("nan"), float("nan")
    sd = float(d.std())
    z = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    X = np.stack([np.ones_like(z), z], 1)
    w = np.zeros(2)
    for _ in range(50):  # Newton on the soft-label logistic loss (ridge on the slope only)
        q = 1 / (1 + np.exp(-(X @ w)))
        g = X.T @ (q - p) + ridge * np.array([0.0, w[1]])
        h = (X * (q * (1 - q))[:, None]).T @ X + ridge * np.diag([1e-9, 1.0])
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return float(1 / (1 + np.exp(-w[0]))), float(w[1])
