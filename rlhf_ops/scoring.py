"""Reward models at inference time: scoring texts, accuracy on pairs, and an ensemble of K
reward models that looks like ONE sequence-classification model to TRL's PPO.

TRL's PPO reads a reward model as `getattr(rm, rm.base_model_prefix)` (the backbone, called with
`output_hidden_states=True`) followed by `rm.score(hidden_states[-1])`. `RewardEnsemble` keeps that
shape: its backbone runs every member's backbone and concatenates their last hidden states, and
its score head splits them again, applies each member's head and reduces the K scores to one by
mean, worst case (min) or uncertainty-weighted mean - lambda * variance (Coste et al. 2023).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from .models import load_sequence_classifier, load_tokenizer, reward_members

REDUCTIONS = ("mean", "min", "uncertainty")


def reduce_scores(scores: torch.Tensor, reduce: str, lam: float) -> torch.Tensor:
    """Reduce member scores over the last dimension."""
    if reduce == "mean":
        return scores.mean(-1)
    if reduce == "min":
        return scores.min(-1).values
    if reduce == "uncertainty":
        var = scores.var(-1, unbiased=False)
        return scores.mean(-1) - lam * var
    raise ValueError(f"unknown ensemble reduction '{reduce}' (use one of {REDUCTIONS})")


class _Backbones(nn.Module):
    def __init__(self, backbones: list[nn.Module]):
        super().__init__()
        self.backbones = nn.ModuleList(backbones)

    def forward(self, **kwargs):
        kwargs["output_hidden_states"] = True
        hidden = [b(**kwargs).hidden_states[-1] for b in self.backbones]
        return SimpleNamespace(hidden_states=(torch.cat(hidden, dim=-1),))


class _Heads(nn.Module):
    def __init__(self, heads: list[nn.Module], sizes: list[int], reduce: str, lam: float):
        super().__init__()
        self.heads, self.sizes, self.reduce, self.lam = nn.ModuleList(heads), sizes, reduce, lam

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        chunks = hidden.split(self.sizes, dim=-1)
        scores = torch.cat([h(c) for h, c in zip(self.heads, chunks)], dim=-1)  # [B, T, K]
        return reduce_scores(scores, self.reduce, self.lam).unsqueeze(-1)


class RewardEnsemble(nn.Module):
    base_model_prefix = "model"

    def __init__(self, members: list[nn.Module], reduce: str = "mean", lam: float = 1.0):
        super().__init__()
        if reduce not in REDUCTIONS:
            raise ValueError(f"unknown ensemble reduction '{reduce}' (use one of {REDUCTIONS})")
        self.members_ = members  # plain list: the modules are registered through model/score below
        self.model = _Backbones([getattr(m, m.base_model_prefix) for m in members])
        self.score = _Heads([m.score for m in members], [m.config.hidden_size for m in members], reduce, lam)
        self.config = members[0].config

    def member_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0] for m in self.members_], -1)


def load_reward_model(path, reduce: str = "mean", lam: float = 1.0, trust_remote_code: bool = False) -> nn.Module:
    members = [load_sequence_classifier(p, trust_remote_code) for p in reward_members(path)]
    for m in members:
        m.eval()
    if len(members) == 1:
        return members[0]
    return RewardEnsemble(members, reduce, lam)


@torch.no_grad()
def member_scores(model: nn.Module, tokenizer, prompts: list[str], completions: list[str],
                  batch_size: int = 64, max_length: int = 256) -> np.ndarray:
    """Scores [N, K] of prompt+completion texts (EOS appended, as in reward training)."""
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token or ""
    texts = [p + (c if c.endswith(eos) else c + eos) for p, c in zip(prompts, completions)]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    out = []
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length, add_special_tokens=False).to(device)
            if isinstance(model, RewardEnsemble):
                s = model.member_scores(enc["input_ids"], enc["attention_mask"])
            else:
                s = model(**enc).logits[:, :1]
            out.append(s.float().cpu().numpy())
    finally:
        tokenizer.padding_side = old_side
    return np.concatenate(out, axis=0) if out else np.zeros((0, 1))


def reward_scores(model: nn.Module, tokenizer, prompts: list[str], completions: list[str], reduce: str = "mean",
                  lam: float = 1.0, batch_size: int = 64, max_length: int = 256) -> np.ndarray:
    """One reward per prompt+completion: member_scores reduced over an ensemble's members (as PPO's)."""
    with torch.no_grad():
        scores = member_scores(model, tokenizer, prompts, completions, batch_size=batch_size, max_length=max_length)
        return reduce_scores(torch.from_numpy(scores), reduce, lam).numpy().astype(float)


def best_per_prompt(df, key: str, score: str = "rm_score"):
    """Per `key` group, the row with the highest `score` among those that ended with EOS and are not
    empty (one cut off at the length limit, or empty, wins only where nothing else is left): the
    selection of rejection sampling and of best-of-n at inference time."""
    ranked = df.assign(_nonempty=df["completion"].astype(str).str.len() > 0, _ended=df["ended"].astype(bool))
    ranked = ranked.sort_values([key, "_nonempty", "_ended", score], ascending=[True, False, False, False],
                                kind="stable")
    return ranked.groupby(key, sort=True).head(1).drop(columns=["_nonempty", "_ended"]).reset_index(drop=True)


def pair_correct(model, tokenizer, prompts, chosen, rejected, batch_size: int = 64) -> np.ndarray:
    """Per pair: does the (mean) reward of chosen exceed rejected's?"""
    if not len(prompts):
        return np.zeros(0, dtype=bool)
    c = member_scores(model, tokenizer, list(prompts), list(chosen), batch_size).mean(-1)
    r = member_scores(model, tokenizer, list(prompts), list(rejected), batch_size).mean(-1)
    return np.asarray(c > r)


def pair_accuracy(model, tokenizer, prompts, chosen, rejected, batch_size: int = 64) -> float:
    """Fraction of pairs where the (mean) reward of chosen exceeds rejected."""
    ok = pair_correct(model, tokenizer, prompts, chosen, rejected, batch_size)
    return float(np.mean(ok)) if len(ok) else float("nan")


def load_scorer(path, trust_remote_code: bool = False):
    """(model, tokenizer) for scoring with a reward model or ensemble directory."""
    return load_reward_model(path, trust_remote_code=trust_remote_code), load_tokenizer(path, trust_remote_code)
