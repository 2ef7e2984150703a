"""One online-RLHF iteration written by hand with plain TRL: what one iteration of
`python -m rlhf_ops +experiment=quickstart` does (stage=tiny, loop=online_ppo), minus rlhf_ops' own checks.

    collect   64 prompts from the pool, 2 sampled completions each from the policy (HF generate)
    label     the preference labels: read from --pairs (rlhf_ops' simulated annotator is its testbed,
              not TRL; the bench passes the pairs rlhf_ops labelled on these same completions)
    rm        25% of the fresh pairs held out; RewardTrainer continues from the reward model on the rest;
              old vs new RM accuracy on the held-out pairs, the new one kept unless it is worse beyond noise
    ppo       PPOTrainer from the policy (reference = policy, value model = the reward model) on the 64 prompts
    evaluate  2 samples per frozen eval prompt from the new policy, sampled KL vs the reference, RM scores

Not done here (rlhf_ops does them): gold scoring and the win rate (the testbed's oracle), re-scoring the
last good samples, the gate's detectors, the ledger / summary / metrics files, retention, input checks.

    python scripts/raw_trl/iteration.py --policy SFT --reward-model RM --prompts prompts_train.parquet \
        --eval-prompts prompts_gold_eval.parquet --pairs iter_000/label/pairs.parquet --output OUT
"""

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_kwargs, parser, save  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed  # noqa: E402
from trl import RewardConfig, RewardTrainer  # noqa: E402
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402

p = parser(__doc__)
p.add_argument("--policy", required=True)
p.add_argument("--reward-model", required=True)
p.add_argument("--prompts", required=True)
p.add_argument("--eval-prompts", required=True)
p.add_argument("--pairs", required=True)
p.add_argument("--iteration", type=int, default=0)
p.add_argument("--prompts-per-iteration", type=int, default=64)
p.add_argument("--completions-per-prompt", type=int, default=2)
p.add_argument("--eval-samples-per-prompt", type=int, default=2)
p.add_argument("--heldout-fraction", type=float, default=0.25)
p.add_argument("--kl-coef", type=float, default=0.05)
p.add_argument("--total-episodes", type=int, default=256)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--num-ppo-epochs", type=int, default=4)
p.add_argument("--response-length", type=int, default=48)
p.add_argument("--temperature", type=float, default=0.7)
p.add_argument("--reward-max-steps", type=int, default=-1)
a = p.parse_args()
out = Path(a.output)
out.mkdir(parents=True, exist_ok=True)
tokenizer = AutoTokenizer.from_pretrained(a.policy)


