"""The SFT stage teaches a tiny policy the review task: on held-out gold-eval prompts its samples
score clearly higher gold than those of the random-init policy it starts from."""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from conftest import stage_cfg
from rlhf_ops.artifacts import write_table
from rlhf_ops.config import ModelConfig
from rlhf_ops.generation import generate
from rlhf_ops.launcher import run_stage
from rlhf_ops.models import build_tiny_policy, save_model, train_tokenizer
from rlhf_ops.tasks.reviews.builders import build_sft_demos
from rlhf_ops.tasks.reviews.gold import gold_reward
from rlhf_ops.tasks.reviews.task import prompt_splits, tokenizer_corpus

# 300 train prompts x 4 grammar demos, kept when gold >= 0.5 (~560 demos): unfiltered demos
# (negative and flawed reviews too) need far more steps before the policy beats random init
# (measured gap 0.19 after 200 steps at batch 16, seed 0).
N_TRAIN_PROMPTS, DEMOS_PER_PROMPT, MIN_DEMO_GOLD = 300, 4, 0.5
SFT = {"max_steps": 120, "per_device_train_batch_size": 16, "learning_rate": 6e-3}
N_PROMPTS, N_SAMPLES = 32, 2  # gold-eval prompts, samples per prompt (temperature 0.7, 48 tokens)

# Required gap mean_gold(SFT) - mean_gold(random init). With exactly these settings, seeds 0/1/2
# (tokenizer corpus, model init, splits, demos, sampling) gave gaps 0.879 / 0.869 / 0.744
# (SFT 0.144 / 0.167 / -0.015 vs random init -0.735 / -0.702 / -0.760). The standard error of a
# gap is ~0.12 (64 samples; gold std ~0.8 for SFT, ~0.5 for random init), so 0.35 sits ~3 standard
# errors below the smallest gap seen, yet far above what a random-init policy gets against itself
# (a second sampling seed moved its mean by 0.027 / 0.052 / 0.018; checked below, so the
# assertion can fail).
MIN_GAP = 0.35


def mean_gold(policy_dir, prompts: list[str], seed: int) -> float:
    s = generate(str(policy_dir), prompts, N_SAMPLES, max_new_tokens=48, temperature=0.7, seed=seed)
    return float(np.mean([gold_reward(p, c) for p, c in zip(s.prompts, s.completions)]))


def sft_vs_init(tmp_path, seed: int) -> tuple[float, float, float]:
    """(SFT mean gold, random-init mean gold, random-init mean gold on another sampling seed)."""
    splits = prompt_splits(seed, N_TRAIN_PROMPTS, 0, N_PROMPTS)
    tok = train_tokenizer(tokenizer_corpus(seed, 1500), 512)
    mcfg = OmegaConf.structured(ModelConfig(hidden_size=64, intermediate_size=128))
    init = tmp_path / "init"
    save_model(build_tiny_policy(mcfg, tok, seed), tok, init)
    demos = write_table(build_sft_demos(splits["train"], DEMOS_PER_PROMPT, seed, min_gold=MIN_DEMO_GOLD),
                        tmp_path / "demos.parquet")
    sft = tmp_path / "sft"
    run_stage("sft", cfg=stage_cfg("sft", **SFT), inputs={"policy": str(init), "data": str(demos)},
              output=sft, seed=seed, progress=False)
    prompts = [r["prompt"] for r in splits["gold_eval"]]
    return mean_gold(sft, prompts, seed), mean_gold(init, prompts, seed), mean_gold(init, prompts, seed + 1)


def test_sft_policy_beats_random_init_on_gold(tmp_path):
    g_sft, g_init, g_init_again = sft_vs_init(tmp_path, seed=0)
    # A random-init policy does not pass this check against itself.
    assert abs(g_init_again - g_init) < MIN_GAP, (g_init, g_init_again)
    assert g_sft - g_init > MIN_GAP, f"SFT mean gold {g_sft:.3f} vs random init {g_init:.3f}"
