"""Reward-hacking / collapse detectors on constructed histories."""

import math

import pytest

from rlhf_ops.control.detectors import (
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

BASE = {"iteration": 0, "gold": 0.50, "proxy": 1.0, "kl": 2.0, "entropy": 2.0,
        "length": 100.0, "repetition": 0.05, "disagreement": 0.10, "win_rate": 0.5}


def rec(**kw):
    return {**BASE, "iteration": 1, **kw}


HEALTHY = rec(gold=0.58, proxy=1.3, kl=3.0, entropy=1.8, length=110.0, disagreement=0.11,
              win_rate=0.6)


def check(det, current, baseline=BASE):
    return det.check(current, baseline, [baseline, current])


def test_healthy_iteration_fires_nothing():
    verdicts = run_detectors(default_detectors(max_kl=5.0), HEALTHY, BASE, [BASE])
    assert verdicts and all(isinstance(v, Verdict) for v in verdicts)
    assert [v.name for v in verdicts if v.fired] == []
    assert not any(v.skipped for v in verdicts)


def test_proxy_up_gold_down():
    d = ProxyUpGoldDown()
    v = check(d, rec(proxy=2.0, gold=0.40))
    assert v.fired and v.remedy == "refresh_rm" and v.name == "proxy_up_gold_down"
    assert not check(d, rec(proxy=2.0, gold=0.60)).fired  # both up: genuine progress
    assert not check(d, rec(proxy=0.8, gold=0.40)).fired  # both down: not hacking
    assert not check(d, rec(proxy=2.0, gold=0.47)).fired  # gold drop within 0.05
    assert not check(ProxyUpGoldDown(min_proxy_gain=1.5), rec(proxy=2.0, gold=0.4)).fired


def test_disagreement_spike():
    d = DisagreementSpike()
    v = check(d, rec(disagreement=0.30))
    assert v.fired and v.remedy == "refresh_rm"
    assert not check(d, rec(disagreement=0.15)).fired
    # Tiny baseline: 3x ratio but below the absolute margin -> noise, not a spike.
    assert not check(d, rec(disagreement=0.03), {**BASE, "disagreement": 0.01}).fired
    no_metric = {k: v for k, v in rec(disagreement=0.3).items() if k != "disagreement"}
    v = check(d, no_metric)
    assert not v.fired and v.skipped and "disagreement" in v.reason


def test_kl_budget():
    d = KLBudget(max_kl=5.0)
    v = check(d, rec(kl=7.5))
    assert v.fired and v.remedy == "raise_beta" and "7.5" in v.reason
    assert not check(d, rec(kl=4.9)).fired


def test_length_drift():
    d = LengthDrift()
    v = check(d, rec(length=150.0, gold=0.52))
    assert v.fired and v.remedy == "raise_beta"
    assert not check(d, rec(length=150.0, gold=0.70)).fired  # longer AND better
    assert not check(d, rec(length=125.0, gold=0.50)).fired  # +25% < 30%
    assert check(d, rec(length=50.0), {**BASE, "length": 0.0}).skipped


def test_entropy_collapse():
    d = EntropyCollapse()
    v = check(d, rec(entropy=0.6))
    assert v.fired and v.remedy == "lower_lr"
    assert not check(d, rec(entropy=1.2)).fired
    floor = EntropyCollapse(min_ratio=0.0, min_abs=0.5)
    assert check(floor, rec(entropy=0.4)).fired
    assert not check(floor, rec(entropy=0.6)).fired
    # No baseline entropy: the absolute floor still works; without one, skip.
    no_base = {k: v for k, v in BASE.items() if k != "entropy"}
    assert check(floor, rec(entropy=0.4), no_base).fired
    assert check(d, rec(entropy=0.4), no_base).skipped


def test_collapse_history_fires_expected_set():
    hacked = rec(proxy=3.0, gold=0.30, kl=9.0, length=180.0, disagreement=0.40, entropy=0.5)
    fired = {v.name for v in run_detectors(default_detectors(max_kl=5.0), hacked, BASE, [BASE])
             if v.fired}
    assert fired == {"proxy_up_gold_down", "disagreement_spike", "kl_budget", "length_drift",
                     "entropy_collapse"}


@pytest.mark.parametrize("key", ["gold", "proxy", "kl"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_core_metric(key, bad):
    current = rec(**{key: bad})
    verdicts = run_detectors(default_detectors(max_kl=5.0), current, BASE, [BASE])  # no crash
    by_name = {v.name: v for v in verdicts}
    nf = by_name["non_finite"]
    assert nf.fired and nf.veto and nf.remedy == "lower_lr" and key in nf.reason
    # Detectors that need the broken metric skip instead of judging garbage.
    needs = {"gold": "proxy_up_gold_down", "proxy": "proxy_up_gold_down", "kl": "kl_budget"}
    assert by_name[needs[key]].skipped and not by_name[needs[key]].fired
    assert [v.name for v in verdicts if v.fired] == ["non_finite"]


def test_missing_keys_do_not_crash():
    verdicts = run_detectors(default_detectors(max_kl=1.0), {"iteration": 3}, {}, [])
    assert not any(v.fired for v in verdicts)
    assert all(v.skipped for v in verdicts if v.name != "non_finite")
    assert not check(NonFiniteMetrics(), {"gold": None, "kl": "n/a"}).fired


def test_build_detectors_from_list_and_mapping():
    dets = build_detectors([
        {"name": "kl_budget", "max_kl": 5.0, "remedy": "raise_beta", "enabled": True},
        {"name": "entropy_collapse", "min_ratio": 0.3, "enabled": False},
        {"name": "proxy_up_gold_down", "min_gold_drop": 0.1, "remedy": "none"},
    ])
    names = [d.name for d in dets]
    assert names == ["non_finite", "kl_budget", "proxy_up_gold_down"]  # non_finite auto-added
    assert dets[2].remedy == "none" and dets[2].min_gold_drop == 0.1
    single = build_detectors({"name": "length_drift", "max_rel_increase": 0.5})
    assert [d.name for d in single] == ["non_finite", "length_drift"]
    mapping = build_detectors({"kl_budget": {"max_kl": 3}, "non_finite": False,
                               "disagreement_spike": True})
    assert [d.name for d in mapping] == ["kl_budget", "disagreement_spike"]
    nf = build_detectors([{"name": "non_finite", "keys": ["gold"]}])
    assert nf[0].keys == ("gold",) and len(nf) == 1


@pytest.mark.parametrize("cfg, match", [
    ([{"name": "reward_hack_9000"}], "reward_hack_9000"),
    ([{"name": "kl_budget", "max_kl": 5.0, "maxkl": 3}], "maxkl"),
    ([{"name": "kl_budget"}], "max_kl"),
    ([{"name": "kl_budget", "max_kl": -1.0}], "max_kl"),
    ([{"name": "kl_budget", "max_kl": 5.0, "remedy": "pray"}], "remedy"),
    ([{"name": "entropy_collapse", "min_ratio": "0.5"}], "min_ratio"),
    ([{"name": "entropy_collapse", "enabled": "yes"}], "enabled"),
    ([{"max_kl": 5.0}], "None"),
    ([{"name": "kl_budget", "max_kl": 1}, {"name": "kl_budget", "max_kl": 2}], "twice"),
    ({"length_drift": 3}, "length_drift"),
])
def test_build_detectors_errors_name_the_problem(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_detectors(cfg)


def test_capability_anchors_against_the_initial_policy_and_the_last_good_one():
    from rlhf_ops.control.detectors import CapabilityAnchors

    initial = {**BASE, "anchor_nll": 1.0, "anchor_match": 0.8}
    last_good = {**BASE, "anchor_nll": 1.2, "anchor_match": 0.8}
    d = CapabilityAnchors(max_nll_increase=0.25, max_match_drop=0.1)
    # +0.1 over the last good, +0.3 over the initial: creep that adds up fires against the initial policy.
    v = d.check({**HEALTHY, "anchor_nll": 1.3, "anchor_match": 0.8}, last_good, [initial, last_good])
    assert v.fired and "+0.300" in v.reason and v.remedy == "raise_beta"
    v = CapabilityAnchors(against="last_good").check({**HEALTHY, "anchor_nll": 1.3, "anchor_match": 0.8}, last_good,
                                                      [initial, last_good])
    assert not v.fired
    v = d.check({**HEALTHY, "anchor_nll": 1.05, "anchor_match": 0.6}, last_good, [initial, last_good])
    assert v.fired and "exact match 0.80 -> 0.60" in v.reason
    v = d.check(HEALTHY, BASE, [BASE])
    assert v.skipped and "task.anchors" in v.reason
    with pytest.raises(ValueError, match="against"):
        CapabilityAnchors(against="sft")
    assert build_detectors([{"name": "capability_anchors", "max_nll_increase": 0.5}])[-1].max_nll_increase == 0.5


def test_proxy_up_oracle_down_needs_an_oracle_head_to_head():
    from rlhf_ops.control.detectors import ProxyUpOracleDown

    d = ProxyUpOracleDown()
    v = d.check({**HEALTHY, "proxy": 1.4, "win_rate": 0.3, "h2h_decision": "lost"}, BASE, [BASE])
    assert v.fired and v.remedy == "refresh_rm" and "win rate 0.3" in v.reason
    assert not d.check({**HEALTHY, "proxy": 0.9, "win_rate": 0.3, "h2h_decision": "lost"}, BASE, [BASE]).fired
    assert not d.check({**HEALTHY, "proxy": 1.4, "win_rate": 0.6, "h2h_decision": "pass"}, BASE, [BASE]).fired
    v = d.check(HEALTHY, BASE, [BASE])
    assert not v.skipped and not v.fired and "proxy_up_gold_down" in v.reason, "a gold gate's business"
    no_gold = {k: v for k, v in HEALTHY.items() if k != "gold"}
    assert d.check(no_gold, BASE, [BASE]).skipped


def test_length_drift_without_gold_is_excused_by_the_oracles_length_controlled_win_rate():
    base = {k: v for k, v in BASE.items() if k != "gold"}
    longer = {k: v for k, v in HEALTHY.items() if k != "gold"} | {"length": 150.0}
    d = LengthDrift()
    assert d.check(longer, base, [base]).fired, "no oracle: length alone decides"
    assert not d.check({**longer, "win_rate_lc": 0.62, "h2h_decision": "pass"}, base, [base]).fired
    v = d.check({**longer, "win_rate_lc": 0.45, "h2h_decision": "pass"}, base, [base])
    assert v.fired and "length-controlled win rate 0.45" in v.reason
    assert d.check({**longer, "win_rate_lc": 0.9, "h2h_decision": "skipped"}, base, [base]).fired


def test_plateau_fires_when_no_recent_iteration_won_and_the_rm_was_not_refreshed_meanwhile():
    from rlhf_ops.control.rm_update_policy import plateau

    def e(i, wr, status="accepted"):
        return {"iteration": i, "win_rate": wr, "status": status}

    log = [e(0, 0.70), e(1, 0.51), e(2, None, "rejected"), e(3, 0.49)]
    why = plateau(log, 3, 0.02, last_update_iteration=0)
    assert why and "last 3 iterations (0.51, n/a, 0.49" in why
    assert plateau(log, 4, 0.02, last_update_iteration=0) is None, "iteration 0 won by 0.20"
    assert plateau(log, 3, 0.02, last_update_iteration=2) is None, "refreshed within the window: give it time"
    assert plateau(log, 3, 0.01, last_update_iteration=None) is not None  # 0.51 is not above 0.51
    assert plateau(log, 3, 0.0, last_update_iteration=None) is None  # 0.51 is above 0.50
    assert plateau([e(0, 0.60), e(1, 0.60), e(2, 0.60)], 3, 0.10, None) is not None, "0.60 is not above 0.60"
    assert plateau([e(0, 0.60), e(1, 0.60), e(2, 0.60)], 3, 0.02, None) is None
    assert plateau([e(0, 0.9, "rejected")], 1, 0.02, None) is not None, "a rejected candidate did not win"
    assert plateau([e(0, None), e(1, None)], 1, 0.02, None) is None, "no oracle: no evidence of a plateau"
    skipped = dict(e(0, 0.5), h2h_decision="skipped")
    assert plateau([skipped], 1, 0.02, None) is None, "a judge that called every comparison a tie measured nothing"
