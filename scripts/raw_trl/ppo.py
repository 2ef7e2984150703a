"""Plain TRL PPO (trl.experimental.ppo, TRL 1.12): what
`python -m rlhf_ops job=ppo io.policy=P io.reward_model=R io.data=prompts.parquet io.output=O` trains (stage=tiny):
reference = the policy, value model = the reward model.

    python scripts/raw_trl/ppo.py --policy P --reward-model R --data prompts.parquet --output O
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_kwargs, parser, save  # noqa: E402

import pandas as pd  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed  # noqa: E402
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402

p = parser(__doc__)
p.add_argument("--policy", required=True)
p.add_argument("--ref", default="")
p.add_argument("--reward-model", required=True)
p.add_argument("--data", required=True)
p.add_argument("--kl-coef", type=float, default=0.05)
p.add_argument("--learning-rate", type=float, default=3.0e-5)
p.add_argument("--total-episodes", type=int, default=256)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--num-ppo-epochs", type=int, default=4)
p.add_argument("--response-length", type=int, default=48)
a = p.parse_args()

set_seed(a.seed)
tokenizer = AutoTokenizer.from_pretrained(a.policy)
tokenizer.padding_side = "left"
prompts = pd.read_parquet(a.data)["prompt"].tolist()
if len(prompts) < a.batch_size:  # TRL's PPO loops forever on fewer prompts than one batch: cycle them
    prompts = [prompts[i % len(prompts)] for i in range(a.batch_size)]
dataset = Dataset.from_dict({"input_ids": [tokenizer(q, add_special_tokens=False)["input_ids"] for q in prompts]})
policy = AutoModelForCausalLM.from_pretrained(a.policy, use_safetensors=True)
ref = AutoModelForCausalLM.from_pretrained(a.ref or a.policy, use_safetensors=True)
value = AutoModelForSequenceClassification.from_pretrained(a.reward_model, num_labels=1, use_safetensors=True)
reward = AutoModelForSequenceClassification.from_pretrained(a.reward_model, num_labels=1, use_safetensors=True)
reward.eval()
for m in (value, reward):
    m.config.pad_token_id = tokenizer.pad_token_id
args = PPOConfig(**base_kwargs(a, a.learning_rate), kl_coef=a.kl_coef, total_episodes=a.total_episodes,
                 per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=1, num_mini_batches=1,
                 num_ppo_epochs=a.num_ppo_epochs, response_length=a.response_length, temperature=0.7,
                 missing_eos_penalty=1.0, kl_estimator="k1", cliprange=0.2, vf_coef=0.1, whiten_rewards=False,
                 local_rollout_forward_batch_size=64, logging_steps=1, stop_token="eos", num_sample_generations=0)
trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                     value_model=value, train_dataset=dataset)
trainer.train()
save(trainer, tokenizer, a.output)
