"""Shared fixtures: tiny real assets (tokenizer, policy, datasets from the testbed) and config
composition with the real conf/ tree, shrunk for tests (lightning-hydra-template style)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parent.parent

# Overrides that shrink every experiment to seconds on a CPU (a few steps per stage).
TINY_TASK = [
    "task.n_train_prompts=48", "task.n_eval_prompts=16", "task.n_gold_eval_prompts=8",
    "task.sft_demos_per_prompt=2", "task.n_offline_pairs=64", "task.tokenizer_corpus_size=600",
]
TINY_RUN = [
    "model.hidden_size=32", "model.intermediate_size=64", "model.vocab_size=400",
    "stage.sft.max_steps=6", "stage.reward.max_steps=4", "stage.dpo.max_steps=3",
    "stage.ppo.total_episodes=16", "stage.ppo.per_device_train_batch_size=8", "stage.ppo.num_ppo_epochs=1",
    "stage.ppo.response_length=16", "loop.prompts_per_iteration=8", "loop.eval_samples_per_prompt=1",
    *(f"stage.{n}.{k}" for n in ("rloo", "grpo") for k in ("max_steps=2", "per_device_train_batch_size=8",
                                                          "max_completion_length=16", "num_iterations=1")),
    "stage.rejection_sampling.max_steps=3",
    "progress=false", "tracking=disabled",
]
TINY = TINY_TASK + TINY_RUN  # the review testbed, shrunk


def run_cli(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_ops", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """A tokenizer + tiny Llama policy, and SFT / preference / prompt tables from the testbed."""
    from omegaconf import OmegaConf

    from rlhf_ops.artifacts import write_table
    from rlhf_ops.config import ModelConfig
    from rlhf_ops.tasks.reviews import panel_member
    from rlhf_ops.models import build_tiny_policy, save_model, train_tokenizer
    from rlhf_ops.tasks.reviews.builders import build_grammar_pairs, build_prompt_pool, build_sft_demos
    from rlhf_ops.tasks.reviews.task import prompt_splits, tokenizer_corpus

    d = tmp_path_factory.mktemp("assets")
    splits = prompt_splits(0, 32, 8, 8)
    mcfg = OmegaConf.structured(ModelConfig(hidden_size=32, intermediate_size=64))
    tok = train_tokenizer(tokenizer_corpus(0, 600), 400)
    save_model(build_tiny_policy(mcfg, tok, 0), tok, d / "policy")
    return {
        "dir": d,
        "policy": str(d / "policy"),
        "sft": str(write_table(build_sft_demos(splits["train"], 1, 0), d / "sft.parquet")),
        "pairs": str(write_table(build_grammar_pairs(splits["train"], 48, panel_member("careful", 0), 0),
                                 d / "pairs.jsonl")),
        "prompts": str(write_table(build_prompt_pool(splits["train"]), d / "prompts.parquet")),
    }


def stage_cfg(name: str, **changes) -> dict:
    """The stage's config from the real conf/stage/tiny.yaml, shrunk to a few steps."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[o for o in TINY if o.startswith("stage.")])
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg.stage[name], resolve=True)
    c.update(changes)
    return c


def typed_cfg(*dotlist: str, task=None):
    """A typed RunConfig (as the loop's steps get it) from the schema defaults plus `a.b=value` overrides."""
    from omegaconf import OmegaConf

    from rlhf_ops.config import ReviewsTaskConfig, RunConfig

    base = OmegaConf.structured(RunConfig(run_dir="unused", task=task or ReviewsTaskConfig()))
    return OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.from_dotlist(list(dotlist))))


def step_ctx(cfg, step: str, iteration: int, run_dir, state=None, step_dir=None):
    from rlhf_ops.loop.recipe import StepContext
    from rlhf_ops.loop.state import LoopState

    d = step_dir or (run_dir / f"iter_{iteration:03d}" / step)
    d.mkdir(parents=True, exist_ok=True)
    return StepContext(cfg, state or LoopState(), iteration, step, run_dir, d)
