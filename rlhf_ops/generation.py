"""Sampling from a policy checkpoint, and the per-token statistics evaluation needs.

Batched generation with left padding and the KV cache; completions are decoded without special
tokens and cut at EOS. `sequence_stats` scores sampled completions under the policy and a
reference to give a sampled estimate of KL(policy || reference) and the policy's entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import load_policy, load_tokenizer


@dataclass
class Samples:
    prompts: list[str]            # one per completion (prompt repeated n times)
    completions: list[str]
    prompt_index: list[int]       # index into the input prompts
    n_tokens: list[int]           # response tokens up to and including EOS
    ended: list[bool]             # emitted EOS within the budget
    response_ids: list[list[int]]


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    from .console import tqdm_kwargs

    # During a step the bar is drawn on the terminal (not in the step's log), and only on a TTY.
    return tqdm(iterable, **{"desc": desc, "leave": False, **tqdm_kwargs()})


@torch.no_grad()
def generate(policy_dir, prompts: list[str], n: int = 1, *, max_new_tokens: int = 48, temperature: float = 0.7,
             top_p: float = 1.0, seed: int = 0, batch_size: int = 64, progress: bool = False,
             model=None, tokenizer=None, trust_remote_code: bool = False, generation: dict | None = None) -> Samples:
    """n completions per prompt from the policy in `policy_dir` (or the loaded `model`). `generation`: the
    config's generation group; backend=vllm samples with a vLLM engine (rlhf_ops.vllm_backend) instead."""
    tokenizer = tokenizer or load_tokenizer(policy_dir, trust_remote_code)
    if generation and generation.get("backend") == "vllm" and policy_dir:
        from .vllm_backend import generate_vllm

        return generate_vllm(policy_dir, prompts, n, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, seed=seed, tokenizer=tokenizer, generation=generation,
                             trust_remote_code=trust_remote_code)
    model = model or load_policy(policy_dir, trust_remote_code)
    model.eval()
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    flat = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = Samples([], [], [], [], [], [])
    eos = tokenizer.eos_token_id
    batches = range(0, len(flat), batch_size)
    for start in _progress(batches, progress, "generate"):
        chunk = flat[start:start + batch_size]
        enc = tokenizer([p for _, p in chunk], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        # A per-batch seed drawn from one generator keeps sampling reproducible and batch-order stable.
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        seqs = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=max(temperature, 1e-5),
            top_p=top_p, top_k=0, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, use_cache=True,
        )
        resp = seqs[:, enc["input_ids"].shape[1]:].tolist()
        for (i, p), ids in zip(chunk, resp):
            add_sample(out, tokenizer, i, p, ids)
    return out


def add_sample(out: Samples, tokenizer, index: int, prompt: str, ids: list[int]) -> None:
    """One completion's token ids into `out`: cut after the first EOS (padding after it dropped)."""
    eos = tokenizer.eos_token_id
    ended = eos in ids
    ids = ids[: ids.index(eos) + 1] if ended else [t for t in ids if t != tokenizer.pad_token_id]
    out.prompts.append(prompt)
    out.prompt_index.append(index)
    out.response_ids.append(ids)
    out.n_tokens.append(len(ids))
    out.ended.append(ended)
    out.completions.append(tokenizer.decode(ids, skip_special_tokens=True))


def right_padded(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """(input_ids, attention_mask, response_mask) of (prompt ids, response ids) rows, right-padded so
    that positions line up from the left; the response mask marks each row's response tokens."""
    width = max(len(q) + max(len(r), 1) for q, r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    resp_mask = torch.zeros_like(ids, dtype=torch.bool)
    for j, (q, r) in enumerate(rows):
        seq = q + r
        ids[j, :len(seq)] = torch.tensor(seq)
        attn[j, :len(seq)] = 1
        resp_mask[j, len(q):len(seq)] = True
    return ids, attn, resp_mask


@torch.no_grad()
def sequence_stats(policy, ref, tokenizer, prompts: list[str], response_ids: list[list[int]],
                   batch_size: int = 64, temperature: float = 1.0) -> dict[str, list[float]]:
    """Per completion: sum of log pi - log pi_ref over its tokens and mean per-token entropy of pi.

    Logits of both models are divided by the sampling temperature, as TRL's PPO does, so for
    completions sampled at that temperature the mean is an unbiased estimate of the KL between
    the tempered policy and the tempered reference (TRL's `objective/kl`)."""
    t = max(temperature, 1e-5)
    kls, ents = [], []
    device = next(policy.parameters()).device
    for s in range(0, len(prompts), batch_size):
        rows = []
        for p, r in zip(prompts[s:s + batch_size], response_ids[s:s + batch_size]):
            q = tokenizer(p, add_special_tokens=False)["input_ids"]
            rows.append((q, r))
        ids, attn, resp_mask = right_padded(rows, tokenizer.pad_token_id)
        ids, attn, resp_mask = ids.to(device), attn.to(device), resp_mask.to(device)
        lp = torch.log_softmax(policy(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / t, -1)
        lr = torch.log_softmax(ref(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / t, -1)
        tgt = ids[:, 1:].unsqueeze(-1)
        mask = resp_mask[:, 1:]
        tok_kl = (lp.gather(-1, tgt) - lr.gather(-1, tgt)).squeeze(-1)
        tok_ent = -(lp.exp() * lp).sum(-1)
        n = mask.sum(-1).clamp(min=1)
        kls += (tok_kl * mask).sum(-1).tolist()
        ents += ((tok_ent * mask).sum(-1) / n).tolist()
    return {"kl": kls, "entropy": ents}
