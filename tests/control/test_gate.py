"""Promotion gate voting, head-to-head rule and remedy application."""

import math

import pytest

from rlhf_ops.control.detectors import (
    EntropyCollapse,
    KLBudget,
    LengthDrift,
    NonFiniteMetrics,
    ProxyUpGoldDown,
    default_detectors,
)
from rlhf_ops.control.gate import Gate, GateDecision, apply_remedies
from rlhf_ops.control.kl_controller import AdaptiveKL, FixedKL

SFT = {"iteration": -1, "gold": 0.5, "proxy": 1.0, "kl": 0.0, "entropy": 2.0, "length": 100.0,
       "disagreement": 0.1}


def rec(**kw):
    return {**SFT, "iteration": 0, "win_rate": 0.6, "kl": 2.0, **kw}


def four():
    # Four detectors that see all the metrics in `rec`, so none is skipped.
    return [NonFiniteMetrics(), ProxyUpGoldDown(), KLBudget(max_kl=5.0), LengthDrift()]


def test_healthy_is_accepted_against_sft_baseline():
    d = Gate(default_detectors(max_kl=5.0)).decide(rec(gold=0.6, proxy=1.2), SFT, [SFT])
    assert isinstance(d, GateDecision)
    assert d.accepted and d.fired == [] and d.remedies == []
    assert d.reasons == ["all checks passed"]
    assert len(d.verdicts) == 6


def test_any_vote_rejects_on_one_detector():
    d = Gate(four()).decide(rec(kl=9.0), SFT)
    assert not d.accepted
    assert [v.name for v in d.fired] == ["kl_budget"]
    assert d.remedies == ["raise_beta"]
    assert any("kl_budget" in r for r in d.reasons)


def test_majority_vote():
    gate = Gate(four(), vote="majority")
    one = gate.decide(rec(kl=9.0), SFT)
    assert one.accepted and [v.name for v in one.fired] == ["kl_budget"] and one.remedies == []
    two = gate.decide(rec(kl=9.0, length=200.0, gold=0.5), SFT)
    assert two.accepted  # 2 of 4 is not more than half
    three = gate.decide(rec(kl=9.0, length=200.0, gold=0.3, proxy=2.0), SFT)
    assert not three.accepted
    assert three.remedies == ["refresh_rm", "raise_beta"]  # de-duplicated, in detector order


def test_majority_counts_only_non_skipped():
    # No proxy/length/entropy: only non_finite and kl_budget can judge, so the
    # denominator is 2 (not 5) and 1 fired is not a majority.
    current = {"kl": 9.0, "gold": 0.5, "win_rate": 0.6}
    gate = Gate(four() + [EntropyCollapse()], vote="majority")
    d = gate.decide(current, {"gold": 0.5})
    assert d.accepted and "1/2" in " ".join(d.reasons)
    d = Gate([KLBudget(max_kl=5.0), ProxyUpGoldDown()], vote="majority").decide(current, {})
    assert not d.accepted  # 1 of 1 non-skipped detector


def test_k_vote():
    gate = Gate(four(), vote=2)
    assert gate.decide(rec(kl=9.0), SFT).accepted
    d = gate.decide(rec(kl=9.0, length=200.0), SFT)
    assert not d.accepted and d.remedies == ["raise_beta"]


def test_non_finite_vetoes_in_every_mode():
    for vote in ("any", "majority", 3):
        d = Gate(default_detectors(max_kl=5.0), vote=vote).decide(rec(gold=math.nan), SFT)
        assert not d.accepted and d.remedies == ["lower_lr"]
        assert any(r.startswith("veto non_finite") for r in d.reasons)


def test_head_to_head_rule():
    gate = Gate(four(), min_win_rate=0.45)
    lost = gate.decide(rec(win_rate=0.40), SFT)
    assert not lost.accepted and lost.fired == [] and lost.remedies == ["lower_lr"]
    assert any("win_rate 0.4 < 0.45" in r for r in lost.reasons)
    assert gate.decide(rec(win_rate=0.45), SFT).accepted  # boundary: not below
    # Losing while a detector fired: the detector's diagnosis is the remedy.
    both = gate.decide(rec(win_rate=0.3, kl=9.0), SFT)
    assert both.remedies == ["raise_beta"]
    assert not gate.decide(rec(win_rate=math.nan), SFT).accepted
    missing = {k: v for k, v in rec().items() if k != "win_rate"}
    d = gate.decide(missing, SFT)
    assert d.accepted and any("head-to-head skipped" in r for r in d.reasons)
    assert Gate(four(), min_win_rate=None).decide(rec(win_rate=0.0), SFT).accepted


def test_gate_validation():
    for bad in ("most", 0, True, 1.5):
        with pytest.raises(ValueError, match="vote"):
            Gate(four(), vote=bad)
    with pytest.raises(ValueError, match="min_win_rate"):
        Gate(four(), min_win_rate=1.5)


def test_apply_remedies():
    kl = AdaptiveKL(0.1, target=6.0, horizon=1000)
    lr, force, applied = apply_remedies(["raise_beta", "lower_lr", "refresh_rm"], kl, 1.0)
    assert kl.beta == pytest.approx(0.2) and lr == 0.5 and force is True
    assert applied == ["raise_beta", "lower_lr", "refresh_rm"]
    lr, force, applied = apply_remedies(["lower_lr", "lower_lr", "none"], kl, 0.5, lr_factor=0.1)
    assert lr == pytest.approx(0.05) and force is False and applied == ["lower_lr"]
    assert kl.beta == pytest.approx(0.2)
    assert apply_remedies([], kl, 0.3) == (0.3, False, [])


def test_apply_remedies_beta_at_bound_is_reported_not_applied():
    kl = FixedKL(1.0, max_beta=1.0)
    lr, force, applied = apply_remedies(["raise_beta"], kl, 1.0, beta_factor=3.0)
    assert kl.beta == 1.0 and applied == [] and lr == 1.0


def test_apply_remedies_validation():
    kl = FixedKL(0.1)
    with pytest.raises(ValueError, match="reboot"):
        apply_remedies(["reboot"], kl, 1.0)
    with pytest.raises(ValueError, match="beta_factor"):
        apply_remedies(["raise_beta"], kl, 1.0, beta_factor=0.0)
    with pytest.raises(ValueError, match="lr_scale"):
        apply_remedies([], kl, math.nan)


def test_rollback_loop_end_to_end():
    """Reject -> remedy -> retry against the same (last accepted) baseline -> accept."""
    gate = Gate(default_detectors(max_kl=5.0))
    kl, lr, baseline = AdaptiveKL(0.05, target=3.0, horizon=100), 1.0, SFT
    bad = rec(kl=8.0, length=160.0, gold=0.5)
    d = gate.decide(bad, baseline, [baseline])
    assert not d.accepted and d.remedies == ["raise_beta"]
    lr, force, _ = apply_remedies(d.remedies, kl, lr)
    assert kl.beta == pytest.approx(0.1) and lr == 1.0 and not force
    good = rec(kl=3.0, length=105.0, gold=0.56, proxy=1.1)
    assert gate.decide(good, baseline, [baseline, bad]).accepted
