"""PPO stage: `trl.experimental.ppo.PPOTrainer` (TRL 1.12.0, the last release that has it) with a
value model, a frozen reference, and a reward model (or RM ensemble) read from checkpoint paths.

Run on its own:
    python -m rlhf_ops job=ppo io.policy=PATH/sft io.reward_model=PATH/rm io.data=prompts.parquet \
        io.output=PATH/ppo stage.ppo.kl_coef=0.05

`io.ref` defaults to the policy, `io.value_model` to the (first member of the) reward model: the
usual TRL practice of starting the critic from the reward model. Prompts are tokenized without
special tokens and left-padded; responses stop at EOS (PPO needs pad != EOS, checked upstream).
"""

from __future__ import annotations

import logging
import os
import sys

from datasets import Dataset

from ..artifacts import InputError
from ..formats import read_rendered
from ..lora import base_of, check_reference
from ..models import (check_checkpoint_dir, check_same_vocab, load_policy, load_sequence_classifier, load_tokenizer,
                      load_trainable_policy, reward_members)
from ..scoring import load_reward_model
from .common import (check_finite_loss, drop_trainer_dir, fit, gathered_state_dict, log_history_metrics, quiet, require,
                     save_policy, trainer_kwargs)
from .trl_args import trl_kwargs

log = logging.getLogger(__name__)


def resolve_inputs(spec: dict) -> dict:
    inputs = dict(spec["inputs"])
    inputs["ref"] = inputs.get("ref") or inputs["policy"]
    inputs["value_model"] = inputs.get("value_model") or str(reward_members(inputs["reward_model"])[0])
    return inputs


def check_prompt_lengths(prompts: list[str], tokenizer, max_prompt_tokens: int, path, origin: list[str] | None = None,
                         ) -> None:
    """`origin[i]` says where row i came from (e.g. the user's file and its row), when not `path` itself."""
    for i, p in enumerate(prompts):
        n = len(tokenizer(p, add_special_tokens=False)["input_ids"])
        if n > max_prompt_tokens:
            where = f"; the row is {origin[i]}" if origin else ""
            raise InputError(
                f"{path}: row {i}: prompt is {n} tokens, longer than the {max_prompt_tokens} allowed "
                f"(max_position_embeddings - response_length){where}"
            )


def read_prompts(path, tokenizer, max_prompt_tokens: int) -> list[str]:
    prompts = read_rendered(path, "prompts", tokenizer)["prompt"].tolist()
    check_prompt_lengths(prompts, tokenizer, max_prompt_tokens, path)
    return prompts


def fill_batch(prompts: list[str], batch: int) -> list[str]:
    """TRL's PPO dataloader drops a partial last batch and then spins forever on an empty one, so a
    prompt set smaller than one batch is cycled up to a whole batch (each prompt sampled more often)."""
    if len(prompts) >= batch:
        return prompts
    log.warning("ppo: %d prompt(s) is fewer than one batch (%d = per_device_train_batch_size x "
                "gradient_accumulation_steps x processes); the prompts are cycled to fill it", len(prompts), batch)
    return [prompts[i % len(prompts)] for i in range(batch)]


def validate(spec: dict) -> None:
    require(spec, "policy", "reward_model", "data")
    inputs = resolve_inputs(spec)
    trc = spec.get("trust_remote_code", False)
    for key in ("policy", "ref", "reward_model", "value_model"):
        check_checkpoint_dir(inputs[key], key)
    check_reference(spec)
    tok = load_tokenizer(inputs["policy"], trc)
    if tok.pad_token_id == tok.eos_token_id:
        raise InputError(
            f"tokenizer in {inputs['policy']}: pad token equals EOS, and PPO truncates at EOS and pads after it; "
            "give it a distinct pad token (tokenizer.pad_token = an unused special token such as '<|endoftext|>', "
            "then save_pretrained), or run the loop (model=local model.path=...), which does this for you")
    check_same_vocab(inputs["policy"], inputs["reward_model"], trc)
    check_same_vocab(inputs["policy"], inputs["value_model"], trc)
    read_prompts(inputs["data"], tok, _max_prompt_tokens(inputs["policy"], spec["cfg"]))


def max_prompt_tokens(policy_dir, new_tokens: int) -> int:
    """The longest prompt that leaves room for `new_tokens` in the model's context."""
    from transformers import AutoConfig

    mpe = getattr(AutoConfig.from_pretrained(str(base_of(policy_dir))), "max_position_embeddings", 2048)
    return mpe - new_tokens


def _max_prompt_tokens(policy_dir, cfg) -> int:
    return max_prompt_tokens(policy_dir, cfg["response_length"])


