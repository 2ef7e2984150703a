"""Loop control for online RLHF: KL control, RM refresh policy, detectors and the promotion gate."""

from .detectors import (
    DETECTORS,
    REMEDIES,
    Detector,
    DisagreementSpike,
    EntropyCollapse,
    KLBudget,
    LengthDrift,
    NonFiniteMetrics,
    ProxyUpGoldDown,
    Verdict,
    build_detectors,
    default_detectors,
    run_detectors,
)
from .gate import Gate, GateDecision, apply_remedies
from .kl_controller import (
    AdaptiveKL,
    BetaSchedule,
    FixedKL,
    KLController,
    LRSchedule,
    make_kl_controller,
)
from .rm_update_policy import RMUpdatePolicy, accept_new_rm

__all__ = [
    "DETECTORS", "REMEDIES", "Detector", "DisagreementSpike", "EntropyCollapse", "KLBudget",
    "LengthDrift", "NonFiniteMetrics", "ProxyUpGoldDown", "Verdict", "build_detectors",
    "default_detectors", "run_detectors", "Gate", "GateDecision", "apply_remedies",
    "AdaptiveKL", "BetaSchedule", "FixedKL", "KLController", "LRSchedule",
    "make_kl_controller", "RMUpdatePolicy", "accept_new_rm",
]
