"""Evaluation of a policy on the frozen gold-eval prompts, every iteration.

One record per evaluation, the detectors' input:
  gold         mean gold reward, where the task has one (the testbed's exact "human evaluation");
               None for a task without gold (a user's own data)
  proxy        mean reward of the current reward model (ensemble mean); None before the first RM
  kl           sampled KL(policy || reference), tempered as in PPO, summed over response tokens
  entropy      mean per-token entropy of the policy on its own samples
  length       mean completion length in words; tokens in `length_tokens`
  repetition   mean fraction of repeated bigrams
  disagreement mean std of the ensemble members' scores (0 for a single RM)
  rm_accuracy  accuracy of the reward model on the iteration's fresh pairs, against gold (gold only)
  rm_label_accuracy  the same against the labeler's choices
  win_rate     head-to-head vs the last accepted policy on the same prompts, judged by gold
               (ties count half; gold only)
  eos_rate     share of completions that ended with EOS
  anchor_nll   mean per-token negative log-likelihood of the capability anchors' references (where the
               task has anchors): what the policy can still write, whatever the reward says
  anchor_match share of the short anchors (at most ANCHOR_MATCH_TOKENS reference tokens) the policy
               reproduces exactly with greedy decoding
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import torch

from .generation import generate, right_padded, sequence_stats
from .models import load_policy, load_tokenizer
from .scoring import load_reward_model, member_scores

_WORD = re.compile(r"[a-z']+")
_LETTERS = re.compile(r"[^\W\d_]+")  # runs of letters, any script (on ASCII text: [a-z]+)


def count_words(text: str) -> int:
    return len(_LETTERS.findall(text.lower()))


def repeated_bigram_rate(text: str) -> float:
    words = _WORD.findall(text.lower())
    bigrams = list(zip(words, words[1:]))
    if not bigrams:
        return 0.0
    return 1.0 - len(set(bigrams)) / len(bigrams)


ANCHOR_MATCH_TOKENS = 16


@torch.no_grad()
def anchor_metrics(model, tok, prompts: list[str], references: list[str], batch_size: int = 32) -> dict:
    """anchor_nll (mean over anchors of the per-token NLL of the reference, EOS included, teacher-forced)
    and anchor_match (greedy exact match on the short references; absent when none is short)."""
    device = next(model.parameters()).device
    eos = tok.eos_token_id
    rows = [(tok(p, add_special_tokens=False)["input_ids"], tok(r, add_special_tokens=False)["input_ids"] + [eos])
            for p, r in zip(prompts, references)]
    nll = []
    for s in range(0, len(rows), batch_size):
        ids, attn, mask = right_padded(rows[s:s + batch_size], tok.pad_token_id)
        lp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits[:, :-1].float(), -1)
        tok_lp = lp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
        m = mask[:, 1:]
        nll += (-(tok_lp * m).sum(-1) / m.sum(-1).clamp(min=1)).tolist()
    out = {"anchor_nll": float(np.mean(nll)), "n_anchors": len(rows)}
    short = [i for i, (_, r) in enumerate(rows) if len(r) - 1 <= ANCHOR_MATCH_TOKENS]
    if short:
        s = generate("", [prompts[i] for i in short], 1, max_new_tokens=ANCHOR_MATCH_TOKENS + 1, temperature=0.0,
                     model=model, tokenizer=tok)
        out["anchor_match"] = float(np.mean([c.strip() == references[i].strip() for c, i in zip(s.completions, short)]))
    return out


class AdapterDisabled:
    """The base of a peft model, called like a model: the same weights with the adapter switched off."""

    def __init__(self, model):
        self.model = model

    def __call__(self, **kwargs):
        with self.model.disable_adapter():
            return self.model(**kwargs)


def policy_and_reference(policy_dir, ref_dir, trust_remote_code: bool = False):
    """The policy, and the reference when it comes free: a LoRA policy whose base is the reference is loaded
    once, unmerged, and the reference is it with the adapter disabled (no second copy in memory). Else
    (policy, None): the caller loads the reference when it needs it."""
    from .lora import adapter_base, is_adapter, same_path

    if is_adapter(policy_dir) and same_path(adapter_base(policy_dir), ref_dir):
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_policy(ref_dir, trust_remote_code), str(policy_dir))
        model.eval()
        return model, AdapterDisabled(model)
    return load_policy(policy_dir, trust_remote_code), None


def win_rate(new_gold: list[float], old_gold: list[float]) -> float:
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(new_gold, old_gold)]
    return float(np.mean(wins)) if wins else float("nan")


def evaluate_policy(policy_dir: str, ref_dir: str, rm_dir: str | None, prompts: list[str], *, samples_per_prompt: int,
                    max_new_tokens: int, temperature: float, seed: int, baseline_samples: pd.DataFrame | None = None,
                    rescore_baseline: bool = False, fresh_pairs: pd.DataFrame | None = None, progress: bool = False,
                    trust_remote_code: bool = False, gold=None, anchors: pd.DataFrame | None = None,
                    generation: dict | None = None) -> tuple[dict, pd.DataFrame]:
    """(metrics record, samples table). The sampling seed is fixed per call so that two policies
    are compared on the same prompts with the same random stream. `gold(prompt, completion)` is the
    task's gold reward, or None; `rm_dir` None means no reward model yet (no proxy). `rescore_baseline`:
    also score `baseline_samples` with this RM (`baseline_proxy`), reusing the loaded model. `anchors`
    (rendered prompt, completion): the capability anchors, scored with the same loaded policy."""
    tok = load_tokenizer(policy_dir, trust_remote_code)
    policy, ref = policy_and_reference(policy_dir, ref_dir, trust_remote_code)
    s = generate(policy_dir, prompts, samples_per_prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                 seed=seed, progress=progress, model=policy, tokenizer=tok, generation=generation)
    ref = ref or load_policy(ref_dir, trust_remote_code)
    stats = sequence_stats(policy, ref, tok, s.prompts, s.response_ids, temperature=temperature)
    del ref
    if rm_dir:
        rm = load_reward_model(rm_dir, trust_remote_code=trust_remote_code)
        rm_tok = load_tokenizer(rm_dir, trust_remote_code)
        scores = member_scores(rm, rm_tok, s.prompts, s.completions)
    else:
        scores = np.full((len(s.completions), 1), np.nan)
    golds = [gold(p, c) for p, c in zip(s.prompts, s.completions)] if gold else [np.nan] * len(s.completions)
    samples = pd.DataFrame({
        "prompt": s.prompts, "prompt_index": s.prompt_index, "completion": s.completions, "gold": golds,
        "proxy": scores.mean(-1), "kl": stats["kl"], "entropy": stats["entropy"], "n_tokens": s.n_tokens,
        "ended": s.ended, "words": [count_words(c) for c in s.completions],
        "repetition": [repeated_bigram_rate(c) for c in s.completions],
    })
    record = {
        "gold": float(np.mean(golds)) if gold else None,
        "proxy": float(scores.mean()) if rm_dir else None,
        "kl": float(np.mean(stats["kl"])),
        "entropy": float(np.mean(stats["entropy"])),
        "length": float(samples["words"].mean()),
        "length_tokens": float(np.mean(s.n_tokens)),
        "repetition": float(samples["repetition"].mean()),
        "disagreement": float(scores.std(-1).mean()) if scores.shape[1] > 1 else 0.0,
        "eos_rate": float(np.mean(s.ended)),
        "n_samples": len(samples),
        "empty_rate": float(np.mean([not c.strip() for c in s.completions])),
    }
    if anchors is not None and len(anchors):
        record.update(anchor_metrics(policy, tok, anchors["prompt"].tolist(), anchors["completion"].tolist()))
    if gold and baseline_samples is not None and len(baseline_samples) == len(samples):
        record["win_rate"] = win_rate(golds, baseline_samples["gold"].tolist())
    if rm_dir and rescore_baseline and baseline_samples is not None:
        record["baseline_proxy"] = float(member_scores(rm, rm_tok, baseline_samples["prompt"].tolist(),
                                                       baseline_samples["completion"].tolist()).mean())
    if rm_dir and fresh_pairs is not None and len(fresh_pairs):
        c = member_scores(rm, rm_tok, list(fresh_pairs["prompt"]), list(fresh_pairs["chosen"])).mean(-1)
        r = member_scores(rm, rm_tok, list(fresh_pairs["prompt"]), list(fresh_pairs["rejected"])).mean(-1)
        record["rm_label_accuracy"] = float(np.mean(c > r))
        gold_says = np.sign(fresh_pairs["gold_chosen"].to_numpy(dtype=float)
                            - fresh_pairs["gold_rejected"].to_numpy(dtype=float))
        keep = np.isfinite(gold_says) & (gold_says != 0)
        if gold and keep.any():
            record["rm_accuracy"] = float(np.mean(np.sign(c - r)[keep] == gold_says[keep]))
    for k, v in record.items():
        if isinstance(v, float) and not math.isfinite(v) and k not in ("win_rate", "rm_accuracy", "rm_label_accuracy"):
            record.setdefault("nonfinite", []).append(k)
    return record, samples
