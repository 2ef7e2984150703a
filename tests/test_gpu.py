"""GPU checks (marker `gpu`, left out of the default run and skipped without CUDA): the bf16 path
of a training stage and of PPO on a CUDA device. Run with `pytest -m gpu` on a GPU machine."""

from __future__ import annotations

import importlib.util
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


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm")
def test_vllm_backend_samples_like_hf_generate(tiny_assets, tmp_path):
    """generation.backend=vllm: the same number of completions per prompt, cut at EOS the same way, and
    (for a LoRA policy) served as an adapter on its base's engine."""
    from rlhf_ops.generation import generate
    from rlhf_ops.models import load_tokenizer
    from rlhf_ops.vllm_backend import release

    sft = run_stage("sft", cfg=stage_cfg("sft"), inputs={"policy": tiny_assets["policy"], "data": tiny_assets["sft"]},
                    output=tmp_path / "sft", seed=0, progress=False)
    prompts = ["Write a review of the phone.", "Write a review of the lamp."]
    gen = {"backend": "vllm", "gpu_memory_utilization": 0.2, "tensor_parallel_size": 1}
    v = generate(sft["output"], prompts, 3, max_new_tokens=16, seed=0, generation=gen)
    h = generate(sft["output"], prompts, 3, max_new_tokens=16, seed=0)
    assert len(v.completions) == len(h.completions) == 6 and v.prompt_index == h.prompt_index
    eos = load_tokenizer(sft["output"]).eos_token_id
    for ids, ended in zip(v.response_ids, v.ended):
        assert len(ids) <= 16 and (ids[-1] == eos) == ended
    again = generate(sft["output"], prompts, 3, max_new_tokens=16, seed=0, generation=gen)
    assert again.completions == v.completions  # seeded per request
    release()
