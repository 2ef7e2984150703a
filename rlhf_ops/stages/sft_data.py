"""TRL's SFT dataset preparation, done batched.

SFTTrainer prepares a prompt/completion dataset with five `Dataset.map` passes of one example each
(append EOS, tokenize the prompt and prompt+completion, build labels, truncate, drop rows left with no
label): about 3 s for the testbed's 3600 demonstrations on this 2-core machine, 8% of the SFT stage.
The same arithmetic on whole columns, with the fast tokenizer's batch call, takes about 0.7 s. The
result is handed to the trainer as prepared (`skip_prepare_dataset`), and checked against TRL's own
preparation of the first rows before it is used: a TRL whose preparation differs (another version,
an option this does not cover) gets its own preparation, so the trained weights never depend on
which path ran (`tests/test_bench_vs_trl.py` checks them against a plain TRL script).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

N_CHECK = 32  # rows prepared both ways and compared before the fast path is used


def supported(args, tokenizer, df) -> bool:
    """Where this preparation is TRL's: plain-text prompt/completion rows, a tokenizer (not a
    multimodal processor), no packing, no assistant-only loss, and an EOS token."""
    from transformers import PreTrainedTokenizerBase

    return (isinstance(tokenizer, PreTrainedTokenizerBase) and tokenizer.eos_token is not None
            and not args.packing and not args.assistant_only_loss and not args.padding_free
            and args.completion_only_loss in (None, True, False)
            and args.truncation_mode in ("keep_start", "keep_end")
            and not (args.dataset_kwargs or {}).get("skip_prepare_dataset", False)
            and list(df.columns) == ["prompt", "completion"] and len(df) > 0
            and all(isinstance(v, str) for col in ("prompt", "completion") for v in df[col]))


def prepare(df, tokenizer, args) -> dict[str, list]:
    """{"input_ids", "labels"} exactly as SFTTrainer._prepare_dataset builds them for `df`."""
    eos = tokenizer.eos_token
    prompts = list(df["prompt"])
    completions = [c if c.endswith(eos) else c + eos for c in df["completion"]]
    prompt_ids = tokenizer(prompts)["input_ids"]
    full_ids = tokenizer([p + c for p, c in zip(prompts, completions)])["input_ids"]
    mismatched = sum(f[: len(p)] != p for p, f in zip(prompt_ids, full_ids))
    if mismatched:
        log.warning("SFT data: %d of %d rows tokenize the prompt differently alone than with its completion",
                    mismatched, len(prompts))
    mask_prompt = args.completion_only_loss in (None, True)
    labels = [[-100] * len(p) + f[len(p):] if mask_prompt else list(f) for p, f in zip(prompt_ids, full_ids)]
    if args.max_length is not None:
        sl = slice(None, args.max_length) if args.truncation_mode == "keep_start" else slice(-args.max_length, None)
        full_ids = [f[sl] for f in full_ids]
        labels = [lab[sl] for lab in labels]
        keep = [i for i, lab in enumerate(labels) if any(v != -100 for v in lab)]
        if len(keep) < len(labels):
            full_ids = [full_ids[i] for i in keep]
            labels = [labels[i] for i in keep]
    return {"input_ids": full_ids, "labels": labels}


def build_trainer(trainer_cls, config_cls, config_kwargs: dict, model, tokenizer, df, stage: str = "sft",
                  **trainer_kw):
    """An SFTTrainer on `df` (prompt/completion strings), its dataset prepared batched where that is
    TRL's own preparation (checked on the first rows), else by TRL."""
    from datasets import Dataset

    plain = config_cls(**config_kwargs)
    if not supported(plain, tokenizer, df):
        return trainer_cls(model=model, args=plain, train_dataset=Dataset.from_pandas(df.reset_index(drop=True)),
                           processing_class=tokenizer, **trainer_kw)
    dk = dict(config_kwargs.get("dataset_kwargs") or {}, skip_prepare_dataset=True)
    args = config_cls(**dict(config_kwargs, dataset_kwargs=dk))
    prepared = prepare(df, tokenizer, plain)
    if not prepared["input_ids"]:
        raise ValueError(f"stage.{stage}.max_length={plain.max_length}: the prompt alone fills it in every one of the "
                         f"{len(df)} SFT rows (truncation_mode={plain.truncation_mode}), so no completion token is "
                         "left to train on; raise max_length or shorten the prompts")
    if len(prepared["input_ids"]) < len(df):
        log.warning("SFT data: %d of %d rows dropped, their prompt alone fills stage.%s.max_length=%s",
                    len(df) - len(prepared["input_ids"]), len(df), stage, plain.max_length)
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_dict(prepared),
                          processing_class=tokenizer, **trainer_kw)
    if _matches_trl(trainer, plain, tokenizer, df):
        return trainer
    log.warning("SFT data: TRL's own preparation differs from the batched one on the first rows; using TRL's")
    return trainer_cls(model=model, args=plain, train_dataset=Dataset.from_pandas(df.reset_index(drop=True)),
                       processing_class=tokenizer, **trainer_kw)


def _matches_trl(trainer, plain_args, tokenizer, df) -> bool:
    from datasets import Dataset
    import datasets

    head = df.head(N_CHECK).reset_index(drop=True)
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    # The trainer decided completion-only loss from the dataset it was given (prepared: not prompt/completion);
    # for rows that are, TRL decides it as below.
    saved = trainer.completion_only_loss
    trainer.completion_only_loss = plain_args.completion_only_loss in (None, True)
    try:
        theirs = trainer._prepare_dataset(Dataset.from_pandas(head), tokenizer, plain_args, False, None, "check")
        ours = prepare(head, tokenizer, plain_args)
        rows = theirs[:]  # a dict of plain lists
        return rows["input_ids"] == ours["input_ids"] and rows["labels"] == ours["labels"]
    except Exception as e:  # noqa: BLE001 - a TRL without this private method prepares its own way
        log.warning("SFT data: could not compare with TRL's preparation (%s: %s)", type(e).__name__, e)
        return False
    finally:
        trainer.completion_only_loss = saved
        if enabled:
            datasets.enable_progress_bars()
