"""A NaN/inf reward from a labeler's reward model is never trained on: the iteration is poisoned,
its training nodes are skipped and the gate rolls it back with a remedy."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from rlhf_ops.artifacts import write_table
from rlhf_ops.graph import Context
from rlhf_ops.labelers.reward_model import NonFiniteRewardError, RewardModelLabeler
from rlhf_ops.loop import iteration_ops
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


def _cfg():
    return {"seed": 0, "model": {"trust_remote_code": False}, "task": {"_target_": "rlhf_ops.tasks.files.FilesTask"},
            "stage": {"ppo": {"total_episodes": 16}},
            "loop": {"labeler": "reward_model", "annotator": "careful", "human_labels_on_error": "error",
                     "detectors": [], "min_win_rate": 0.4, "gate_vote": "any", "beta_remedy_factor": 2.0,
                     "lr_remedy_factor": 0.5, "kl": {"remedy_min_beta": 0.02}}}


def test_poisoned_iteration_is_skipped_and_rolled_back(nan_rm, tmp_path):
    completions = pd.DataFrame({"prompt": ["Review the hotel. Talk about the service.\nReview:"] * 2,
                                "prompt_id": ["p1", "p1"], "completion": [" Good.", " Bad."], "empty": [False, False]})
    state = {"completions": str(write_table(completions, tmp_path / "c.parquet")), "rm": nan_rm, "policy": "P"}
    ctx = Context(0, "label", state, set(), tmp_path, tmp_path / "label", None, 0)
    (tmp_path / "label").mkdir()
    out = iteration_ops.label(ctx, _cfg())
    assert out["poison"].startswith("labeler:") and out["_metrics"]["nonfinite_rewards"] == 1.0
    assert len(pd.read_parquet(out["pairs"])) == 0, "no pair is written from NaN scores"

    from rlhf_ops.control.kl_controller import FixedKL

    kl = FixedKL(0.05).state_dict()
    last_good = {"iteration": -1, "policy": "SFT", "rm": "RM0", "kl_state": kl, "rm_policy_state": {"x": 1},
                 "cursor": 0, "lr_scale": 1.0, "eval": {"gold": 0.1}, "samples": None}
    st = {**state, "poison": out["poison"], "pairs": out["pairs"], "candidate": None, "last_good": last_good,
          "eval": {"poison": out["poison"]}, "history": [last_good["eval"]], "kl_state": kl,
          "rm_policy_state": {"x": 1}, "cursor": 8, "lr_scale": 1.0, "iterations_log": [], "n_rollbacks": 0,
          "beta_used": 0.05, "lr_scale_used": 1.0}
    for op in (iteration_ops.policy_update, iteration_ops.evaluate):
        ctx = Context(0, op.__name__, st, set(), tmp_path, tmp_path / op.__name__, None, 0)
        st = {**st, **{k: v for k, v in op(ctx, {**_cfg(), "loop": {**_cfg()["loop"], "iterations": 1,
              "lr_schedule": "constant", "lr_end_mult": 1.0,
              "kl": {"schedule": "constant", "start_mult": 1.0, "end_mult": 1.0, "remedy_min_beta": 0.02}}}).items()
              if not k.startswith("_")}}
    assert st["candidate"] is None, "nothing was trained"
    g = iteration_ops.gate(Context(0, "gate", st, set(), tmp_path, tmp_path / "gate", None, 0), _cfg())
    assert g["_iteration_status"]["status"] == "rolled_back"
    assert g["policy"] == "SFT" and g["rm"] == "RM0" and g["cursor"] == 0 and g["poison"] is None
    assert g["force_rm_refresh"] is True and g["lr_scale"] == 0.5
    assert g["_rollbacks"][0]["detector"] == "non_finite_input"
    assert math.isclose(g["kl_state"]["beta"], 0.05)
