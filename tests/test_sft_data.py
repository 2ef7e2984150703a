"""The SFT stage's batched dataset preparation is TRL's own, row for row, or it is not used."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from user_data import make_user_files, make_user_model, user_texts

pytest.importorskip("trl")
pytestmark = pytest.mark.trl_latest  # TRL's preparation is what changes between releases


@pytest.fixture(scope="module")
def user_tokenizer_and_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("sftdata")
    path = make_user_model(d, user_texts(make_user_files(d)))
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)


def rows(tok, n=60):
    """What read_rendered hands the stage for a user's chat data: the chat template applied to the prompt,
    completions of every length (one that already ends with EOS, one empty, some longer than max_length)."""
    out = []
    for i in range(n):
        prompt = tok.apply_chat_template([{"role": "user", "content": f"Question {i}: tell me about item {i}." + " Please." * (i % 4)}],
                                         tokenize=False, add_generation_prompt=True)
        completion = {0: "Done." + tok.eos_token, 1: "", 2: " ".join(["long"] * 80)}.get(i % 7, f"Answer {i} " * (i % 5 + 1))
        out.append({"prompt": prompt, "completion": completion})
    return pd.DataFrame(out)


def trl_prepared(tok, model, df, **kw):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir="unused", report_to=[], use_cpu=True, bf16=False, **kw)
    t = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_pandas(df), processing_class=tok)
    return t.train_dataset[:]


def prompt_lengths(tok, df):
    return sorted(len(tok(p)["input_ids"]) for p in df.prompt)


@pytest.mark.parametrize("case", ["start", "end", "untruncated", "all_tokens", "drops"])
def test_batched_preparation_is_trls(user_tokenizer_and_model, case, tmp_path):
    from trl import SFTConfig, SFTTrainer

    from rlhf_ops.stages.sft_data import build_trainer

    tok, model = user_tokenizer_and_model
    df = rows(tok)
    lens = prompt_lengths(tok, df)
    kw = {"start": dict(max_length=lens[-1] + 6), "end": dict(max_length=lens[0] + 2, truncation_mode="keep_end"),
          "untruncated": dict(max_length=None), "all_tokens": dict(max_length=lens[0], completion_only_loss=False),
          # rows whose prompt alone fills max_length have no label left: TRL drops them, and so must this
          "drops": dict(max_length=lens[len(lens) // 2])}[case]
    theirs = trl_prepared(tok, model, df, **kw)
    trainer = build_trainer(SFTTrainer, SFTConfig, dict(output_dir=str(tmp_path), report_to=[], use_cpu=True,
                                                        bf16=False, **kw), model, tok, df)
    assert trainer.args.dataset_kwargs == {"skip_prepare_dataset": True}  # the batched path ran
    ours = trainer.train_dataset[:]
    assert ours["input_ids"] == theirs["input_ids"]
    assert ours["labels"] == theirs["labels"]
    if case == "drops":
        assert 0 < len(ours["input_ids"]) < len(df)


def test_no_row_left_is_one_line_naming_max_length(user_tokenizer_and_model, tmp_path):
    from trl import SFTConfig, SFTTrainer

    from rlhf_ops.stages.sft_data import build_trainer

    tok, model = user_tokenizer_and_model
    df = rows(tok)
    with pytest.raises(ValueError, match=r"stage\.sft\.max_length=.*prompt"):
        build_trainer(SFTTrainer, SFTConfig, dict(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False,
                                                  max_length=prompt_lengths(tok, df)[0]), model, tok, df)


def test_falls_back_to_trl_when_the_first_rows_differ(user_tokenizer_and_model, tmp_path, monkeypatch, caplog):
    """A preparation that is not TRL's (simulated: one that drops each row's last token) is caught on the
    first rows and replaced by TRL's own, with one warning."""
    from trl import SFTConfig, SFTTrainer

    from rlhf_ops.stages import sft_data

    tok, model = user_tokenizer_and_model
    df = rows(tok)
    real = sft_data.prepare

    def broken(frame, tokenizer, args):
        return {k: [v[:-1] for v in vals] for k, vals in real(frame, tokenizer, args).items()}

    monkeypatch.setattr(sft_data, "prepare", broken)
    with caplog.at_level(logging.WARNING, logger="rlhf_ops.stages.sft_data"):
        kw = dict(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False,
                  max_length=prompt_lengths(tok, df)[-1] + 6)
        trainer = sft_data.build_trainer(SFTTrainer, SFTConfig, kw, model, tok, df)
    assert trainer.args.dataset_kwargs in (None, {})
    assert "using TRL's" in caplog.text
    assert trainer.train_dataset[:]["input_ids"] == trl_prepared(tok, model, df, max_length=kw["max_length"])["input_ids"]


def test_unsupported_inputs_go_to_trl(user_tokenizer_and_model, tmp_path):
    """Packing (not reproduced here) is TRL's to prepare."""
    from trl import SFTConfig, SFTTrainer

    from rlhf_ops.stages.sft_data import build_trainer

    tok, model = user_tokenizer_and_model
    trainer = build_trainer(SFTTrainer, SFTConfig, dict(output_dir=str(tmp_path), report_to=[], use_cpu=True,
                                                        bf16=False, max_length=32, packing=True), model, tok, rows(tok))
    assert not (trainer.args.dataset_kwargs or {}).get("skip_prepare_dataset")
