"""LoRA (model.lora.r > 0): every stage trains an adapter (SFT's merged), the reference is the base with the
adapter disabled (not TRL's copy of the starting adapter), adapters load wherever a checkpoint does, a
run resumes and exports, and a bad target module is refused at start-up naming the key."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import TINY, run_cli, stage_cfg
from rlhf_ops.launcher import run_stage
from rlhf_ops.lora import BASE_FILE, adapter_base, is_adapter, same_path, save_adapter
from rlhf_ops.models import load_policy, load_sequence_classifier, load_tokenizer

from rlhf_ops.stages.trl_compat import has_ppo

# Every test here runs on the newest TRL too (its RLOO/GRPO/DPO add the "ref" adapter this module removes); PPO's
# parts only where TRL has PPO.
pytestmark = pytest.mark.trl_latest
needs_ppo = pytest.mark.skipif(not has_ppo(), reason="this TRL has no PPO (removed in 1.13)")

LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["all-linear"], "policy": True, "reward_model": True}


def _stage(name, inputs, out, lora=LORA, **changes):
    return run_stage(name, cfg=stage_cfg(name, **changes), inputs={k: str(v) for k, v in inputs.items()}, output=out,
                     seed=0, progress=False, lora=lora)


@pytest.fixture(scope="module")
def lora_models(tiny_assets, tmp_path_factory):
    """SFT with LoRA (merged), a LoRA reward model, and a policy adapter that is far from its base."""
    from peft import get_peft_model

    from rlhf_ops.lora import CAUSAL_LM, peft_config

    d = tmp_path_factory.mktemp("lora")
    _stage("sft", {"policy": tiny_assets["policy"], "data": tiny_assets["sft"]}, d / "sft")
    _stage("reward", {"reward_model": d / "sft", "data": tiny_assets["pairs"]}, d / "rm")
    model = get_peft_model(load_policy(d / "sft"), peft_config(LORA, CAUSAL_LM))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero (the adapter is the identity); move it well away
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    (d / "moved").mkdir()
    save_adapter(model, load_tokenizer(d / "sft"), d / "moved", d / "sft")
    return d


def test_sft_merges_and_every_other_stage_writes_an_adapter_over_the_reference(lora_models, tiny_assets):
    d = lora_models
    assert not is_adapter(d / "sft") and (d / "sft" / "model.safetensors").is_file()  # merged: a full model
    before, after = load_policy(tiny_assets["policy"]), load_policy(d / "sft")
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))
    assert is_adapter(d / "rm") and same_path(adapter_base(d / "rm"), d / "sft")
    assert json.loads((d / "rm" / BASE_FILE).read_text()) == {"base": "../sft"}  # relative: the run dir can move
    rm = load_sequence_classifier(d / "rm")  # merged onto the base, with its trained score head
    scratch = load_sequence_classifier(d / "sft")
    assert not torch.equal(rm.score.weight, scratch.score.weight)
    for name in ("ppo", "rloo", "grpo", "dpo", "rejection_sampling"):
        if name == "ppo" and not has_ppo():
            continue
        inputs = {"policy": d / "moved"}
        inputs.update({"ppo": {"reward_model": d / "rm", "data": tiny_assets["prompts"]},
                       "rloo": {"reward_model": d / "rm", "data": tiny_assets["prompts"], "ref": d / "sft"},
                       "grpo": {"reward_model": d / "rm", "data": tiny_assets["prompts"], "ref": d / "sft"},
                       "dpo": {"data": tiny_assets["pairs"], "ref": d / "sft"},
                       "rejection_sampling": {"data": tiny_assets["sft"]}}[name])
        meta = _stage(name, inputs, d / f"out_{name}")
        out = d / f"out_{name}"
        if name == "ppo":  # the value model, started from the LoRA RM (merged), trains in full beside the adapter
            value = sum(p.numel() for p in load_sequence_classifier(d / "rm").parameters())
            assert meta["metrics"]["trainable_parameters"] > value, (meta["metrics"]["trainable_parameters"], value)
        assert is_adapter(out) and same_path(adapter_base(out), d / "sft"), name  # still adapts the reference
        assert not list(out.glob("model*.safetensors")), name
        a, b = load_policy(d / "moved"), load_policy(out)
        assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters())), name


def test_group_rl_kl_is_to_the_base_not_to_the_starting_adapter(lora_models, tiny_assets):
    """TRL's GRPO, given a model with an adapter, adds a frozen copy named "ref": its KL would start at 0 however
    far the adapter is from the SFT policy. Ours starts at the KL between the moved adapter and its base."""
    d = lora_models
    inputs = {"reward_model": d / "rm", "data": tiny_assets["prompts"], "ref": d / "sft"}
    moved = _stage("grpo", {"policy": d / "moved", **inputs}, d / "grpo_moved", beta=0.1)["metrics"]
    fresh = _stage("grpo", {"policy": d / "sft", **inputs}, d / "grpo_fresh", beta=0.1)["metrics"]
    assert fresh["first_kl"] < 1e-4  # a fresh adapter is the identity: the policy is its base
    assert moved["first_kl"] > 100 * max(fresh["first_kl"], 1e-6), (moved["first_kl"], fresh["first_kl"])


def test_a_reference_other_than_the_base_is_refused(lora_models, tiny_assets):
    from rlhf_ops.artifacts import InputError

    d = lora_models
    with pytest.raises(InputError, match="io.ref=.*the reference is the policy's base"):
        _stage("dpo", {"policy": d / "moved", "ref": tiny_assets["policy"], "data": tiny_assets["pairs"]}, d / "x")
    assert not (d / "x").exists()


def test_evaluation_reference_is_the_base_with_the_adapter_disabled(lora_models):
    from rlhf_ops.evaluation import policy_and_reference

    d = lora_models
    policy, ref = policy_and_reference(str(d / "moved"), str(d / "sft"))
    ids = torch.tensor([[5, 6, 7, 8]])
    base = load_policy(d / "sft")
    assert torch.allclose(ref(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-5)
    assert torch.allclose(policy(input_ids=ids).logits, load_policy(d / "moved")(input_ids=ids).logits, atol=1e-4)
    assert not torch.allclose(policy(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-3)
    full, none = policy_and_reference(str(d / "sft"), str(d / "sft"))
    assert none is None  # full weights: the caller loads the reference itself


def test_export_merges_an_adapter_into_a_full_model(lora_models, tmp_path):
    from rlhf_ops.export import main

    d = lora_models
    assert main([str(d / "moved"), "--out", str(tmp_path / "merged")]) == 0
    assert not is_adapter(tmp_path / "merged") and (tmp_path / "merged" / "config.json").is_file()
    ids = torch.tensor([[5, 6, 7, 8]])
    a = load_policy(tmp_path / "merged")(input_ids=ids).logits
    assert torch.allclose(a, load_policy(d / "moved")(input_ids=ids).logits, atol=1e-5)
    assert main([str(d / "moved"), "--out", str(tmp_path / "merged")]) == 1  # never overwritten unasked


def test_bad_lora_settings_are_refused_at_start_up_naming_the_key(tmp_path):
    for bad, key in ((["model.lora.r=4", "model.lora.target_modules=[q_proj,c_attn]"], "model.lora.target_modules"),
                     (["model.lora.r=4", "model.lora.alpha=0"], "model.lora.alpha"),
                     (["generation.backend=vllm"], "generation.backend")):
        p = run_cli("+experiment=tiny_online_rloo", *TINY, *bad, f"run_dir={tmp_path / 'r'}")
        assert p.returncode != 0 and key in p.stderr.strip().splitlines()[-1], p.stderr[-2000:]
        assert not (tmp_path / "r" / "setup").exists()  # nothing built


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine vllm may be there")
def test_vllm_backend_without_cuda_names_the_key():
    from omegaconf import OmegaConf

    from rlhf_ops.validate import _generation

    with pytest.raises(ValueError, match="generation.backend=vllm needs a CUDA GPU"):
        _generation(OmegaConf.create({"generation": {"backend": "vllm", "gpu_memory_utilization": 0.3,
                                                     "tensor_parallel_size": 1}}))


@pytest.mark.parametrize("experiment", [pytest.param("quickstart", marks=needs_ppo), "tiny_online_rloo"])
def test_loop_with_lora_resumes_after_a_kill_to_the_uninterrupted_summary(experiment, tmp_path):
    """PPO and RLOO loops with LoRA on policy and RM, killed after iteration 0's policy update (like kill -9) and
    resumed with the same command, end where the uninterrupted run ends; the policies are adapters over the SFT
    policy and the run exports."""
    args = [f"+experiment={experiment}", *TINY, "model.lora.r=4", "loop.iterations=2", "stage.ppo.learning_rate=3e-3",
            "stage.rloo.learning_rate=3e-3"]
    ref = run_cli(*args, f"run_dir={tmp_path / 'ref'}")
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = run_cli(*args, f"run_dir={tmp_path / 'k'}", env={"RLHF_OPS_FAULT": "0:policy_update:after"})
    assert killed.returncode != 0
    resumed = run_cli(*args, f"run_dir={tmp_path / 'k'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("ref", "k"))
    for x, y in zip(a["iterations"], b["iterations"]):
        assert x["status"] == y["status"]
        for key in ("gold", "proxy", "kl", "length"):
            assert math.isclose(x[key], y[key], rel_tol=1e-6, abs_tol=1e-9), (key, x[key], y[key])
    final = b["final"]["policy"]
    assert is_adapter(final) and same_path(adapter_base(final), b["outputs"]["sft_policy"])
    assert b["iterations"][-1]["kl"] > 0
    p = subprocess.run([sys.executable, "-m", "rlhf_ops.export", str(tmp_path / "k")], capture_output=True, text=True)
    assert p.returncode == 0 and (tmp_path / "k" / "export" / "policy" / "model.safetensors").is_file(), p.stderr
