"""A NaN/inf reward from a labeler's reward model is never trained on: the iteration is abandoned,
its training steps are skipped and the gate rolls it back with a remedy."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from rlhf_ops.artifacts import write_table
from rlhf_ops.control.kl_controller import FixedKL
from rlhf_ops.labelers.reward_model import NonFiniteRewardError, RewardModelLabeler
from rlhf_ops.loop import iteration
from rlhf_ops.loop.errors import AbandonIteration
from rlhf_ops.loop.state import LastGood, LoopState
from rlhf_ops.models import load_sequence_classifier, load_tokenizer, save_model


@pytest.fixture(scope="module")
def nan_rm(tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("nan") / "rm"
    rm = load_sequence_classifier(tiny_assets["policy"])
    with torch.no_grad():
        rm.score.weight.fill_(float("nan"))
    save_model(rm, load_tokenizer(tiny_assets["policy"]), out)
    return str(out)


def test_reward_model_labeler_refuses_nan_scores(nan_rm):
    rows = [{"prompt": "Review the hotel. Talk about the service.\nReview:", "prompt_id": "p1"}]
    with pytest.raises(NonFiniteRewardError, match="gave nan .* prompt 'p1'"):
        RewardModelLabeler(nan_rm).label(rows, [[" Good.", " Bad."]], iteration=0, checkpoint="x")


def test_poisoned_iteration_is_abandoned_and_rolled_back(nan_rm, tmp_path):
    """The labeler's NaN abandons the iteration (nothing is written); the gate restores the last good
    state and applies the labeler remedies (refresh the RM, lower the learning rate)."""
    from conftest import step_ctx, typed_cfg

    completions = pd.DataFrame({"prompt": ["Review the hotel. Talk about the service.\nReview:"] * 2,
                                "prompt_id": ["p1", "p1"], "completion": [" Good.", " Bad."], "empty": [False, False]})
    cfg = typed_cfg("loop.labeler=reward_model", "loop.detectors=[]")
    kl = FixedKL(0.05).state_dict()
    good = LastGood(-1, "SFT", "RM0", kl, {"x": 1}, 0, 1.0, {"gold": 0.1}, None)
    state = LoopState(rm=nan_rm, policy="P", cursor=8, kl_state=kl, rm_policy_state={"y": 2}, last_good=good,
                      history=[good.eval])
    state.work.completions = str(write_table(completions, tmp_path / "c.parquet"))
    ctx = step_ctx(cfg, "label", 0, tmp_path, state)
    with pytest.raises(AbandonIteration, match="labeler: reward model .* gave nan") as e:
        iteration.label(ctx)
    assert e.value.remedies == ["refresh_rm", "lower_lr"] and e.value.metrics["nonfinite_rewards"] == 1.0
    assert not list(ctx.dir.iterdir()), "no pair is written from NaN scores"

    state.work.abandoned, state.work.abandon_remedies = f"label: {e.value.reason}", e.value.remedies
    g = step_ctx(cfg, "gate", 0, tmp_path, state)
    iteration.gate(g)
    s = g.state
    assert g.iteration_status["status"] == "rolled_back"
    assert (s.policy, s.rm, s.cursor, s.rm_policy_state) == ("SFT", "RM0", 0, {"x": 1})
    assert s.force_rm_refresh is True and s.lr_scale == 0.5 and s.n_rollbacks == 1
    assert g.rollbacks[0]["detector"] == "abandoned" and "gave nan" in g.rollbacks[0]["reason"]
    assert math.isclose(s.kl_state["beta"], 0.05)


@pytest.fixture(scope="module")
def flat_rm(tiny_assets, tmp_path_factory):
    """A reward model that scores every text the same (a zero score head): every pair is a tie."""
    out = tmp_path_factory.mktemp("flat") / "rm"
    rm = load_sequence_classifier(tiny_assets["policy"])
    with torch.no_grad():
        rm.score.weight.zero_()
    save_model(rm, load_tokenizer(tiny_assets["policy"]), out)
    return str(out)


def test_an_iteration_of_ties_is_abandoned_not_trained_on(flat_rm, tmp_path):
    """The RM labeler gives no label for a tie; with fewer usable pairs than loop.min_pairs the
    iteration is abandoned (nothing written) and the gate rolls it back, with no remedy to apply."""
    from conftest import step_ctx, typed_cfg

    prompts = [f"Review the hotel. Talk about the service {i}.\nReview:" for i in range(6)]
    completions = pd.DataFrame({"prompt": [p for p in prompts for _ in (0, 1)],
                                "prompt_id": [f"p{i}" for i in range(6) for _ in (0, 1)],
                                "completion": [c for _ in prompts for c in (" Good.", " Bad.")], "empty": False})
    assert RewardModelLabeler(flat_rm).label([{"prompt": prompts[0], "prompt_id": "p0"}], [[" Good.", " Bad."]],
                                             iteration=0, checkpoint="x").empty
    cfg = typed_cfg("loop.labeler=reward_model", "loop.detectors=[]", "loop.min_pairs=4")
    kl = FixedKL(0.05).state_dict()
    good = LastGood(-1, "SFT", "RM0", kl, {"x": 1}, 0, 1.0, {"gold": 0.1}, None)
    state = LoopState(rm=flat_rm, policy="P", cursor=8, kl_state=kl, rm_policy_state={"y": 2}, last_good=good,
                      history=[good.eval])
    state.work.completions = str(write_table(completions, tmp_path / "c.parquet"))
    ctx = step_ctx(cfg, "label", 0, tmp_path, state)
    with pytest.raises(AbandonIteration, match=r"labeler: 0 usable pair\(s\) from 6 prompt\(s\), fewer than "
                                               r"loop.min_pairs=4") as e:
        iteration.label(ctx)
    assert not list(ctx.dir.iterdir()) and not (tmp_path / iteration.STORE).exists()
    state.work.abandoned, state.work.abandon_remedies = f"label: {e.value.reason}", e.value.remedies
    g = step_ctx(cfg, "gate", 0, tmp_path, state)
    iteration.gate(g)
    assert g.iteration_status["status"] == "rolled_back" and g.state.policy == "SFT"
    assert g.state.lr_scale == 1.0 and g.state.force_rm_refresh is False, "no remedy for a labeler that gave nothing"
