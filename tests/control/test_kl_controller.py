"""KL controllers (Ziegler et al. 2019 adaptive rule) and iteration schedules."""

import json
import math

import pytest

from rlhf_ops.control.kl_controller import (
    AdaptiveKL,
    BetaSchedule,
    FixedKL,
    KLController,
    LRSchedule,
    make_kl_controller,
)


def test_adaptive_rises_above_target_and_falls_below():
    up = AdaptiveKL(init_beta=0.1, target=6.0, horizon=1000)
    up.update(kl=6.6, n_steps=100)  # error = +0.1
    assert up.beta == pytest.approx(0.1 * (1 + 0.1 * 100 / 1000))
    down = AdaptiveKL(init_beta=0.1, target=6.0, horizon=1000)
    down.update(kl=5.4, n_steps=100)  # error = -0.1
    assert down.beta == pytest.approx(0.1 * (1 - 0.1 * 100 / 1000))
    on = AdaptiveKL(init_beta=0.1, target=6.0, horizon=1000)
    on.update(kl=6.0, n_steps=100)
    assert on.beta == pytest.approx(0.1)


def test_adaptive_error_is_clipped():
    a = AdaptiveKL(0.1, target=1.0, horizon=100)
    a.update(kl=50.0, n_steps=10)  # raw error 49 -> 0.2
    assert a.beta == pytest.approx(0.1 * 1.02)
    b = AdaptiveKL(0.1, target=1.0, horizon=100)
    b.update(kl=0.0, n_steps=10)  # raw error -1 -> -0.2
    assert b.beta == pytest.approx(0.1 * 0.98)


def test_adaptive_bounds_and_zero_steps():
    a = AdaptiveKL(1.0, target=1.0, horizon=1, min_beta=0.5, max_beta=1.5)
    for _ in range(10):
        a.update(100.0, n_steps=10)
    assert a.beta == 1.5
    for _ in range(20):
        a.update(0.0, n_steps=100)  # multiplier goes negative: the clamp must hold
    assert a.beta == 0.5
    a.update(100.0, n_steps=0)
    assert a.beta == 0.5


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "1.0", None])
def test_non_finite_kl_raises_and_leaves_beta(bad):
    for ctl in (AdaptiveKL(0.1, 1.0, 10), FixedKL(0.1)):
        with pytest.raises(ValueError, match="kl"):
            ctl.update(bad, 10)
        assert ctl.beta == 0.1


def test_negative_n_steps_rejected():
    with pytest.raises(ValueError, match="n_steps"):
        AdaptiveKL(0.1, 1.0, 10).update(1.0, -1)


def test_fixed_is_constant_but_scales():
    f = FixedKL(0.05)
    f.update(100.0, 1000)
    assert f.beta == 0.05
    f.scale(2.0)
    assert f.beta == pytest.approx(0.1)
    capped = FixedKL(0.05, max_beta=0.08)
    capped.scale(2.0)
    assert capped.beta == 0.08


def test_scale_respects_bounds_and_validates():
    a = AdaptiveKL(4.0, 1.0, 10, max_beta=10.0)
    a.scale(5.0)
    assert a.beta == 10.0
    a.scale(1e-9)
    assert a.beta == a.min_beta
    for bad in (0, -2.0, math.nan):
        with pytest.raises(ValueError, match="factor"):
            a.scale(bad)


def test_state_round_trip_json():
    a = AdaptiveKL(0.2, target=3.0, horizon=500, min_beta=0.01, max_beta=5.0)
    a.update(9.0, 200)
    d = json.loads(json.dumps(a.state_dict()))
    b = AdaptiveKL.from_state_dict(d)
    assert b.beta == a.beta and b.target == 3.0 and b.max_beta == 5.0
    c = KLController.from_state_dict(d)  # base class dispatches on kind
    assert isinstance(c, AdaptiveKL) and c.beta == a.beta
    fresh = AdaptiveKL(1.0, 1.0, 1.0)
    fresh.load_state_dict(d)
    assert fresh.beta == a.beta and fresh.horizon == 500
    f = FixedKL(0.3, max_beta=1.0)
    g = KLController.from_state_dict(json.loads(json.dumps(f.state_dict())))
    assert isinstance(g, FixedKL) and g.beta == 0.3 and g.max_beta == 1.0


