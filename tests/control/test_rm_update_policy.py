"""Reward-model refresh policy and the accept-new-RM guard."""

import json
import math

import numpy as np
import pytest

from rlhf_ops.control.rm_update_policy import RMUpdatePolicy, accept_new_rm, paired_accuracy_se


def run_loop(policy, n, kls=None, forced=()):
    """Drive the policy like the loop does; returns the iterations that refreshed."""
    fired = []
    for i in range(n):
        kl = kls[i] if kls else 0.0
        ok, _ = policy.should_update(i, policy.kl_since_last(kl), forced=i in forced)
        if ok:
            policy.mark_updated(i, kl)
            fired.append(i)
    return fired


def test_every_n():
    p = RMUpdatePolicy(every=2)
    assert run_loop(p, 7) == [0, 2, 4, 6]
    ok, reason = RMUpdatePolicy(every=2).should_update(0, 0.0)
    assert ok and reason.startswith("every 2 iterations")
    p = RMUpdatePolicy(every=3)
    p.mark_updated(0, 0.0)
    assert p.should_update(2, 0.0) == (False, "not due")
    assert p.should_update(3, 0.0) == (True, "every 3 iterations")


def test_kl_threshold():
    p = RMUpdatePolicy(kl_threshold=0.25)
    ok, reason = p.should_update(1, 0.31)
    assert ok and reason == "KL since last RM update 0.31 > 0.25"
    assert p.should_update(1, 0.2) == (False, "not due")
    kls = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.9]
    assert run_loop(RMUpdatePolicy(kl_threshold=0.25), 7, kls) == [3, 6]


def test_non_finite_kl_does_not_fire():
    ok, reason = RMUpdatePolicy(kl_threshold=0.25).should_update(1, math.nan)
    assert not ok and "not finite" in reason
    with pytest.raises(ValueError, match="current_kl"):
        RMUpdatePolicy(kl_threshold=0.25).kl_since_last(math.inf)
    with pytest.raises(ValueError, match="kl_at_update"):
        RMUpdatePolicy(every=1).mark_updated(0, math.nan)


def test_kl_since_last():
    p = RMUpdatePolicy(kl_threshold=1.0)
    assert p.kl_since_last(0.4) == pytest.approx(0.4)
    p.mark_updated(2, 0.4)
    assert p.kl_since_last(1.0) == pytest.approx(0.6)
    assert p.kl_since_last(0.1) == pytest.approx(0.3)  # moving back also counts


def test_freeze_wins_over_everything():
    p = RMUpdatePolicy(every=1, kl_threshold=0.1, freeze=[(3, 5)])
    assert p.should_update(4, 10.0, forced=True) == (False, "frozen (window 3-5)")
    assert run_loop(p, 8, forced={4}) == [0, 1, 2, 6, 7]


def test_forced_and_warmup():
    p = RMUpdatePolicy(every=10, warmup_iterations=2)
    ok, reason = p.should_update(0, 0.0)
    assert not ok and reason.startswith("warmup")
    assert p.should_update(1, 0.0, forced=True) == (True, "forced by detector")
    p.mark_updated(1, 0.0)
    assert p.should_update(5, 0.0) == (False, "not due")
    assert p.should_update(5, 0.0, forced=True) == (True, "forced by detector")


def test_never_policy():
    p = RMUpdatePolicy(never=True)
    assert not p.can_fire(100) and not p.can_fire()
    assert p.should_update(3, 99.0)[0] is False
    assert p.should_update(3, 0.0, forced=True)[0] is True  # detectors may still force


def test_can_fire():
    assert RMUpdatePolicy(every=5).can_fire(3)
    assert not RMUpdatePolicy(every=1, freeze=[(0, 9)]).can_fire(10)
    assert RMUpdatePolicy(every=1, freeze=[(0, 8)]).can_fire(10)
    assert not RMUpdatePolicy(kl_threshold=0.5, warmup_iterations=5).can_fire(5)
    assert not RMUpdatePolicy(every=1, freeze=[(0, 1), (3, 4)], warmup_iterations=3).can_fire(5)
    assert RMUpdatePolicy(every=1, freeze=[(0, 1), (3, 4)], warmup_iterations=2).can_fire(5)


