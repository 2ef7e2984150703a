"""LoRA adapters (peft) for the policy and the reward model: `model.lora.r > 0`.

A LoRA checkpoint is a directory like any other checkpoint of the run (hashed in the ledger, restored
by a rollback, pruned by retention), holding peft's `adapter_config.json` and `adapter_model.safetensors`,
the tokenizer, and `lora_base.json`: the path of the full model it adapts, relative to the adapter
directory so that a run directory can be moved and resumed.

- The policy's adapter always adapts the reference (the SFT policy, or the user's model when there is no
  SFT): every policy update continues the same adapter, and the reference is the base with the adapter
  disabled, so no second copy of the model is loaded for the KL term. SFT itself (the setup step, or
  `job=sft`) trains an adapter and writes it merged: the result is the base everything later adapts.
- The reward model's adapter adapts the SFT policy's backbone loaded as a sequence classifier; its score
  head is trained in full (peft's `modules_to_save`) and saved with the adapter. A refresh continues it.
- At inference (generation, scoring, a PPO value model started from a LoRA reward model) an adapter is
  loaded onto its base and merged; `python -m rlhf_ops.export RUN_DIR` writes a merged copy to ship.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .artifacts import InputError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_FILE = "lora_base.json"
CAUSAL_LM, SEQ_CLS = "CAUSAL_LM", "SEQ_CLS"


def stage_lora(lora_cfg, stage: str) -> dict | None:
    """`model.lora` as the stage's spec carries it, or None when the stage trains in full: LoRA off (r=0),
    or off for this model (lora.policy for the policy stages, lora.reward_model for the reward stage)."""
    from dataclasses import asdict, is_dataclass

    lora = asdict(lora_cfg) if is_dataclass(lora_cfg) else dict(lora_cfg)
    if int(lora.get("r", 0)) <= 0 or not lora.get("reward_model" if stage == "reward" else "policy", True):
        return None
    lora["target_modules"] = list(lora["target_modules"])
    return lora


def is_adapter(path) -> bool:
    return bool(path) and (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path) -> Path:
    """The full checkpoint an adapter directory adapts: lora_base.json (relative to the adapter), else peft's
    own base_model_name_or_path (an adapter made elsewhere)."""
    path = Path(path)
    f = path / BASE_FILE
    if f.is_file():
        try:
            return (path / json.loads(f.read_text())["base"]).resolve()
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{f}: not a LoRA base record ({e})") from None
    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except json.JSONDecodeError as e:
        raise InputError(f"{path / ADAPTER_CONFIG}: not valid JSON ({e})") from None
    if not base:
        raise InputError(f"LoRA adapter {path}: neither {BASE_FILE} nor adapter_config.json's "
                         "base_model_name_or_path says which model it adapts")
    return Path(base)


def same_path(a, b) -> bool:
    return os.path.realpath(str(a)) == os.path.realpath(str(b))


def base_of(path) -> Path:
    """The full model under `path`: the adapter's base, or `path` itself when it holds full weights."""
    return adapter_base(path) if is_adapter(path) else Path(path)


def check_reference(spec: dict) -> None:
    """With LoRA the reference is the policy's base with the adapter disabled: an io.ref that is another
    model would be silently ignored, so it is refused."""
    ref, policy = spec["inputs"].get("ref"), spec["inputs"]["policy"]
    if spec.get("lora") and ref and not same_path(ref, base_of(policy)):
        raise InputError(f"io.ref={ref}: with LoRA (model.lora.r={spec['lora']['r']}) the reference is the policy's "
                         f"base with the adapter disabled, here {base_of(policy)}; leave io.ref unset or give that "
                         "base")


