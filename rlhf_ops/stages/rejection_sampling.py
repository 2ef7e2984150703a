"""Rejection-sampling stage: SFT (TRL's SFTTrainer, as rlhf_ops.stages.sft) on the reward model's best
completion per prompt, with its own settings (`stage.rejection_sampling`: fine-tuning a trained policy).

In the loop (`loop.policy_update=rejection_sampling`) the data is the iteration's collected completions,
best of `loop.completions_per_prompt` per prompt under the current RM (rlhf_ops.loop.iteration.best_of_n):
the middle ground between PPO and iterative DPO (RAFT, Dong et al. 2023; ReST, Gulcehre et al. 2023).
Run on its own it is SFT on any prompt/completion file:
    python -m rlhf_ops job=rejection_sampling io.policy=PATH/sft io.data=best.parquet io.output=PATH/rs
"""

from .sft import train, validate  # noqa: F401