def test_validation_names_field():
    with pytest.raises(ValueError, match="every"):
        RMUpdatePolicy(every=0)
    with pytest.raises(ValueError, match="kl_threshold"):
        RMUpdatePolicy(kl_threshold=0.0)
    with pytest.raises(ValueError, match="every and/or kl_threshold"):
        RMUpdatePolicy()
    with pytest.raises(ValueError, match="never"):
        RMUpdatePolicy(every=2, never=True)
    with pytest.raises(ValueError, match="freeze"):
        RMUpdatePolicy(every=2, freeze=[(5, 3)])
    with pytest.raises(ValueError, match="warmup_iterations"):
        RMUpdatePolicy(every=2, warmup_iterations=-1)


def test_state_round_trip():
    p = RMUpdatePolicy(every=2, kl_threshold=0.5, freeze=[[3, 4]], warmup_iterations=1)
    p.mark_updated(2, 0.7)
    d = json.loads(json.dumps(p.state_dict()))
    q = RMUpdatePolicy.from_state_dict(d)
    assert q.freeze == [(3, 4)] and q.last_update_iteration == 2
    assert q.kl_at_last_update == 0.7 and q.n_updates == 1
    r = RMUpdatePolicy(every=2)
    r.load_state_dict(d)
    assert r.should_update(3, 0.0) == (False, "not due")


def test_accept_new_rm():
    assert accept_new_rm(None, 0.6)[0]
    assert accept_new_rm(0.70, 0.72)[0]
    ok, reason = accept_new_rm(0.70, 0.65)
    assert not ok and "keeping previous RM" in reason
    assert accept_new_rm(0.70, 0.69, tolerance=0.01)[0]  # exactly at tolerance: keep new
    assert not accept_new_rm(0.70, 0.68, tolerance=0.01)[0]
    assert not accept_new_rm(0.70, math.nan)[0]
    with pytest.raises(ValueError, match="tolerance"):
        accept_new_rm(0.7, 0.7, tolerance=-0.1)


def test_paired_accuracy_se_counts_only_disagreements():
    old = [True] * 13 + [False] * 3
    assert paired_accuracy_se(old, old) == 0.0  # two RMs that agree everywhere: no noise
    new = list(old)
    new[0] = False  # one pair flips: 1/16 lower accuracy, SE sqrt(1)/16
    assert paired_accuracy_se(old, new) == pytest.approx(1 / 16)
    new[13] = True  # and one flips the other way: same accuracy, SE sqrt(2)/16
    assert paired_accuracy_se(old, new) == pytest.approx(math.sqrt(2) / 16)
    with pytest.raises(ValueError, match="equal-length"):
        paired_accuracy_se([True, False], [True])


def test_noise_aware_acceptance_on_16_held_out_pairs():
    """The sweep's flaw: on 16 pairs one noisy pair (0.8125 -> 0.75) rejected the refresh under a
    plain 0.02 tolerance. With the paired SE it passes; three pairs the new RM alone gets wrong do not."""
    old = np.array([True] * 13 + [False] * 3)
    one = old.copy(); one[0] = False
    four = old.copy(); four[:4] = False
    assert not accept_new_rm(13 / 16, 12 / 16, 0.02)[0]  # z = 0: the plain tolerance test
    ok, why = accept_new_rm(13 / 16, 12 / 16, 0.02, paired_accuracy_se(old, one), 1.645)
    assert ok and "1.645 x SE 0.0625" in why
    # 4 of 16 lost, none gained: drop 0.25 > 0.02 + 1.645 * sqrt(4) / 16 = 0.226
    ok, why = accept_new_rm(13 / 16, 9 / 16, 0.02, paired_accuracy_se(old, four), 1.645)
    assert not ok and "keeping previous RM" in why
    # the same drop of 0.25 as 6 lost and 2 gained is noisier (SE sqrt(8)/16): kept
    mixed = old.copy(); mixed[:6] = False; mixed[13:15] = True
    assert accept_new_rm(13 / 16, 9 / 16, 0.02, paired_accuracy_se(old, mixed), 1.645)[0]
    with pytest.raises(ValueError, match="z must be"):
        accept_new_rm(0.7, 0.7, 0.02, 0.1, -1.0)