def peft_config(lora: dict, task_type: str):
    """peft's LoraConfig from `model.lora` (rlhf_ops.config.LoRAConfig). A reward model's score head is new
    (or, on a refresh, the adapter's own): it trains in full and is saved with the adapter."""
    from peft import LoraConfig

    targets = list(lora["target_modules"])
    return LoraConfig(r=int(lora["r"]), lora_alpha=float(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                      target_modules="all-linear" if targets == ["all-linear"] else targets, task_type=task_type,
                      modules_to_save=["score"] if task_type == SEQ_CLS else None, bias="none")


def trainable(path, lora: dict, task_type: str, load_full):
    """A peft model to train: the adapter in `path` continued (its own r, alpha and targets), or a fresh
    adapter on the full model in `path`. `load_full(dir)` loads a full checkpoint."""
    from peft import PeftModel, get_peft_model

    if is_adapter(path):
        return PeftModel.from_pretrained(load_full(adapter_base(path)), str(path), is_trainable=True)
    try:
        return get_peft_model(load_full(path), peft_config(lora, task_type))
    except ValueError as e:  # a target module the model does not have
        raise InputError(f"model.lora.target_modules={list(lora['target_modules'])}: {e}") from None


def merged(path, load_full):
    """An adapter loaded onto its base and merged: a plain transformers model, for inference."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_full(adapter_base(path)), str(path)).merge_and_unload()
    # peft froze the base's parameters when it wrapped them; merged, this is a plain model again, and whoever
    # trains it (PPO's value model started from a LoRA reward model) must find it trainable, as any loaded model
    return model.requires_grad_(True)


def drop_reference_adapter(model) -> None:
    """TRL's RLOO / GRPO / DPO, given a model that already has an adapter, add a frozen copy of it named
    "ref" and compute the reference log-probs with that copy: the KL would then be to the policy this
    update starts from. The loop's reference is the base (the SFT policy): without a "ref" adapter TRL
    computes it with the adapter disabled, which is exactly the base."""
    from accelerate.utils import is_peft_model

    if is_peft_model(model) and "ref" in model.peft_config:
        model.delete_adapter("ref")
        model.set_adapter("default")


def save_adapter(model, tokenizer, out_dir, base, *, main_process: bool = True, state_dict=None) -> None:
    """The adapter (peft's files), the tokenizer and lora_base.json into `out_dir`."""
    if not main_process:
        return
    out_dir = Path(out_dir)
    kwargs = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(str(out_dir), safe_serialization=True, **kwargs)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "README.md").unlink(missing_ok=True)  # peft's model-card stub
    (out_dir / BASE_FILE).write_text(json.dumps({"base": os.path.relpath(os.path.realpath(str(base)),
                                                                           os.path.realpath(str(out_dir)))}))


def check_target_modules(targets: list[str], model_dir, tiny_cfg=None) -> None:
    """Every target module names a layer of the model (checked on an empty 'meta' copy built from its config,
    no weights loaded): model_dir's config (an adapter's base), or the tiny Llama of `tiny_cfg` (model=tiny)."""
    if targets == ["all-linear"]:
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    if model_dir:
        if not (Path(model_dir).is_dir() and ((Path(model_dir) / "config.json").is_file() or is_adapter(model_dir))):
            return  # a missing or broken directory is reported by the checkpoint checks, naming its key
        config = AutoConfig.from_pretrained(str(base_of(model_dir)))
    else:
        m = tiny_cfg
        config = LlamaConfig(vocab_size=512, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                             num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
                             num_key_value_heads=min(m.num_kv_heads, m.num_heads))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
              if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d))
              or type(mod).__name__ == "Conv1D"}
    missing = [t for t in targets if t not in layers and not any(n.endswith("." + t) for n, _ in model.named_modules())]
    if missing:
        raise ValueError(f"model.lora.target_modules: {missing} not in the model ({type(model).__name__}); its "
                         f"adaptable layers are {sorted(layers)}, or use [all-linear]")


def check_adapter_dir(path, what: str) -> Path:
    """An adapter directory whose files are intact and whose base is a loadable full checkpoint."""
    from .checkpoints import check_checkpoint_dir, tensor_shapes

    path = Path(path)
    try:
        json.loads((path / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{what} LoRA adapter {path / ADAPTER_CONFIG}: not valid JSON ({e})") from None
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise InputError(f"{what} LoRA adapter {path} has no {ADAPTER_WEIGHTS}")
    try:
        tensor_shapes(weights)
    except InputError as e:
        raise InputError(f"{what} LoRA adapter: {e}") from None
    base = adapter_base(path)
    if is_adapter(base):
        raise InputError(f"{what} LoRA adapter {path}: its base {base} is an adapter too; merge it first "
                         "(python -m rlhf_ops.export)")
    check_checkpoint_dir(base, f"{what} (the base of LoRA adapter {path})")
    return path
