"""RLOO and GRPO stages: TRL's RLOOTrainer / GRPOTrainer (its maintained online trainers; PPO left TRL
after 1.12) against the loop's reward model (or RM ensemble, reduced as the loop reduces it).

Run on their own:
    python -m rlhf_ops job=rloo io.policy=PATH/sft io.reward_model=PATH/rm io.data=prompts.parquet \
        io.output=PATH/rloo stage.rloo.beta=0.05
    python -m rlhf_ops job=grpo ...   (the same inputs)

What this adds to TRL's trainers:
- the reward is our scorer on the decoded prompt and completion (the text the evaluation scores, EOS
  appended as in reward training), reduced over an ensemble like PPO's; a completion that never
  emitted EOS gets `missing_eos_penalty` subtracted (PPO's rule), so truncation is not free;
- the KL is against `io.ref` (in the loop: the SFT policy), not against the starting policy: TRL loads
  its reference from the model's own path, which from the second iteration on is the last accepted
  policy, so the path it reads is pointed at the reference while the trainer is built;
- beta comes from the loop's KL controller (`spec["beta"]`), a new trainer per iteration.
Pad equal to EOS (SmolLM2's, many chat models') is fine here, unlike PPO.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ..artifacts import InputError
from ..lora import check_reference, drop_reference_adapter
from ..models import check_checkpoint_dir, load_tokenizer, load_trainable_policy, reward_members
from ..scoring import load_reward_model, reward_scores
from .common import check_finite_loss, drop_trainer_dir, fit, log_history_metrics, quiet, require, save_policy, \
    trainer_kwargs
from .ppo import max_prompt_tokens, read_prompts
from .trl_args import trl_kwargs

log = logging.getLogger(__name__)

# Keys of stage.rloo / stage.grpo that are ours, not TRL's (rlhf_ops.stages.trl_args.OURS).
OURS = {"missing_eos_penalty"}


def resolve_inputs(spec: dict) -> dict:
    inputs = dict(spec["inputs"])
    inputs["ref"] = inputs.get("ref") or inputs["policy"]
    return inputs


def _max_prompt_tokens(policy_dir, cfg) -> int:
    return max_prompt_tokens(policy_dir, cfg["max_completion_length"])


def validate(spec: dict) -> None:
    require(spec, "policy", "reward_model", "data")
    inputs = resolve_inputs(spec)
    trc = spec.get("trust_remote_code", False)
    for key in ("policy", "ref", "reward_model"):
        check_checkpoint_dir(inputs[key], key)
    check_reference(spec)
    # The reward is scored on decoded text with the RM's own tokenizer (RewardFunction), so unlike PPO an RM
    # of another vocabulary is fine; it must load, with a pad token, before anything trains.
    for member in reward_members(inputs["reward_model"]):
        load_tokenizer(member, trc)
    tok = load_tokenizer(inputs["policy"], trc)
    read_prompts(inputs["data"], tok, _max_prompt_tokens(inputs["policy"], spec["cfg"]))
    cfg = spec["cfg"]
    if cfg["num_generations"] < 2:
        raise InputError(f"stage.{spec['stage']}.num_generations={cfg['num_generations']}: the baseline of each "
                         "completion is the other completions of its prompt, so at least 2 are needed")


class RewardFunction:
    """TRL's reward_funcs entry: the loop's RM (or ensemble, reduced) on prompt + completion text."""

    def __init__(self, path, tokenizer, reduce: str, lam: float, missing_eos_penalty, trust_remote_code: bool,
                 max_length: int):
        self.model = load_reward_model(path, reduce, lam, trust_remote_code)
        self.model.eval()
        self.tokenizer, self.reduce, self.lam = tokenizer, reduce, lam
        self.penalty, self.max_length = missing_eos_penalty, max_length
        self.__name__ = "reward_model"  # TRL names the logged reward after the function

    def __call__(self, prompts, completions, completion_ids=None, **_) -> list[float]:
        reward = reward_scores(self.model, self.tokenizer, list(prompts), list(completions), self.reduce, self.lam,
                               max_length=self.max_length)
        if self.penalty is not None and completion_ids is not None:
            eos = self.tokenizer.eos_token_id
            ended = np.array([eos in ids for ids in completion_ids])
            reward = reward - self.penalty * (~ended)
        return reward.tolist()


def vllm_kwargs(spec: dict) -> dict:
    """generation.backend=vllm: TRL's own vLLM generation for RLOO / GRPO, colocated with training (one
    process per GPU shares the device); any other of TRL's vllm_* fields passes through stage.<name>.trl."""
    gen = spec.get("generation") or {}
    if gen.get("backend") != "vllm":
        return {}
    return {"use_vllm": True, "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": gen.get("gpu_memory_utilization", 0.3),
            "vllm_tensor_parallel_size": gen.get("tensor_parallel_size", 1)}