@torch.no_grad()
def generate(model, prompts, n, seed, batch_size=64):
    """n samples per prompt, left-padded batches of 64, one seed per batch from a seeded generator."""
    model.eval()
    tokenizer.padding_side = "left"
    flat = [(i, q) for i, q in enumerate(prompts) for _ in range(n)]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    eos, rows = tokenizer.eos_token_id, []
    for s in range(0, len(flat), batch_size):
        chunk = flat[s:s + batch_size]
        enc = tokenizer([q for _, q in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        seqs = model.generate(**enc, max_new_tokens=a.response_length, do_sample=True, temperature=a.temperature,
                              top_p=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, use_cache=True)
        for (i, q), ids in zip(chunk, seqs[:, enc["input_ids"].shape[1]:].tolist()):
            ids = ids[: ids.index(eos) + 1] if eos in ids else [t for t in ids if t != tokenizer.pad_token_id]
            rows.append({"prompt": q, "prompt_index": i, "ids": ids,
                         "completion": tokenizer.decode(ids, skip_special_tokens=True)})
    return rows


@torch.no_grad()
def rm_scores(model, prompts, completions, batch_size=64):
    model.eval()
    tokenizer.padding_side = "right"
    eos, out = tokenizer.eos_token, []
    texts = [q + (c if c.endswith(eos) else c + eos) for q, c in zip(prompts, completions)]
    for s in range(0, len(texts), batch_size):
        enc = tokenizer(texts[s:s + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=256,
                        add_special_tokens=False)
        out.append(model(**enc).logits[:, 0])
    return torch.cat(out).numpy() if out else np.zeros(0)


def accuracy(model, df):
    return rm_scores(model, list(df["prompt"]), list(df["chosen"])) > rm_scores(model, list(df["prompt"]), list(df["rejected"]))


@torch.no_grad()
def kl_and_entropy(policy, ref, rows, batch_size=64):
    """Per sample: sum over response tokens of log pi - log pi_ref (tempered as PPO does), mean entropy of pi."""
    kls, ents = [], []
    for s in range(0, len(rows), batch_size):
        seqs = [(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"], r["ids"]) for r in rows[s:s + batch_size]]
        width = max(len(q) + max(len(r), 1) for q, r in seqs)
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
        attn, mask = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
        for j, (q, r) in enumerate(seqs):
            ids[j, :len(q) + len(r)] = torch.tensor(q + r)
            attn[j, :len(q) + len(r)] = 1
            mask[j, len(q):len(q) + len(r)] = True
        lp = torch.log_softmax(policy(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / a.temperature, -1)
        lr = torch.log_softmax(ref(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / a.temperature, -1)
        tgt, m = ids[:, 1:].unsqueeze(-1), mask[:, 1:]
        kls += ((lp.gather(-1, tgt) - lr.gather(-1, tgt)).squeeze(-1) * m).sum(-1).tolist()
        ents += ((-(lp.exp() * lp).sum(-1) * m).sum(-1) / m.sum(-1).clamp(min=1)).tolist()
    return kls, ents


# collect: the next prompts of the pool, n samples each from the current policy
pool = pd.read_parquet(a.prompts)
batch = pool.iloc[list(range(a.prompts_per_iteration))].reset_index(drop=True)
policy = AutoModelForCausalLM.from_pretrained(a.policy, use_safetensors=True)
samples = generate(policy, batch["prompt"].tolist(), a.completions_per_prompt, a.seed * 100003 + a.iteration)
pd.DataFrame([{k: v for k, v in r.items() if k != "ids"} for r in samples]).to_parquet(out / "completions.parquet")
del policy

# label: the annotator's preferences on these completions (the testbed's simulation, read from a file)
pairs = pd.read_parquet(a.pairs)

# reward model: continue from the current one on 75% of the fresh pairs; keep it if not worse on the rest
rng = np.random.default_rng(a.seed * 31 + a.iteration)
idx = rng.permutation(len(pairs))
n_val = max(2, int(round(len(pairs) * a.heldout_fraction)))
val, train = pairs.iloc[idx[:n_val]], pairs.iloc[idx[n_val:]]
set_seed(a.seed)
rm = AutoModelForSequenceClassification.from_pretrained(a.reward_model, num_labels=1, use_safetensors=True)
rm.config.pad_token_id = tokenizer.pad_token_id
args = RewardConfig(**base_kwargs(a, 5.0e-4), num_train_epochs=2.0, max_steps=a.reward_max_steps,
                    per_device_train_batch_size=32, gradient_accumulation_steps=1, max_length=96,
                    center_rewards_coefficient=0.01, logging_steps=10)
trainer = RewardTrainer(model=rm, args=args, processing_class=tokenizer,
                        train_dataset=Dataset.from_pandas(train[["prompt", "chosen", "rejected"]].reset_index(drop=True)))
trainer.train()
save(trainer, tokenizer, str(out / "rm"))
new_ok = accuracy(rm, val)
old_ok = accuracy(AutoModelForSequenceClassification.from_pretrained(a.reward_model, num_labels=1, use_safetensors=True), val)
se = math.sqrt(float(np.sum(old_ok != new_ok))) / len(val)
keep_new = old_ok.mean() - new_ok.mean() <= 0.02 + 1.645 * se
rm_dir = str(out / "rm") if keep_new else a.reward_model
del trainer, rm

# policy update: PPO against the reward model, the policy its own reference, the RM the value model's init
set_seed(a.seed)
tokenizer.padding_side = "left"
prompts = batch["prompt"].tolist()
if len(prompts) < a.batch_size:
    prompts = [prompts[i % len(prompts)] for i in range(a.batch_size)]
dataset = Dataset.from_dict({"input_ids": [tokenizer(q, add_special_tokens=False)["input_ids"] for q in prompts]})
policy = AutoModelForCausalLM.from_pretrained(a.policy, use_safetensors=True)
ref = AutoModelForCausalLM.from_pretrained(a.policy, use_safetensors=True)
value = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1, use_safetensors=True)
reward = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1, use_safetensors=True)
reward.eval()
for m in (value, reward):
    m.config.pad_token_id = tokenizer.pad_token_id
args = PPOConfig(**base_kwargs(a, 3.0e-5), kl_coef=a.kl_coef, total_episodes=a.total_episodes,
                 per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=1, num_mini_batches=1,
                 num_ppo_epochs=a.num_ppo_epochs, response_length=a.response_length, temperature=a.temperature,
                 missing_eos_penalty=1.0, kl_estimator="k1", cliprange=0.2, vf_coef=0.1, whiten_rewards=False,
                 local_rollout_forward_batch_size=64, logging_steps=1, stop_token="eos", num_sample_generations=0)
trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                     value_model=value, train_dataset=dataset)
trainer.train()
save(trainer, tokenizer, str(out / "policy"))
del trainer, policy, ref, value, reward

# evaluate the new policy on the frozen prompts: samples, KL vs the reference, reward-model scores
eval_prompts = pd.read_parquet(a.eval_prompts)["prompt"].tolist()
policy = AutoModelForCausalLM.from_pretrained(str(out / "policy"), use_safetensors=True)
rows = generate(policy, eval_prompts, a.eval_samples_per_prompt, a.seed * 1000 + 777)
ref = AutoModelForCausalLM.from_pretrained(a.policy, use_safetensors=True)
kls, ents = kl_and_entropy(policy, ref, rows)
del ref
rm = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1, use_safetensors=True)
scores = rm_scores(rm, [r["prompt"] for r in rows], [r["completion"] for r in rows])
record = {"proxy": float(scores.mean()), "kl": float(np.mean(kls)), "entropy": float(np.mean(ents)),
          "eos_rate": float(np.mean([tokenizer.eos_token_id in r["ids"] for r in rows])),
          "rm_kept_new": bool(keep_new), "rm_old_accuracy": float(old_ok.mean()), "rm_new_accuracy": float(new_ok.mean())}
(out / "eval.json").write_text(json.dumps(record, indent=1))
print(json.dumps(record))
