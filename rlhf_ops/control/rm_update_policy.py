"""When to refresh the reward model in the online-RLHF loop.

A proxy RM is only trustworthy near the data it was trained on; as the policy
drifts away (measured by KL to the reference) the RM is exploited
(over-optimisation, Gao et al. 2022, "Scaling Laws for Reward Model
Overoptimization", arXiv:2210.10760). The loop therefore retrains the RM on
fresh on-policy labels either on a fixed cadence (``every`` N iterations), once
the policy has moved ``kl_threshold`` nats since the last refresh, or when a
detector forces it. Freeze windows (e.g. while labelling budget is paused) win
over everything; the caller keeps a refused force pending.

:func:`accept_new_rm` guards the refresh itself: a new RM that is worse on
held-out preferences than the one it replaces is discarded.

Iterations are 0-based; freeze windows ``(start, end)`` are inclusive.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

__all__ = ["RMUpdatePolicy", "accept_new_rm", "plateau"]


def _finite(owner: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}: {field} must be a finite number, got {value!r}")
    return float(value)


def _iteration(owner: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{owner}: iteration must be an int >= 0, got {value!r}")
    return value


def plateau(iterations_log: list[dict], k: int, margin: float, last_update_iteration: int | None) -> str | None:
    """Why the RM should be refreshed because the policy stopped improving, or None.

    The policy has plateaued when none of the last `k` gated iterations won its head-to-head against the
    last good policy by more than `margin` (oracle win rate > 0.5 + margin: the gate's oracle, gold, the
    judge or the held-out RM; a rejected or abandoned iteration did not win), and the RM was not refreshed
    during them (a refresh needs `k` iterations to show). Accepted iterations with no win rate (no oracle,
    or a head-to-head skipped because the judge could not tell) are no evidence either way: fewer than `k`
    left is no plateau."""
    def rate(e):  # a skipped head-to-head (a judge that could not tell the two apart) measured nothing
        return None if e.get("h2h_decision") == "skipped" else e.get("win_rate")

    recent = [e for e in iterations_log if rate(e) is not None or e.get("status") != "accepted"][-k:]
    if k < 1 or len(recent) < k:
        return None
    first = recent[0].get("iteration", 0)
    if last_update_iteration is not None and last_update_iteration >= first:
        return None
    won = [e for e in recent if e.get("status") == "accepted" and rate(e) is not None and rate(e) > 0.5 + margin]
    if won:
        return None
    rates = ", ".join("n/a" if rate(e) is None else f"{rate(e):.2f}" for e in recent)
    return (f"plateau: no oracle win rate above {0.5 + margin:.2f} in the last {k} iterations ({rates}; "
            "loop.rm_update_plateau)")


class RMUpdatePolicy:
    """Decide, per iteration, whether to retrain the reward model.

    ``every``: refresh when at least that many iterations passed since the last
    refresh (the first eligible iteration always fires: the RM has not seen any
    on-policy data yet). ``kl_threshold``: refresh when the KL moved since the
    last refresh exceeds it. Both may be set (either fires). Both ``None`` is
    only allowed with ``never=True``, which disables scheduled refreshes (a
    detector may still force one). ``warmup_iterations`` delays scheduled
    refreshes, not forced ones.
    """

    def __init__(self, every: int | None = None, kl_threshold: float | None = None,
                 freeze: Iterable[tuple[int, int]] = (), warmup_iterations: int = 0,
                 never: bool = False):
        owner = "RMUpdatePolicy"
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"{owner}: every must be an int >= 1 or None, got {every!r}")
        if kl_threshold is not None and _finite(owner, "kl_threshold", kl_threshold) <= 0:
            raise ValueError(f"{owner}: kl_threshold must be > 0, got {kl_threshold!r}")
        if never and (every is not None or kl_threshold is not None):
            raise ValueError(f"{owner}: never=True contradicts every/kl_threshold being set")
        if not never and every is None and kl_threshold is None:
            raise ValueError(f"{owner}: set every and/or kl_threshold "
                             "(or never=True to disable scheduled refreshes)")
        if (isinstance(warmup_iterations, bool) or not isinstance(warmup_iterations, int)
                or warmup_iterations < 0):
            raise ValueError(f"{owner}: warmup_iterations must be an int >= 0, "
                             f"got {warmup_iterations!r}")
        windows = []
        for w in freeze:
            # Lists are accepted too: windows usually arrive from YAML/JSON.
            if (not isinstance(w, (tuple, list)) or len(w) != 2
                    or any(isinstance(x, bool) or not isinstance(x, int) for x in w)
                    or not 0 <= w[0] <= w[1]):
                raise ValueError(f"{owner}: freeze window must be (start, end) ints with "
                                 f"0 <= start <= end, got {w!r}")
            windows.append((int(w[0]), int(w[1])))
        self.every = every
        self.kl_threshold = None if kl_threshold is None else float(kl_threshold)
        self.freeze = windows
        self.warmup_iterations = warmup_iterations
        self.never = bool(never)
        self.last_update_iteration: int | None = None
        self.kl_at_last_update: float = 0.0  # the reference policy itself has KL 0
        self.n_updates = 0

    # -- decisions -----------------------------------------------------------
    def frozen_window(self, iteration: int) -> tuple[int, int] | None:
        for start, end in self.freeze:
            if start <= iteration <= end:
                return (start, end)
        return None

    def should_update(self, iteration: int, kl_since_last_update: float,
                      forced: bool = False) -> tuple[bool, str]:
        iteration = _iteration("RMUpdatePolicy.should_update", iteration)
        window = self.frozen_window(iteration)
        if window is not None:
            return False, f"frozen (window {window[0]}-{window[1]})"
        if forced:
            return True, "forced by detector"
        if self.never:
            return False, "never (scheduled refreshes disabled)"
        if iteration < self.warmup_iterations:
            return False, f"warmup (iteration {iteration} < {self.warmup_iterations})"
        reasons = []
        if self.every is not None:
            last = self.last_update_iteration
            if last is None:
                reasons.append(f"every {self.every} iterations (first eligible iteration)")
            elif iteration - last >= self.every:
                reasons.append(f"every {self.every} iterations")
        if self.kl_threshold is not None:
            kl = kl_since_last_update
            ok = not isinstance(kl, bool) and isinstance(kl, (int, float)) and math.isfinite(kl)
            if not ok:
                # Do not fire on garbage, but say so: the detectors handle NaN metrics.
                if not reasons:
                    return False, f"not due (KL since last RM update is not finite: {kl!r})"
            elif kl > self.kl_threshold:
                reasons.append(f"KL since last RM update {kl:.4g} > {self.kl_threshold:.4g}")
        if reasons:
            return True, "; ".join(reasons)
        return False, "not due"

    def mark_updated(self, iteration: int, kl_at_update: float) -> None:
        """Record a refresh that actually happened (accepted or not, data was spent)."""
        self.last_update_iteration = _iteration("RMUpdatePolicy.mark_updated", iteration)
        self.kl_at_last_update = _finite("RMUpdatePolicy.mark_updated", "kl_at_update",
                                         kl_at_update)
        self.n_updates += 1

    def kl_since_last(self, current_kl: float) -> float:
        """Distance moved since the last refresh, as |KL_now - KL_then| to the reference.

        The absolute value: a policy moving back toward the reference has also
        left the RM's training distribution.
        """
        current = _finite("RMUpdatePolicy.kl_since_last", "current_kl", current_kl)
        return abs(current - self.kl_at_last_update)

    def can_fire(self, n_iterations: int | None = None) -> bool:
        """Whether a scheduled refresh can ever happen in a loop of ``n_iterations``.

        Any eligible iteration (past warmup, not frozen) can fire: ``every``
        fires on the first one, and KL can always grow past a threshold.
        """
        if self.never:
            return False
        if n_iterations is None:
            return True  # finite freeze windows cannot cover an unbounded loop
        if isinstance(n_iterations, bool) or not isinstance(n_iterations, int) or n_iterations < 0:
            raise ValueError(f"RMUpdatePolicy.can_fire: n_iterations must be an int >= 0, "
                             f"got {n_iterations!r}")
        return any(self.frozen_window(i) is None
                   for i in range(self.warmup_iterations, n_iterations))

    # -- persistence ---------------------------------------------------------
    def state_dict(self) -> dict:
        return {"every": self.every, "kl_threshold": self.kl_threshold,
                "freeze": [list(w) for w in self.freeze],
                "warmup_iterations": self.warmup_iterations, "never": self.never,
                "last_update_iteration": self.last_update_iteration,
                "kl_at_last_update": self.kl_at_last_update, "n_updates": self.n_updates}

    def load_state_dict(self, d: dict) -> None:
        """Restore progress only; the schedule itself comes from the (possibly edited) config."""
        last = d.get("last_update_iteration")
        self.last_update_iteration = None if last is None else _iteration("load_state_dict", last)
        self.kl_at_last_update = _finite("load_state_dict", "kl_at_last_update",
                                         d.get("kl_at_last_update", 0.0))
        self.n_updates = int(d.get("n_updates", 0))

    @classmethod
    def from_state_dict(cls, d: dict) -> "RMUpdatePolicy":
        policy = cls(every=d.get("every"), kl_threshold=d.get("kl_threshold"),
                     freeze=[tuple(w) for w in d.get("freeze", [])],
                     warmup_iterations=d.get("warmup_iterations", 0), never=d.get("never", False))
        policy.load_state_dict(d)
        return policy

    def __repr__(self) -> str:
        return (f"RMUpdatePolicy(every={self.every}, kl_threshold={self.kl_threshold}, "
                f"freeze={self.freeze}, warmup_iterations={self.warmup_iterations}, "
                f"never={self.never})")


def paired_accuracy_se(old_correct, new_correct) -> float:
    """Standard error of (old accuracy - new accuracy) when both RMs judged the same pairs.

    Only the pairs the two disagree on carry information (McNemar): with b pairs only the old RM
    gets right and c only the new one does, the difference is (b - c) / n with standard error
    sqrt(b + c) / n. Two RMs that agree everywhere have no noise to allow for; on 16 pairs one
    disagreement is worth 1/16 = 0.0625.
    """
    old, new = np.asarray(old_correct, dtype=bool), np.asarray(new_correct, dtype=bool)
    if old.shape != new.shape or old.ndim != 1:
        raise ValueError(f"paired_accuracy_se: need two equal-length 1-d vectors, got {old.shape} and {new.shape}")
    if not len(old):
        return float("nan")
    return math.sqrt(float(np.sum(old != new))) / len(old)


def accept_new_rm(old_acc: float | None, new_acc: float, tolerance: float = 0.0,
                  se: float = 0.0, z: float = 0.0) -> tuple[bool, str]:
    """Keep the previous RM if held-out accuracy drops by more than ``tolerance + z * se``.

    ``se`` is the standard error of the drop (``paired_accuracy_se``), so a refresh is rejected only
    for a drop its held-out pairs can tell from noise; ``z = 0`` is the plain tolerance test.
    """
    tol = _finite("accept_new_rm", "tolerance", tolerance)
    if tol < 0:
        raise ValueError(f"accept_new_rm: tolerance must be >= 0, got {tolerance!r}")
    zz = _finite("accept_new_rm", "z", z)
    if zz < 0:
        raise ValueError(f"accept_new_rm: z must be >= 0, got {z!r}")
    noise = zz * se if isinstance(se, (int, float)) and math.isfinite(se) and se > 0 else 0.0
    ok = not isinstance(new_acc, bool) and isinstance(new_acc, (int, float))
    if not ok or not math.isfinite(new_acc):
        return False, f"new RM held-out accuracy is not finite ({new_acc!r}); keeping previous RM"
    if old_acc is None:
        return True, f"no previous RM; new held-out accuracy {new_acc:.4g}"
    if isinstance(old_acc, bool) or not isinstance(old_acc, (int, float)) or not math.isfinite(old_acc):
        return True, f"previous RM accuracy unusable ({old_acc!r}); new {new_acc:.4g}"
    drop = old_acc - new_acc
    allowed = f"tolerance {tol:.4g}" + (f" + {zz:.4g} x SE {se:.4g}" if noise else "")
    # Epsilon: 0.70 - 0.69 is 0.0100000000000000009 in floats and must count as 0.01.
    if drop > tol + noise + 1e-12:
        return False, (f"held-out accuracy {old_acc:.4g} -> {new_acc:.4g} "
                       f"(drop {drop:.4g} > {allowed}); keeping previous RM")
    return True, f"held-out accuracy {old_acc:.4g} -> {new_acc:.4g} (within {allowed})"
