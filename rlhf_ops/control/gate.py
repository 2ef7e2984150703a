"""The promotion gate: accept the new policy, or roll back to the last accepted one.

After each loop iteration the new policy's eval record is compared with the
last ACCEPTED record (for the first iteration, the SFT/initial policy's record).
The gate rejects when the reward-hacking/collapse detectors vote so (see
:mod:`rlhf_ops.control.detectors`; Gao et al. 2022 and Coste et al. 2023 for
the signals) or when the new policy loses head-to-head against the last
accepted one on gold judgements (``current["win_rate"] < min_win_rate``; ties
count half, computed upstream). A rejection carries remedies, which
:func:`apply_remedies` turns into a higher KL beta, a lower learning rate or a
forced reward-model refresh for the retry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .detectors import REMEDIES, Detector, Verdict, metric, run_detectors
from .kl_controller import KLController

__all__ = ["GateDecision", "Gate", "apply_remedies"]


@dataclass
class GateDecision:
    accepted: bool
    reasons: list[str]
    fired: list[Verdict]
    remedies: list[str]
    verdicts: list[Verdict] = field(default_factory=list)  # every verdict, for the run log


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


class Gate:
    """Vote modes: ``"any"`` (one fired detector rejects), ``"majority"`` (more than
    half of the non-skipped detectors), or an int ``k`` (at least k fired).
    Vetoing verdicts (non-finite metrics) reject in every mode. ``min_win_rate=None``
    disables the head-to-head rule.
    """

    def __init__(self, detectors: list[Detector], min_win_rate: float | None = 0.45,
                 vote: str | int = "any"):
        if min_win_rate is not None and (
                isinstance(min_win_rate, bool) or not isinstance(min_win_rate, (int, float))
                or not 0.0 <= min_win_rate <= 1.0):
            raise ValueError(f"Gate.min_win_rate must be in [0, 1] or None, got {min_win_rate!r}")
        if isinstance(vote, bool) or not (vote in ("any", "majority")
                                          or (isinstance(vote, int) and vote >= 1)):
            raise ValueError(f"Gate.vote must be 'any', 'majority' or an int >= 1, got {vote!r}")
        self.detectors = list(detectors)
        self.min_win_rate = min_win_rate
        self.vote = vote

    def _vote(self, verdicts: list[Verdict]) -> tuple[bool, str]:
        fired = [v for v in verdicts if v.fired]
        active = [v for v in verdicts if not v.skipped]
        if self.vote == "any":
            return bool(fired), f"{len(fired)} detector(s) fired (vote: any)"
        if self.vote == "majority":
            return (len(fired) * 2 > len(active),
                    f"{len(fired)}/{len(active)} non-skipped detector(s) fired (vote: majority)")
        return len(fired) >= self.vote, f"{len(fired)} detector(s) fired (vote: >= {self.vote})"

    def _head_to_head(self, current: dict) -> tuple[bool, str | None]:
        """(lost, reason). A missing win rate cannot lose; a non-finite one does."""
        if self.min_win_rate is None:
            return False, None
        decision = current.get("h2h_decision")
        if decision is not None:  # a judged test decided it (rlhf_ops/loop/judging.py); its reason says how
            return decision in ("lost", "length"), current.get("h2h_reason")
        wr = metric(current, "win_rate")
        if wr is None:
            return False, "head-to-head skipped: no win_rate in current record"
        if not math.isfinite(wr):
            return True, f"win_rate is not finite ({wr})"
        if wr < self.min_win_rate:
            return True, f"lost head-to-head: win_rate {wr:.3g} < {self.min_win_rate:.3g}"
        return False, None

    def decide(self, current: dict, baseline: dict | None,
               history: list[dict] | None = None) -> GateDecision:
        verdicts = run_detectors(self.detectors, current, baseline, history)
        fired = [v for v in verdicts if v.fired]
        reasons: list[str] = []

        vetoes = [v for v in fired if v.veto]
        voted, vote_reason = self._vote(verdicts)
        rejected_by_detectors = voted or bool(vetoes)
        if vetoes:
            reasons.extend(f"veto {v.name}: {v.reason}" for v in vetoes)
        if fired:
            reasons.append(vote_reason)
        reasons.extend(f"{v.name}: {v.reason}" for v in fired if not v.veto)

        lost, h2h_reason = self._head_to_head(current)
        if h2h_reason:
            reasons.append(h2h_reason)

        accepted = not (rejected_by_detectors or lost)
        remedies: list[str] = []
        if not accepted:
            remedies = _dedupe([v.remedy for v in fired if v.remedy != "none"])
            # Losing without a diagnosed cause: the update was too aggressive or noisy.
            if lost and not remedies:
                # A candidate that wins only by writing more is exploiting length: pull it back to the reference.
                remedies = ["raise_beta"] if current.get("h2h_decision") == "length" else ["lower_lr"]
        if accepted and not fired:
            reasons.insert(0, "all checks passed")
        return GateDecision(accepted, reasons, fired, remedies, verdicts)


def apply_remedies(remedies: list[str], kl_controller: KLController, lr_scale: float, *,
                   beta_factor: float = 2.0,
                   lr_factor: float = 0.5) -> tuple[float, bool, list[str]]:
    """Apply remedies for the retry: returns (new_lr_scale, force_rm_refresh, applied).

    ``raise_beta`` -> ``kl_controller.scale(beta_factor)``; ``lower_lr`` ->
    ``lr_scale * lr_factor``; ``refresh_rm`` -> force a reward-model refresh.
    ``applied`` lists the remedy names that took effect, once each, in order
    ("raise_beta" is left out when beta was already at its upper bound, so the
    caller can tell that remedy is exhausted); "none" is ignored.
    """
    for name, value in (("beta_factor", beta_factor), ("lr_factor", lr_factor),
                        ("lr_scale", lr_scale)):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value <= 0):
            raise ValueError(f"apply_remedies: {name} must be a finite number > 0, got {value!r}")
    unknown = [r for r in remedies if r not in REMEDIES]
    if unknown:
        raise ValueError(f"apply_remedies: unknown remedy(ies) {unknown}; known: {REMEDIES}")
    force_rm, applied = False, []
    for remedy in _dedupe(list(remedies)):
        if remedy == "raise_beta":
            before = kl_controller.beta
            kl_controller.scale(beta_factor)
            if kl_controller.beta != before:
                applied.append(remedy)
        elif remedy == "lower_lr":
            lr_scale = lr_scale * lr_factor
            applied.append(remedy)
        elif remedy == "refresh_rm":
            force_rm = True
            applied.append(remedy)
    return float(lr_scale), force_rm, applied