def test_state_dict_kind_mismatch():
    with pytest.raises(ValueError, match="kind"):
        FixedKL.from_state_dict(AdaptiveKL(0.1, 1, 1).state_dict())
    with pytest.raises(ValueError, match="kind"):
        FixedKL(0.1).load_state_dict(AdaptiveKL(0.1, 1, 1).state_dict())
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKL.from_state_dict({"kind": "adaptive", "init_beta": 0.1, "target": 1.0})


def test_constructor_validation_names_field():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKL(0.1, 0.0, 10)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKL(0.1, 1.0, -1)
    with pytest.raises(ValueError, match="init_beta"):
        AdaptiveKL(20.0, 1.0, 10)
    with pytest.raises(ValueError, match="min_beta"):
        AdaptiveKL(0.1, 1.0, 10, min_beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        FixedKL(math.nan)


def test_factory():
    assert isinstance(make_kl_controller("fixed", beta=0.1), FixedKL)
    a = make_kl_controller("adaptive", init_beta=0.1, target=6.0, horizon=10000)
    assert isinstance(a, AdaptiveKL)
    with pytest.raises(ValueError, match="'pid'"):
        make_kl_controller("pid", beta=0.1)
    with pytest.raises(ValueError, match="horizn"):
        make_kl_controller("adaptive", init_beta=0.1, target=6.0, horizn=10)
    with pytest.raises(ValueError, match="horizon"):
        make_kl_controller("adaptive", init_beta=0.1, target=6.0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_beta_schedule_endpoints_and_monotonic(kind):
    s = BetaSchedule(kind, start_mult=2.0, end_mult=1.0, iterations=6)
    vals = [s.beta_multiplier(i) for i in range(8)]
    assert vals[0] == pytest.approx(2.0)
    assert vals[5] == pytest.approx(1.0) and vals[7] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert s.effective_beta(FixedKL(0.1), 0) == pytest.approx(0.2)
    assert s.effective_beta(0.1, 5) == pytest.approx(0.1)


def test_constant_schedules_and_single_iteration():
    assert BetaSchedule("constant", 1.5, 1.0, 4).beta_multiplier(3) == 1.5
    one = LRSchedule("linear", 1.0, 0.1, iterations=1)
    assert one.lr_multiplier(0) == 1.0 and one.lr_multiplier(1) == pytest.approx(0.1)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_lr_schedule_decays(kind):
    s = LRSchedule(kind, start=1.0, end=0.1, iterations=5)
    vals = [s.lr_multiplier(i) for i in range(5)]
    assert vals[0] == pytest.approx(1.0) and vals[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(vals, vals[1:]))
    if kind == "cosine":  # cosine is slower than linear at the start
        assert vals[1] > LRSchedule("linear", 1.0, 0.1, 5).lr_multiplier(1)


def test_schedule_validation_names_field():
    with pytest.raises(ValueError, match="kind"):
        BetaSchedule("exp", 2.0, 1.0, 3)
    with pytest.raises(ValueError, match="iterations"):
        LRSchedule("linear", 1.0, 0.1, 0)
    with pytest.raises(ValueError, match="start_mult"):
        BetaSchedule("linear", 0.0, 1.0, 3)
    with pytest.raises(ValueError, match="end"):
        LRSchedule("linear", 1.0, -0.1, 3)
    with pytest.raises(ValueError, match="iteration"):
        LRSchedule("linear", 1.0, 0.1, 3).lr_multiplier(-1)
