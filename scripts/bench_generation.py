"""Tokens per second of collect's sampling: HF generate against vLLM (generation.backend=vllm), alternating,
on the same policy and prompts. Needs CUDA and vllm for the vLLM side (run it on a GPU machine).

    python scripts/bench_generation.py --policy DIR --prompts data/instructions/prompts.jsonl [--n 4]
        [--max-new-tokens 128] [--pairs 3] [--batch-size 64]

Prompts are rendered as collect renders them (the tokenizer's chat template when it has one). Each pair
times one HF run and one vLLM run (engine start-up reported apart from sampling) and prints generated
tokens per second for both and their ratio; the median over pairs is the figure.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=128, help="prompts used")
    a = ap.parse_args()

    import torch

    from rlhf_ops.formats import has_chat_template, read_rendered
    from rlhf_ops.generation import generate
    from rlhf_ops.models import load_policy, load_tokenizer
    from rlhf_ops.vllm_backend import _ENGINES, release

    tok = load_tokenizer(a.policy)
    prompts = read_rendered(a.prompts, "prompts", tok)["prompt"].tolist()[: a.limit]
    print(f"{len(prompts)} prompts x {a.n} completions, <= {a.max_new_tokens} new tokens; chat template: "
          f"{has_chat_template(tok)}; {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}")
    model = load_policy(a.policy).to("cuda" if torch.cuda.is_available() else "cpu")
    gen = {"backend": "vllm", "gpu_memory_utilization": 0.5, "tensor_parallel_size": 1}
    ratios = []
    for k in range(a.pairs):
        t0 = time.perf_counter()
        h = generate(a.policy, prompts, a.n, max_new_tokens=a.max_new_tokens, seed=k, model=model, tokenizer=tok,
                     batch_size=a.batch_size)
        t_hf = time.perf_counter() - t0
        t0 = time.perf_counter()
        v = generate(a.policy, prompts, a.n, max_new_tokens=a.max_new_tokens, seed=k, tokenizer=tok, generation=gen)
        t_v = time.perf_counter() - t0  # a full-weights policy builds its engine inside the call
        hf_tps, v_tps = sum(h.n_tokens) / t_hf, sum(v.n_tokens) / t_v
        ratios.append(v_tps / hf_tps)
        print(f"pair {k}: HF {sum(h.n_tokens)} tokens in {t_hf:.1f} s = {hf_tps:.0f} tok/s; vLLM {sum(v.n_tokens)} "
              f"tokens in {t_v:.1f} s (engine start included) = {v_tps:.0f} tok/s; ratio {v_tps / hf_tps:.2f}",
              flush=True)
    print(f"median vLLM/HF tokens per second: {statistics.median(ratios):.2f} over {a.pairs} pairs "
          f"(engines kept: {len(_ENGINES)})")
    release()


if __name__ == "__main__":
    main()