def train(spec: dict) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from .trl_compat import ppo_classes  # TRL <= 1.12 only: else an ImportError naming the TRL to install

    PPOConfig, PPOTrainer = ppo_classes()

    cfg, trc = spec["cfg"], spec.get("trust_remote_code", False)
    inputs = resolve_inputs(spec)
    tokenizer = load_tokenizer(inputs["policy"], trc)
    tokenizer.padding_side = "left"
    prompts = read_prompts(inputs["data"], tokenizer, _max_prompt_tokens(inputs["policy"], cfg))
    n_procs = int(os.environ.get("WORLD_SIZE", "1"))
    prompts = fill_batch(prompts, cfg["per_device_train_batch_size"] * cfg["gradient_accumulation_steps"] * n_procs)
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]})

    policy = load_trainable_policy(inputs["policy"], spec.get("lora"), trc)
    # With LoRA the reference is the base with the adapter disabled (TRL's null_ref_context): no second copy.
    ref = None if spec.get("lora") else load_policy(inputs["ref"], trc)
    value = load_sequence_classifier(inputs["value_model"], trc)
    reward = load_reward_model(inputs["reward_model"], spec.get("ensemble_reduce", "mean"),
                               spec.get("ensemble_lambda", 1.0), trc)
    for m in (value, reward):
        m.config.pad_token_id = tokenizer.pad_token_id

    # In the loop, kl_coef is loop.kl.beta through the KL controller (spec["beta"]); alone, stage.ppo.kl_coef.
    # world_size: PPOConfig declares it as a field (None until PPOTrainer sets it), which hides TrainingArguments'
    # property of that name, and transformers' DeepSpeed set-up multiplies it while the config is built
    # (TypeError: NoneType * int under launcher=zero2/zero3); the launcher's WORLD_SIZE is the value TRL sets.
    args = PPOConfig(**trl_kwargs("ppo", cfg, **trainer_kwargs(spec, cfg), kl_coef=spec.get("beta", cfg["kl_coef"]),
                                  stop_token="eos", num_sample_generations=0, world_size=n_procs))
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref,
                         reward_model=reward, value_model=value, train_dataset=dataset)
    expose_policy(trainer)
    quiet(trainer, spec)
    fit(trainer, collecting_modules=[sys.modules[PPOTrainer.__module__]])  # its update calls gc.collect() twice
    metrics = log_history_metrics(trainer)
    metrics["kl_coef"] = args.kl_coef
    metrics["n_prompts"] = len(prompts)
    for key in ("loss/policy_avg", "objective/kl", "objective/scores"):
        if key in metrics:
            check_finite_loss({"final_loss": metrics[key]}, f"ppo ({key})")
    if (n_procs > 1 or spec.get("deepspeed")) and not spec.get("lora"):
        save_distributed_policy(trainer, tokenizer, spec)
    else:
        save_policy(trainer, tokenizer, spec)
    drop_trainer_dir(spec)
    return metrics


def expose_policy(trainer) -> None:
    """TRL 1.12's PPOTrainer computes a LoRA policy's reference log-probs through `self.model.policy` (the
    adapter disabled), `self.model` being the prepared model. A DeepSpeed engine forwards that lookup to the
    wrapper inside; DistributedDataParallel does not (AttributeError: 'DistributedDataParallel' object has no
    attribute 'policy', PPO with LoRA under launcher=multi_process). The DDP wrapper gets that attribute, set
    past nn.Module's registration so it is no submodule (parameters and state dict are unchanged); the
    reference forward runs outside DDP, as it does under DeepSpeed, with no gradient."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(trainer.model, DistributedDataParallel) and not hasattr(trainer.model, "policy"):
        object.__setattr__(trainer.model, "policy", trainer.model.module.policy)


def save_distributed_policy(trainer, tokenizer, spec) -> None:
    """The policy alone, from a PPO trainer under DDP or DeepSpeed. TRL 1.12's PPOTrainer.save_model looks
    for `.policy` on the wrapped model (DistributedDataParallel / DeepSpeedEngine have none, so it saves
    policy and value model together and safetensors refuses their shared tensors) and hands the policy to
    transformers as the DeepSpeed engine (AttributeError on `config.get`). Here the state dict is gathered
    by accelerate (the full weights under ZeRO-3, `stage3_gather_16bit_weights_on_model_save`), the policy's
    keys kept, and the main process writes them as safetensors. (A LoRA policy's adapter is saved the same way
    by save_policy.)"""
    acc, out_dir = trainer.accelerator, spec["tmp_dir"]
    own = gathered_state_dict(trainer, "policy.")
    if acc.is_main_process:
        acc.unwrap_model(trainer.model).policy.save_pretrained(str(out_dir), state_dict=own, safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))
    acc.wait_for_everyone()
