"""Plain TRL reward model: what `python -m rlhf_ops job=reward io.reward_model=P io.data=D io.output=O` trains
(stage=tiny: one member, 10% of the pairs held out for accuracy).

    python scripts/raw_trl/reward.py --init P --data pairs.parquet --output O
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_kwargs, parser, save  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed  # noqa: E402
from trl import RewardConfig, RewardTrainer  # noqa: E402

p = parser(__doc__)
p.add_argument("--init", required=True, help="a causal LM (fresh score head) or a reward model to continue")
p.add_argument("--data", required=True)
p.add_argument("--heldout", default="", help="held-out pairs file (else 10%% of --data is held out)")
a = p.parse_args()

set_seed(a.seed)
tokenizer = AutoTokenizer.from_pretrained(a.init)
df = pd.read_parquet(a.data)
if a.heldout:
    train_df, eval_df = df, pd.read_parquet(a.heldout)
elif len(df) >= 10:  # a seeded 10% held out
    idx = np.random.default_rng(a.seed).permutation(len(df))
    n_eval = max(1, int(round(len(df) * 0.1)))
    train_df, eval_df = df.iloc[idx[n_eval:]].reset_index(drop=True), df.iloc[idx[:n_eval]].reset_index(drop=True)
else:
    train_df, eval_df = df, df.iloc[:0]
dataset = Dataset.from_pandas(train_df[["prompt", "chosen", "rejected"]].reset_index(drop=True))
set_seed(a.seed)  # the fresh score head's init
model = AutoModelForSequenceClassification.from_pretrained(a.init, num_labels=1, use_safetensors=True)
model.config.pad_token_id = tokenizer.pad_token_id
args = RewardConfig(**base_kwargs(a, 5.0e-4), num_train_epochs=2.0, max_steps=a.max_steps, per_device_train_batch_size=32,
                    gradient_accumulation_steps=1, max_length=96, center_rewards_coefficient=0.01, logging_steps=10)
trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
trainer.train()
save(trainer, tokenizer, a.output)


@torch.no_grad()
def scores(prompts, completions):
    tokenizer.padding_side = "right"
    model.eval()
    texts = [p + c + tokenizer.eos_token for p, c in zip(prompts, completions)]
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=256, add_special_tokens=False)
    return model(**enc).logits[:, 0]


if len(eval_df):
    margin = scores(list(eval_df["prompt"]), list(eval_df["chosen"])) - scores(list(eval_df["prompt"]), list(eval_df["rejected"]))
    print(f"held-out accuracy {float((margin > 0).float().mean()):.3f} on {len(eval_df)} pairs")
