"""GPU checks (marker `gpu`, left out of the default run and skipped without CUDA): the bf16 path
of a training stage and of PPO on a CUDA device. Run with `pytest -m gpu` on a GPU machine."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import stage_cfg
from rlhf_ops.launcher import run_stage

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_sft_and_ppo_in_bf16_on_cuda(tiny_assets, tmp_path):
    launcher = {"num_processes": 1, "mixed_precision": "bf16"}
    sft = run_stage("sft", cfg=stage_cfg("sft"), inputs={"policy": tiny_assets["policy"], "data": tiny_assets["sft"]},
                    output=tmp_path / "sft", seed=0, launcher=launcher, progress=False)
    assert math.isfinite(sft["metrics"]["final_loss"])
    rm = run_stage("reward", cfg=stage_cfg("reward"), inputs={"reward_model": str(tmp_path / "sft"),
                   "data": tiny_assets["pairs"]}, output=tmp_path / "rm", seed=0, launcher=launcher, progress=False)
    assert math.isfinite(rm["metrics"]["final_loss"])
    ppo = run_stage("ppo", cfg=stage_cfg("ppo"), inputs={"policy": str(tmp_path / "sft"), "reward_model": str(tmp_path / "rm"),
                    "data": tiny_assets["prompts"]}, output=tmp_path / "ppo", seed=0, launcher=launcher, progress=False)
    assert math.isfinite(ppo["metrics"]["objective/kl"])
