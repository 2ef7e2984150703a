"""Each TRL stage trains a few steps on tiny models: trainable parameters change, the loss is
finite, and the outputs reload (TRL's own trainer tests assert the same)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import stage_cfg
from rlhf_ops.artifacts import META_FILE, read_meta
from rlhf_ops.launcher import run_stage
from rlhf_ops.models import load_policy, load_sequence_classifier, reward_members


def changed(before: torch.nn.Module, after: torch.nn.Module, skip=("score",)) -> float:
    """Fraction of shared parameter tensors whose values changed."""
    a = dict(before.named_parameters())
    n = moved = 0
    for name, p in after.named_parameters():
        if name in a and not any(s in name for s in skip):
            n += 1
            moved += int(not torch.allclose(a[name], p))
    return moved / max(n, 1)


@pytest.fixture(scope="module")
def sft_out(tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "policy"
    meta = run_stage("sft", cfg=stage_cfg("sft"), inputs={"policy": tiny_assets["policy"], "data": tiny_assets["sft"]},
                     output=out, seed=0, progress=False)
    return out, meta


def test_sft_trains_and_reloads(sft_out, tiny_assets):
    out, meta = sft_out
    assert math.isfinite(meta["metrics"]["final_loss"])
    assert meta["metrics"]["global_step"] == 6
    assert changed(load_policy(tiny_assets["policy"]), load_policy(out)) > 0.9
    assert (out / META_FILE).is_file() and read_meta(out)["stage"] == "sft"
    assert not list(out.glob("*.bin")), "only safetensors and JSON in a checkpoint"
    assert not out.with_name(out.name + ".tmp").exists()


def test_reward_ensemble_members_differ(sft_out, tiny_assets, tmp_path):
    out = tmp_path / "rm"
    meta = run_stage("reward", cfg=stage_cfg("reward", ensemble_size=2), inputs={"reward_model": str(sft_out[0]),
                     "data": tiny_assets["pairs"]}, output=out, seed=0, progress=False)
    members = reward_members(out)
    assert [m.name for m in members] == ["member_0", "member_1"]
    assert json.loads((out / "ensemble.json").read_text())["seeds"] == [0, 1000]
    m0, m1 = (load_sequence_classifier(m) for m in members)
    # Different seeds and bootstrap resamples give different members.
    assert not torch.allclose(m0.score.weight, m1.score.weight)
    assert changed(load_sequence_classifier(sft_out[0]), m0, skip=("score",)) > 0.5
    assert math.isfinite(meta["metrics"]["final_loss"])
    assert 0.0 <= meta["metrics"]["heldout_accuracy"] <= 1.0


@pytest.fixture(scope="module")
def rm_out(sft_out, tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "rm"
    run_stage("reward", cfg=stage_cfg("reward"), inputs={"reward_model": str(sft_out[0]), "data": tiny_assets["pairs"]},
              output=out, seed=0, progress=False)
    return out


def test_ppo_trains_against_reward_model(sft_out, rm_out, tiny_assets, tmp_path):
    out = tmp_path / "ppo"
    meta = run_stage("ppo", cfg=stage_cfg("ppo"), inputs={"policy": str(sft_out[0]), "reward_model": str(rm_out),
                     "data": tiny_assets["prompts"]}, output=out, seed=0, progress=False, extra={"beta": 0.2})
    m = meta["metrics"]
    assert m["kl_coef"] == 0.2, "the loop's beta reaches PPO's kl_coef"
    assert math.isfinite(m["loss/policy_avg"]) and math.isfinite(m["objective/kl"])
    assert changed(load_policy(sft_out[0]), load_policy(out)) > 0.5


def test_dpo_trains_with_explicit_reference(sft_out, tiny_assets, tmp_path):
    out = tmp_path / "dpo"
    meta = run_stage("dpo", cfg=stage_cfg("dpo"), inputs={"policy": str(sft_out[0]), "data": tiny_assets["pairs"]},
                     output=out, seed=0, progress=False, extra={"beta": 0.3})
    assert meta["metrics"]["beta"] == 0.3
    assert math.isfinite(meta["metrics"]["final_loss"])
    assert changed(load_policy(sft_out[0]), load_policy(out)) > 0.5
