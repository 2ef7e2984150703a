"""Plain TRL DPO: what `python -m rlhf_ops job=dpo io.policy=P io.data=pairs.parquet io.output=O` trains
(stage=tiny; the reference is the policy checkpoint, loaded explicitly).

    python scripts/raw_trl/dpo.py --policy P --data pairs.parquet --output O
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_kwargs, parser, save  # noqa: E402

import pandas as pd  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

p = parser(__doc__)
p.add_argument("--policy", required=True)
p.add_argument("--data", required=True)
p.add_argument("--beta", type=float, default=0.1)
a = p.parse_args()

set_seed(a.seed)
tokenizer = AutoTokenizer.from_pretrained(a.policy)
model = AutoModelForCausalLM.from_pretrained(a.policy, use_safetensors=True)
ref = AutoModelForCausalLM.from_pretrained(a.policy, use_safetensors=True)
df = pd.read_parquet(a.data)
dataset = Dataset.from_pandas(df[["prompt", "chosen", "rejected"]].reset_index(drop=True))
args = DPOConfig(**base_kwargs(a, 5.0e-5), beta=a.beta, loss_type="sigmoid", num_train_epochs=1.0, max_steps=a.max_steps,
                 per_device_train_batch_size=16, gradient_accumulation_steps=1, max_length=128, logging_steps=10)
trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=dataset, processing_class=tokenizer)
trainer.train()
save(trainer, tokenizer, a.output)
