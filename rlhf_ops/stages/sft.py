"""SFT stage: supervised fine-tuning on prompt/completion demonstrations with TRL's SFTTrainer.

Run on its own:
    python -m rlhf_ops job=sft io.policy=PATH/init io.data=demos.parquet io.output=PATH/sft
Loss is on the completion only (TRL's default for prompt-completion data); EOS is appended. With LoRA
(model.lora.r > 0) `sft` writes its adapter merged into the model (the base of every later adapter), and
`rejection_sampling` (a policy update) writes the adapter.
"""

from __future__ import annotations

from ..formats import read_rendered
from ..models import check_checkpoint_dir, load_tokenizer, load_trainable_policy
from .common import fit, quiet, check_finite_loss, drop_trainer_dir, log_history_metrics, require, save_policy, trainer_kwargs
from .sft_data import build_trainer
from .trl_args import trl_kwargs

COLUMNS = ("prompt", "completion")


def validate(spec: dict) -> None:
    require(spec, "policy", "data")
    check_checkpoint_dir(spec["inputs"]["policy"], "policy")
    tok = load_tokenizer(spec["inputs"]["policy"], spec.get("trust_remote_code", False))
    read_rendered(spec["inputs"]["data"], "sft", tok)


def train(spec: dict) -> dict:
    from trl import SFTConfig, SFTTrainer

    cfg, inputs = spec["cfg"], spec["inputs"]
    trc = spec.get("trust_remote_code", False)
    tokenizer = load_tokenizer(inputs["policy"], trc)
    model = load_trainable_policy(inputs["policy"], spec.get("lora"), trc)
    df = read_rendered(inputs["data"], "sft", tokenizer)
    trainer = build_trainer(SFTTrainer, SFTConfig, trl_kwargs(spec["stage"], cfg, **trainer_kwargs(spec, cfg)), model,
                            tokenizer, df[list(COLUMNS)], stage=spec["stage"])
    quiet(trainer, spec)
    out = fit(trainer)
    metrics = log_history_metrics(trainer)
    metrics["train_loss"] = float(out.training_loss)
    metrics["n_examples"] = len(df)
    check_finite_loss(metrics, spec["stage"])
    save_policy(trainer, tokenizer, spec)
    drop_trainer_dir(spec)
    return metrics
