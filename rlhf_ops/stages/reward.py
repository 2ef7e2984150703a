"""Reward stage: a Bradley-Terry reward model (or an ensemble of K) with TRL's RewardTrainer.

Run on its own:
    python -m rlhf_ops job=reward io.reward_model=PATH/sft io.data=pairs.parquet io.output=PATH/rm \
        stage.reward.ensemble_size=3

`io.reward_model` is where training starts: a causal LM (its backbone gets a fresh score head,
the usual start from the SFT policy) or an earlier reward model, so an online loop continues
from the previous RM instead of resetting it. With ensemble_size=K each member trains with its
own seed on a bootstrap resample of the pairs (Coste et al. 2023); members are written to
`member_k/` with an `ensemble.json` listing them. A held-out slice measures pairwise accuracy.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from datasets import Dataset

from ..artifacts import InputError
from ..formats import read_rendered
from ..lora import base_of
from ..models import ENSEMBLE_FILE, check_checkpoint_dir, load_tokenizer, load_trainable_classifier, reward_members
from ..scoring import member_scores
from .common import (
    fit, quiet,
    check_finite_loss, drop_trainer_dir, is_main_process, log_history_metrics, require, save_trained,
    save_trained_adapter, trainer_kwargs,
)
from .trl_args import trl_kwargs
from .trl_compat import check_rows_kept

REQUIRED = ("prompt", "chosen", "rejected")


def read_pairs(path, tokenizer) -> pd.DataFrame:
    """prompt/chosen/rejected text (conversational rows rendered with the chat template)."""
    return read_rendered(path, "pairs", tokenizer)


def validate(spec: dict) -> None:
    require(spec, "reward_model", "data")
    check_checkpoint_dir(spec["inputs"]["reward_model"], "reward model init")
    tok = load_tokenizer(spec["inputs"]["reward_model"], spec.get("trust_remote_code", False))
    df = read_pairs(spec["inputs"]["data"], tok)
    if spec.get("heldout") is None and len(df) < 4:
        raise ValueError(f"{spec['inputs']['data']}: {len(df)} pairs is too few to train a reward model")
    check_pairs_fit(df, tok, spec["cfg"].get("max_length"), str(spec["inputs"]["data"]))


def pair_lengths(df: pd.DataFrame, tokenizer) -> np.ndarray:
    """Per pair, the longer side's tokens as TRL's RewardTrainer counts them: prompt + response + EOS."""
    eos = tokenizer.eos_token or ""

    def n(col):
        texts = [p + (r if r.endswith(eos) else r + eos) for p, r in zip(df["prompt"], df[col])]
        return np.array([len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]])

    return np.maximum(n("chosen"), n("rejected")) if len(df) else np.zeros(0, dtype=int)


def check_pairs_fit(df: pd.DataFrame, tokenizer, max_length, where: str) -> None:
    """Refuse, before a model is loaded, pairs that are all longer than stage.reward.max_length: TRL's
    RewardTrainer drops each such pair (stages.trl_compat.check_rows_kept counts the drops of a partial one)."""
    if not max_length or not len(df):
        return
    lengths = pair_lengths(df, tokenizer)
    if (lengths > int(max_length)).all():
        raise InputError(f"{where}: all {len(df)} pairs are longer than stage.reward.max_length={max_length} tokens "
                         f"(prompt + response + EOS; the shortest is {int(lengths.min())}); TRL's RewardTrainer drops "
                         "such pairs and none would be left: raise stage.reward.max_length (within the model's context)")


def split_heldout(df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    if fraction <= 0 or len(df) < 10:
        return df, df.iloc[:0]
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(df))
    n_eval = max(1, int(round(len(df) * fraction)))
    return df.iloc[idx[n_eval:]].reset_index(drop=True), df.iloc[idx[:n_eval]].reset_index(drop=True)


def _margins(model, tokenizer, pairs: pd.DataFrame) -> np.ndarray:
    prompts = list(pairs["prompt"])
    return (member_scores(model, tokenizer, prompts, list(pairs["chosen"]))
            - member_scores(model, tokenizer, prompts, list(pairs["rejected"])))[:, 0]


def train(spec: dict) -> dict:
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    cfg, inputs, seed = spec["cfg"], spec["inputs"], spec["seed"]
    trc = spec.get("trust_remote_code", False)
    tokenizer = load_tokenizer(inputs["reward_model"], trc)
    df = read_pairs(inputs["data"], tokenizer)
    if spec.get("heldout"):
        train_df, eval_df = df, read_pairs(spec["heldout"], tokenizer)
    else:
        train_df, eval_df = split_heldout(df, cfg.get("eval_fraction", 0.1), seed)
    k = int(cfg.get("ensemble_size", 1))
    inits = reward_members(inputs["reward_model"])
    metrics: dict = {"n_train_pairs": len(train_df), "n_heldout_pairs": len(eval_df), "ensemble_size": k}
    member_names, accs, losses, margins, init_margins = [], [], [], [], []
    # spec["score_init"]: also score the held-out pairs with each member's init before it trains. When
    # the init is an earlier RM with one member per member here, that is the old RM's verdict per pair,
    # so the loop's acceptance check (old vs new RM) needs no second load of either model.
    score_init = bool(spec.get("score_init")) and len(eval_df) > 0 and len(inits) == k
    for m in range(k):
        member_seed = seed + 1000 * m
        rows = train_df
        if k > 1 and cfg.get("bootstrap", True):
            rows = train_df.iloc[np.random.default_rng(member_seed).integers(0, len(train_df), len(train_df))]
        ds = Dataset.from_pandas(rows[list(REQUIRED)].reset_index(drop=True))
        set_seed(member_seed)  # the score head is a fresh random init when the init is a causal LM
        init = inits[m % len(inits)]
        model = load_trainable_classifier(init, spec.get("lora"), trc)
        model.config.pad_token_id = tokenizer.pad_token_id
        if score_init:  # the model we continue from, before training: the loop's old RM on the same pairs
            init_margins.append(_margins(model, tokenizer, eval_df))
        args = RewardConfig(**trl_kwargs("reward", cfg, **trainer_kwargs({**spec, "seed": member_seed}, cfg)))
        trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
        check_rows_kept(trainer, len(ds), "reward")
        quiet(trainer, spec)
        out = fit(trainer)
        mm = log_history_metrics(trainer)
        mm["train_loss"] = float(out.training_loss)
        check_finite_loss(mm, f"reward member {m}")
        name = f"member_{m}" if k > 1 else "."
        if spec.get("lora"):  # the adapter and the score head, over the member's base (rlhf_ops.lora)
            save_trained_adapter(trainer, tokenizer, f"{spec['tmp_dir']}/{name}", base_of(init))
        else:
            save_trained(trainer, tokenizer, f"{spec['tmp_dir']}/{name}")
        if len(eval_df):
            margin = _margins(model, tokenizer, eval_df)
            margins.append(margin)
            accs.append(float(np.mean(margin > 0)))
        member_names.append(name)
        losses.append(mm.get("final_loss", mm["train_loss"]))
        metrics.update({f"member_{m}/{key}": v for key, v in mm.items()})
    if k > 1 and is_main_process():
        with open(f"{spec['tmp_dir']}/{ENSEMBLE_FILE}", "w") as f:
            json.dump({"members": member_names, "seeds": [seed + 1000 * m for m in range(k)]}, f)
    # The ensemble's accuracy is that of its mean score, which is what it hands to PPO by default.
    metrics["heldout_accuracy"] = float(np.mean(np.mean(margins, 0) > 0)) if margins else float("nan")
    # Per held-out pair (in the held-out file's order): does the (mean) reward rank chosen above rejected?
    metrics["heldout_correct"] = [bool(x) for x in np.mean(margins, 0) > 0] if margins else []
    if score_init:
        metrics["init_heldout_correct"] = [bool(x) for x in np.mean(init_margins, 0) > 0]
    metrics["member_accuracies"] = accs
    metrics["final_loss"] = float(np.mean(losses))
    drop_trainer_dir(spec)
    return metrics
