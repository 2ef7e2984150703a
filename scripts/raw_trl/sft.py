"""Plain TRL SFT: what `python -m rlhf_ops job=sft io.policy=P io.data=D io.output=O` trains (stage=tiny).

    python scripts/raw_trl/sft.py --policy P --data D.parquet --output O
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_kwargs, parser, save  # noqa: E402

import pandas as pd  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

p = parser(__doc__)
p.add_argument("--policy", required=True)
p.add_argument("--data", required=True)
a = p.parse_args()

set_seed(a.seed)
tokenizer = AutoTokenizer.from_pretrained(a.policy)
model = AutoModelForCausalLM.from_pretrained(a.policy, use_safetensors=True)
df = pd.read_parquet(a.data)
dataset = Dataset.from_pandas(df[["prompt", "completion"]].reset_index(drop=True))
args = SFTConfig(**base_kwargs(a, 3.0e-3), num_train_epochs=3.0, max_steps=a.max_steps, per_device_train_batch_size=32,
                 gradient_accumulation_steps=1, max_length=96, warmup_steps=10, weight_decay=0.0, logging_steps=10)
trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
trainer.train()
save(trainer, tokenizer, a.output)
