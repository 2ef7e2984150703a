"""Tiny models built from config, and loading of any local HF checkpoint.

Nothing is fetched from a hub: the tokenizer is a byte-level BPE trained locally with
`tokenizers` on the task's text, and the policy / reward / value models are tiny Llamas saved with
`save_pretrained` (safetensors). Every stage takes checkpoint paths, so a real local checkpoint
(any causal-LM directory) is used the same way: `model.path=/path/to/checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from .artifacts import InputError
from .checkpoints import ENSEMBLE_FILE, check_checkpoint_dir  # noqa: F401  (re-exported)
from .lora import CAUSAL_LM, SEQ_CLS, is_adapter, merged, trainable

SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text round-trips), with distinct pad and EOS tokens: PPO truncates
    responses at EOS and pads after it, so the two must differ."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.padding_side = "left"  # generation wants left padding; trainers set their own side
    return fast


def _llama_config(cfg, tokenizer, *, hidden: int, layers: int, num_labels: int | None = None) -> LlamaConfig:
    heads = cfg.num_heads
    kv = min(cfg.num_kv_heads, heads)
    c = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=cfg.intermediate_size * hidden // cfg.hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    if num_labels is not None:
        c.num_labels = num_labels
    return c


def build_tiny_policy(cfg, tokenizer, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(cfg, tokenizer, hidden=cfg.hidden_size, layers=cfg.num_layers))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_tiny_reward(cfg, tokenizer, seed: int) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    hidden = cfg.reward_hidden_size or cfg.hidden_size
    layers = cfg.reward_num_layers or cfg.num_layers
    return LlamaForSequenceClassification(_llama_config(cfg, tokenizer, hidden=hidden, layers=layers, num_labels=1))


def save_model(model, tokenizer, path: str | Path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    path = Path(path)
    if (path / ENSEMBLE_FILE).is_file():
        path = path / json.loads((path / ENSEMBLE_FILE).read_text())["members"][0]
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        raise InputError(
            f"tokenizer in {path} has no pad token; set one (e.g. tokenizer.pad_token = '<pad>', distinct from EOS) "
            "and save it again"
        )
    return tok


def load_policy(path: str | Path, trust_remote_code: bool = False):
    """A causal LM for inference; a LoRA adapter directory is loaded onto its base and merged."""
    path = check_checkpoint_dir(path, "policy")
    if is_adapter(path):
        return merged(path, lambda base: load_policy(base, trust_remote_code))
    return AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=trust_remote_code, use_safetensors=True)


def load_sequence_classifier(path: str | Path, trust_remote_code: bool = False, num_labels: int = 1):
    """A reward/value model: an existing classifier, or a causal LM's backbone with a fresh score head
    (the usual way to start a reward model from the SFT policy); a LoRA reward model (its adapter and
    score head) is loaded onto its base and merged."""
    path = check_checkpoint_dir(path, "reward/value model")
    if is_adapter(path):
        return merged(path, lambda base: load_sequence_classifier(base, trust_remote_code, num_labels))
    return AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=num_labels, trust_remote_code=trust_remote_code, use_safetensors=True
    )


def load_trainable_policy(path: str | Path, lora: dict | None, trust_remote_code: bool = False):
    """The policy a stage trains: the full model, or with LoRA (`lora`: model.lora) a peft model, the
    adapter in `path` continued or a fresh one on the full model in `path`."""
    if not lora:
        return load_policy(path, trust_remote_code)
    return trainable(path, lora, CAUSAL_LM, lambda p: load_policy(p, trust_remote_code))


def load_trainable_classifier(path: str | Path, lora: dict | None, trust_remote_code: bool = False):
    """The reward model a stage trains (see load_trainable_policy); the score head trains in full."""
    if not lora:
        return load_sequence_classifier(path, trust_remote_code)
    return trainable(path, lora, SEQ_CLS, lambda p: load_sequence_classifier(p, trust_remote_code))


def reward_members(path: str | Path) -> list[Path]:
    """Member checkpoint directories of a reward model dir (one, or K for an ensemble)."""
    path = Path(path)
    if (path / ENSEMBLE_FILE).is_file():
        return [path / m for m in json.loads((path / ENSEMBLE_FILE).read_text())["members"]]
    return [path]


def check_same_vocab(policy_dir: str | Path, reward_dir: str | Path, trust_remote_code: bool = False) -> None:
    """PPO scores the policy's token ids with the reward model, so both must share one vocabulary."""
    pt = load_tokenizer(policy_dir, trust_remote_code)
    for member in reward_members(reward_dir):
        rt = load_tokenizer(member, trust_remote_code)
        if pt.get_vocab() != rt.get_vocab():
            raise InputError(
                f"io.reward_model: {member} uses a different vocabulary than the policy {policy_dir} "
                f"({len(rt)} vs {len(pt)} tokens); PPO scores the policy's token ids, so its reward and value models "
                "must share the policy's tokenizer (RLOO and GRPO score text and accept it)"
            )


# Special tokens that commonly exist unused and can pad, in order of preference.
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>", "<|endoftext|>", "<unk>")


def needs_distinct_pad(tokenizer) -> bool:
    return tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id


def ensure_distinct_pad(tokenizer) -> tuple[str, bool]:
    """Give a tokenizer whose pad token is missing or equal to EOS a distinct one, in place.

    PPO truncates a response at its first EOS and pads after it, and the SFT/DPO collators mask pad
    positions, so pad == EOS would hide the EOS the model must learn to emit. An existing special
    token that is neither EOS nor BOS is used where there is one (SmolLM2 has `<|endoftext|>`);
    else `<pad>` is added. Returns (the pad token, whether the vocabulary grew)."""
    vocab = tokenizer.get_vocab()
    taken = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    for tok in (*_PAD_CANDIDATES, tokenizer.unk_token):
        if tok and tok in vocab and vocab[tok] not in taken:
            tokenizer.pad_token = tok
            return tok, False
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return "<pad>", True


def copy_with_distinct_pad(src: str | Path, dst: str | Path, trust_remote_code: bool = False) -> str:
    """Write `dst`, a copy of the checkpoint `src` whose tokenizer has a distinct pad token (the
    embeddings resized when a token had to be added); returns a sentence for the log."""
    tokenizer = AutoTokenizer.from_pretrained(str(src), trust_remote_code=trust_remote_code)
    old = tokenizer.pad_token
    pad, grew = ensure_distinct_pad(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(src), trust_remote_code=trust_remote_code, use_safetensors=True)
    if grew:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_model(model, tokenizer, dst)
    was = "no pad token" if old is None else f"pad token {old!r} equal to EOS"
    how = f"added {pad!r} and resized the embeddings to {len(tokenizer)}" if grew else f"using its unused {pad!r}"
    return f"tokenizer of {src} had {was}: {how}; the fixed copy is {dst}"
