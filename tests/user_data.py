"""What a user brings, written the way a user would: a local model directory (a tiny Llama whose
tokenizer pads with its EOS, like SmolLM2's, and has a chat template) and three small files of
their own text (conversational prompts, standard SFT rows, conversational preference pairs).
Nothing here comes from the review testbed."""

from __future__ import annotations

import json
import random
from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TOPICS = ["the weather", "a good book", "cooking rice", "learning to swim", "a quiet morning", "the city bus",
          "planting tomatoes", "a birthday party", "fixing a bike", "the night sky", "a rainy day", "coffee"]
GOOD = ["Here is a short, friendly answer about {t}. It is clear and ends well.",
        "Sure. {t} is a nice topic; a few calm sentences explain it."]
BAD = ["{t} {t} {t} no no no", "I do not know.", "Buy now!!! {t}"]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def make_user_files(d: Path, n_prompts: int = 24) -> dict:
    rng = random.Random(0)
    topics = [TOPICS[i % len(TOPICS)] + ("" if i < len(TOPICS) else f", part {i // len(TOPICS)}")
              for i in range(n_prompts)]
    prompts = [{"prompt": [{"role": "user", "content": f"Tell me about {t}."}]} for t in topics]
    sft = [{"prompt": f"Tell me about {t}.", "completion": rng.choice(GOOD).format(t=t)} for t in topics]
    pairs = [{"chosen": [{"role": "user", "content": f"Tell me about {t}."},
                         {"role": "assistant", "content": rng.choice(GOOD).format(t=t)}],
              "rejected": [{"role": "user", "content": f"Tell me about {t}."},
                           {"role": "assistant", "content": rng.choice(BAD).format(t=t)}]}
             for t in topics for _ in range(2)]
    return {"prompts": write_jsonl(d / "prompts.jsonl", prompts), "sft": write_jsonl(d / "sft.jsonl", sft),
            "pairs": write_jsonl(d / "pairs.jsonl", pairs)}


def make_user_model(d: Path, texts: list[str], hidden: int = 32, max_positions: int = 256, name: str = "my-model") -> str:
    """A tiny Llama saved with save_pretrained; its tokenizer's pad is its EOS (<|im_end|>)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=max_positions, pad_token_id=fast.pad_token_id,
                                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                                         tie_word_embeddings=True))
    out = d / name
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return str(out)


def user_texts(files: dict) -> list[str]:
    texts = []
    for path in files.values():
        for line in Path(path).read_text().splitlines():
            texts.append(line)
    return texts * 3


JUDGE_RUBRIC = "Pick the better answer."


def make_judge_model(d: Path, texts: list[str], steps: int = 200) -> str:
    """A small chat model trained, as a user would fine-tune a judge, to answer the letter of the better of
    two answers under rlhf_ops' judge prompt: a GOOD answer beats a BAD one in either position. A real
    trained judge (not a fake): it can be wrong, and the tests measure how often."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_ops.labelers.judge import DEFAULT_TEMPLATE, judge_messages

    path = Path(make_user_model(d, texts, hidden=64, max_positions=512, name="my-judge"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    rng = random.Random(1)
    a_id, b_id = (tok.encode(x, add_special_tokens=False)[0] for x in ("A", "B"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tok.padding_side = "left"
    model.train()
    for _ in range(steps):
        batch, target = [], []
        for _ in range(16):
            t = rng.choice(TOPICS)
            good, bad = rng.choice(GOOD).format(t=t), rng.choice(BAD).format(t=t)
            first_good = rng.random() < 0.5
            a, b = (good, bad) if first_good else (bad, good)
            msgs = judge_messages(JUDGE_RUBRIC, DEFAULT_TEMPLATE, f"Tell me about {t}.", a, b)
            batch.append(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
            target.append(a_id if first_good else b_id)
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        logits = model(**enc).logits[:, -1, :]
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(target))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(path)
    return str(path)