def train(spec: dict) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import trl
    from datasets import Dataset

    name = spec["stage"]
    config_cls, trainer_cls = {"rloo": (trl.RLOOConfig, trl.RLOOTrainer), "grpo": (trl.GRPOConfig, trl.GRPOTrainer)}[name]
    cfg, trc = spec["cfg"], spec.get("trust_remote_code", False)
    inputs = resolve_inputs(spec)
    tokenizer = load_tokenizer(inputs["policy"], trc)
    tokenizer.padding_side = "left"
    prompts = read_prompts(inputs["data"], tokenizer, _max_prompt_tokens(inputs["policy"], cfg))
    dataset = Dataset.from_dict({"prompt": prompts})
    policy = load_trainable_policy(inputs["policy"], spec.get("lora"), trc)
    reward = RewardFunction(inputs["reward_model"], load_tokenizer(inputs["reward_model"], trc),
                            spec.get("ensemble_reduce", "mean"), spec.get("ensemble_lambda", 1.0),
                            cfg.get("missing_eos_penalty"), trc,
                            max_length=_max_prompt_tokens(inputs["policy"], cfg) + cfg["max_completion_length"])
    # In the loop, beta is loop.kl.beta through the KL controller (spec["beta"]); alone, stage.<name>.beta.
    ours = {k: v for k, v in cfg.items() if k not in OURS}
    args = config_cls(**trl_kwargs(name, ours, **trainer_kwargs(spec, cfg),
                                   **{k: v for k, v in vllm_kwargs(spec).items() if k not in (cfg.get("trl") or {})},
                                   beta=spec.get("beta", cfg["beta"])))
    # TRL builds the reference from the path the model was loaded from (config._name_or_path): while the
    # trainer is built, that path is the reference's, so the KL term is against io.ref. With LoRA TRL builds
    # none: the reference is the base with the adapter disabled (drop_reference_adapter: not a copy of it).
    if spec.get("deepspeed"):
        # TRL builds the reference inside the trainer under deepspeed.zero.Init (ZeRO-3), whose config check
        # reads the world size from DeepSpeed's communication backend: not yet set up there, it says 1 and the
        # batch check fails (train_batch_size 16 != 8 * 1 * 1). Set it up on the process group accelerate made.
        import deepspeed

        deepspeed.init_distributed()
    loaded_from = policy.config._name_or_path
    policy.config._name_or_path = str(inputs["ref"])
    try:
        trainer = trainer_cls(model=policy, reward_funcs=[reward], args=args, train_dataset=dataset,
                              processing_class=tokenizer)
    finally:
        policy.config._name_or_path = loaded_from
    drop_reference_adapter(trainer.model)
    quiet(trainer, spec)
    fit(trainer)
    metrics = log_history_metrics(trainer)
    kls = [row["kl"] for row in trainer.state.log_history if "kl" in row]
    if kls:  # before any update the policy is its starting point: the KL to io.ref at the start
        metrics["first_kl"] = float(kls[0])
    metrics["beta"] = args.beta
    metrics["n_prompts"] = len(prompts)
    check_finite_loss(metrics, name)
    save_policy(trainer, tokenizer, spec)
    drop_trainer_dir(spec)
    return metrics
