"""DPO stage: TRL's DPOTrainer on prompt/chosen/rejected pairs, the reference read from a path.

Run on its own:
    python -m rlhf_ops job=dpo io.policy=PATH/sft io.data=pairs.parquet io.output=PATH/dpo stage.dpo.beta=0.1

`io.ref` defaults to the policy checkpoint. The reference is always loaded explicitly: with
`ref_model=None` TRL would reload it from the model's own path, which in an iterative loop is not
the reference we mean.
"""

from __future__ import annotations

from datasets import Dataset

from ..lora import check_reference, drop_reference_adapter
from ..models import check_checkpoint_dir, load_policy, load_tokenizer, load_trainable_policy
from .common import fit, quiet, check_finite_loss, drop_trainer_dir, log_history_metrics, require, save_policy, trainer_kwargs
from .trl_args import trl_kwargs
from .trl_compat import check_rows_kept
from .reward import REQUIRED, read_pairs


def validate(spec: dict) -> None:
    require(spec, "policy", "data")
    check_checkpoint_dir(spec["inputs"]["policy"], "policy")
    check_checkpoint_dir(spec["inputs"].get("ref") or spec["inputs"]["policy"], "reference")
    check_reference(spec)
    tok = load_tokenizer(spec["inputs"]["policy"], spec.get("trust_remote_code", False))
    read_pairs(spec["inputs"]["data"], tok)


def train(spec: dict) -> dict:
    from trl import DPOConfig, DPOTrainer

    cfg, inputs, trc = spec["cfg"], spec["inputs"], spec.get("trust_remote_code", False)
    tokenizer = load_tokenizer(inputs["policy"], trc)
    model = load_trainable_policy(inputs["policy"], spec.get("lora"), trc)
    # With LoRA the reference is the base with the adapter disabled (TRL's way with a peft model): no copy.
    ref = None if spec.get("lora") else load_policy(inputs.get("ref") or inputs["policy"], trc)
    df = read_pairs(inputs["data"], tokenizer)
    dataset = Dataset.from_pandas(df[list(REQUIRED)].reset_index(drop=True))
    # In the loop, beta is loop.kl.beta through the KL controller (spec["beta"]); alone, stage.dpo.beta.
    args = DPOConfig(**trl_kwargs("dpo", cfg, **trainer_kwargs(spec, cfg), beta=spec.get("beta", cfg["beta"])))
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=dataset, processing_class=tokenizer)
    drop_reference_adapter(trainer.model)
    check_rows_kept(trainer, len(dataset), "dpo")
    quiet(trainer, spec)
    out = fit(trainer)
    metrics = log_history_metrics(trainer)
    metrics["train_loss"] = float(out.training_loss)
    metrics["beta"] = args.beta
    metrics["n_pairs"] = len(dataset)
    check_finite_loss(metrics, "dpo")
    save_policy(trainer, tokenizer, spec)
    drop_trainer_dir(spec)
    return metrics
