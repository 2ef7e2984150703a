"""Shared bits of the plain-TRL scripts (scripts/raw_trl/*.py): what a user writes around a TRL
trainer when they do it by hand. Imports only torch / transformers / trl / datasets / pandas / numpy,
never rlhf_ops: these are the baseline that `scripts/bench_vs_trl.py` times rlhf_ops against.

The TRL config fields are the ones `python -m rlhf_ops job=...` sets with `stage=tiny`
(conf/stage/tiny.yaml + rlhf_ops/stages/common.py:trainer_kwargs); everything else is TRL's default.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    # TRL 1.12's default for every trainer config is gradient_checkpointing=True; rlhf_ops' stage=tiny
    # sets it off (conf/stage/tiny.yaml). `trl-default` leaves the field unset.
    p.add_argument("--gradient-checkpointing", choices=("trl-default", "off", "on"), default="off")
    # A few steps only (the fast variant / CI): max_steps for sft/reward/dpo.
    p.add_argument("--max-steps", type=int, default=-1)
    return p


def base_kwargs(a, learning_rate: float) -> dict:
    """What rlhf_ops' trainer_kwargs sets on every TRL config (no DeepSpeed, no mixed precision)."""
    kw = dict(output_dir=str(Path(a.output) / "_trainer"), seed=a.seed, data_seed=a.seed, report_to=[],
              save_strategy="no", use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False,
              dataloader_num_workers=0, learning_rate=learning_rate)
    if a.gradient_checkpointing != "trl-default":
        kw["gradient_checkpointing"] = a.gradient_checkpointing == "on"
    return kw


def save(trainer, tokenizer, out: str) -> None:
    trainer.save_model(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(Path(out) / "_trainer", ignore_errors=True)
