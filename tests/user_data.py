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


def make_user_model(d: Path, texts: list[str]) -> str:
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
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=256, pad_token_id=fast.pad_token_id,
                                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                                         tie_word_embeddings=True))
    out = d / "my-model"
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return str(out)


def user_texts(files: dict) -> list[str]:
    texts = []
    for path in files.values():
        for line in Path(path).read_text().splitlines():
            texts.append(line)
    return texts * 3
