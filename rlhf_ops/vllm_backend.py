"""Sampling with vLLM for collect and evaluate (`generation.backend=vllm`; CUDA only, imported only then).

    python -m rlhf_ops +experiment=tiny_online_rloo model=local model.path=DIR generation.backend=vllm

One engine per process and base model: a LoRA policy (model.lora.r > 0) is served as an adapter on the
engine of its base (vLLM's LoRARequest), so the engine is built once for the whole run; a full-weights
policy is a new model each iteration, so its engine is built for the call and released after it. The
completions are cut and decoded as the HF path cuts them (rlhf_ops.generation.add_sample): up to and
including the first EOS. Sampling is seeded per request (SamplingParams.seed), so a resumed iteration
samples what the interrupted one did, on the same GPU and vLLM version. The start-up check
(rlhf_ops.validate._generation) refuses this backend without CUDA or without vllm installed.
"""

from __future__ import annotations

import gc

from .generation import Samples, add_sample
from .lora import adapter_base, is_adapter

_ENGINES: dict[str, object] = {}   # base model path -> vllm.LLM kept for LoRA policies
_ADAPTER_IDS: dict[str, int] = {}  # adapter path -> the int id vLLM caches it under (one per path)


def _engine(model_dir: str, generation: dict, enable_lora: bool, max_lora_rank: int, trust_remote_code: bool):
    from vllm import LLM

    kwargs = dict(model=model_dir, gpu_memory_utilization=generation.get("gpu_memory_utilization", 0.3),
                  tensor_parallel_size=generation.get("tensor_parallel_size", 1), trust_remote_code=trust_remote_code,
                  enable_prefix_caching=True)
    if enable_lora:
        kwargs.update(enable_lora=True, max_lora_rank=max(8, max_lora_rank), max_loras=1)
    return LLM(**kwargs)


def release(model_dir: str | None = None) -> None:
    """Drop the engine kept for `model_dir` (all when None) and give its GPU memory back."""
    import torch

    for key in [k for k in _ENGINES if model_dir is None or k == model_dir]:
        del _ENGINES[key]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate_vllm(policy_dir, prompts: list[str], n: int, *, max_new_tokens: int, temperature: float, top_p: float,
                  seed: int, tokenizer, generation: dict, trust_remote_code: bool = False) -> Samples:
    import json
    from pathlib import Path

    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    policy_dir = str(policy_dir)
    lora = is_adapter(policy_dir)
    base = str(adapter_base(policy_dir)) if lora else policy_dir
    if lora:
        rank = int(json.loads((Path(policy_dir) / "adapter_config.json").read_text()).get("r", 8))
        llm = _ENGINES.get(base) or _ENGINES.setdefault(base, _engine(base, generation, True, rank, trust_remote_code))
        request = LoRARequest(f"policy-{len(_ADAPTER_IDS)}", _ADAPTER_IDS.setdefault(policy_dir, len(_ADAPTER_IDS) + 1),
                              policy_dir)
    else:
        llm, request = _engine(base, generation, False, 0, trust_remote_code), None
    params = SamplingParams(n=n, temperature=max(temperature, 0.0), top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                            stop_token_ids=[tokenizer.eos_token_id], skip_special_tokens=True)
    inputs = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
    outs = llm.generate(inputs, params, lora_request=request, use_tqdm=False)
    samples = Samples([], [], [], [], [], [])
    eos = tokenizer.eos_token_id
    for i, (p, o) in enumerate(zip(prompts, outs)):
        for c in o.outputs:
            ids = list(c.token_ids)
            if c.finish_reason == "stop" and eos not in ids:  # vLLM may leave the stop token out of token_ids
                ids.append(eos)
            add_sample(samples, tokenizer, i, p, ids)
    if not lora:
        del llm
        release(base)
    return samples
