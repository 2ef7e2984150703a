"""A training stage run on its own from the CLI under `accelerate launch` with DeepSpeed ZeRO-2
across two CPU processes (what a multi-GPU user runs, on the CI machine's two cores)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY, run_cli
from rlhf_ops.models import load_policy


@pytest.mark.distributed
def test_sft_stage_under_deepspeed_zero2_two_processes(tiny_assets, tmp_path):
    out = tmp_path / "sft_zero2"
    p = run_cli("job=sft", "launcher=zero2", f"io.policy={tiny_assets['policy']}", f"io.data={tiny_assets['sft']}",
                f"io.output={out}", f"run_dir={tmp_path / 'run'}", "stage.sft.per_device_train_batch_size=4",
                *[o for o in TINY if o.startswith("stage.sft") or o.startswith("progress")], timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    meta = json.loads((out / "stage_meta.json").read_text())
    assert meta["launcher"]["num_processes"] == 2 and meta["launcher"]["deepspeed"].endswith("zero2.json")
    assert math.isfinite(meta["metrics"]["final_loss"]) and meta["metrics"]["global_step"] == 6
    before, after = load_policy(tiny_assets["policy"]), load_policy(out)
    moved = [not torch.allclose(a, b) for a, b in zip(before.parameters(), after.parameters())]
    assert sum(moved) / len(moved) > 0.9
    assert f"output: {out}" in p.stdout
    # One process with the same global batch trains the same weights, and reports the same final loss (it is
    # averaged over both processes, not the main process's own: rlhf_ops.stages.common.log_last_step).
    one = tmp_path / "sft_one"
    p = run_cli("job=sft", f"io.policy={tiny_assets['policy']}", f"io.data={tiny_assets['sft']}", f"io.output={one}",
                f"run_dir={tmp_path / 'run1'}", "stage.sft.per_device_train_batch_size=8",
                *[o for o in TINY if o.startswith("stage.sft") or o.startswith("progress")], timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    single = json.loads((one / "stage_meta.json").read_text())["metrics"]
    assert math.isclose(meta["metrics"]["final_loss"], single["final_loss"], rel_tol=1e-5), (meta["metrics"], single)
    for a, b in zip(load_policy(one).parameters(), after.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def sft_and_rm(tiny_assets, tmp_path_factory):
    from conftest import stage_cfg
    from rlhf_ops.launcher import run_stage

    d = tmp_path_factory.mktemp("dist")
    run_stage("sft", cfg=stage_cfg("sft"), inputs={"policy": tiny_assets["policy"], "data": tiny_assets["sft"]},
              output=d / "sft", seed=0, progress=False)
    run_stage("reward", cfg=stage_cfg("reward"), inputs={"reward_model": str(d / "sft"), "data": tiny_assets["pairs"]},
              output=d / "rm", seed=0, progress=False)
    return d / "sft", d / "rm"


@pytest.mark.distributed
@pytest.mark.parametrize("job, launcher", [("ppo", "zero2"), ("ppo", "multi_process"), ("grpo", "zero2"),
                                          ("grpo", "zero3"), ("rloo", "multi_process")])
def test_online_policy_updates_under_two_processes(job, launcher, sft_and_rm, tiny_assets, tmp_path):
    """PPO, GRPO and RLOO across two CPU processes, under DeepSpeed ZeRO-2 / ZeRO-3 and plain DDP: training runs,
    and the policy alone is saved (TRL 1.12's PPO save_model fails under both: rlhf_ops.stages.ppo) and reloads."""
    sft, rm = sft_and_rm
    out = tmp_path / f"{job}_{launcher}"
    sizes = {"ppo": ["stage.ppo.total_episodes=32", "stage.ppo.per_device_train_batch_size=8",
                     "stage.ppo.num_ppo_epochs=1", "stage.ppo.response_length=16"],
             "grpo": [o for o in TINY if o.startswith("stage.grpo")],
             "rloo": [o for o in TINY if o.startswith("stage.rloo")]}[job]
    p = run_cli(f"job={job}", f"launcher={launcher}", f"io.policy={sft}", f"io.reward_model={rm}",
                f"io.data={tiny_assets['prompts']}", f"io.output={out}", *sizes, "progress=false", timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    meta = json.loads((out / "stage_meta.json").read_text())
    assert meta["launcher"]["num_processes"] == 2
    assert sorted(f.name for f in out.iterdir() if f.suffix == ".safetensors") == ["model.safetensors"]
    before, after = load_policy(sft), load_policy(out)
    assert [n for n, _ in before.named_parameters()] == [n for n, _ in after.named_parameters()]
    moved = [not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters())]
    assert sum(moved) / len(moved) > 0.5


@pytest.mark.distributed
def test_ppo_with_lora_under_ddp(sft_and_rm, tiny_assets, tmp_path):
    """PPO with a LoRA policy under plain DDP (TRL 1.12's PPOTrainer reads `.policy` on the DDP wrapper for the
    reference log-probs: rlhf_ops.stages.ppo.expose_policy): it trains, and the adapter saved is the trained one."""
    from safetensors.torch import load_file

    from rlhf_ops.lora import is_adapter

    sft, rm = sft_and_rm
    out = tmp_path / "ppo_lora_ddp"
    p = run_cli("job=ppo", "launcher=multi_process", "model.lora.r=4", f"io.policy={sft}", f"io.reward_model={rm}",
                f"io.data={tiny_assets['prompts']}", f"io.output={out}", "stage.ppo.total_episodes=32",
                "stage.ppo.per_device_train_batch_size=8", "stage.ppo.num_ppo_epochs=1", "stage.ppo.response_length=16",
                "stage.ppo.learning_rate=1e-2", "progress=false", timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    assert is_adapter(out)
    weights = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k and t.abs().sum() > 0 for k, t in weights.items())  # lora_B starts at zero
    meta = json.loads((out / "stage_meta.json").read_text())
    assert meta["launcher"]["num_processes"] == 2 and math.isfinite(meta["metrics"]["objective/kl"])


@pytest.mark.distributed
@pytest.mark.parametrize("experiment, extra", [("quickstart", []), ("tiny_online_rloo", ["model.lora.r=4"])])
def test_one_loop_iteration_under_zero2(experiment, extra, tmp_path):
    """The whole loop with every training stage (SFT, RM warm-up, RM refresh, the policy update) under DeepSpeed
    ZeRO-2 on two processes: one PPO iteration, and one RLOO iteration with LoRA adapters (policy and RM)."""
    from rlhf_ops.lora import is_adapter

    run_dir = tmp_path / "run"
    p = run_cli(f"+experiment={experiment}", *TINY, *extra, "launcher=zero2", "loop.iterations=1",
                f"run_dir={run_dir}", timeout=1500)
    assert p.returncode == 0, p.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"][0]["status"] in ("accepted", "rolled_back")
    metas = [json.loads(m.read_text()) for m in sorted(run_dir.rglob("stage_meta.json"))]
    stages = sorted(m["stage"] for m in metas)
    assert stages == sorted(["sft", "reward", "reward", {"quickstart": "ppo", "tiny_online_rloo": "rloo"}[experiment]]), stages
    assert all(m["launcher"]["num_processes"] == 2 and m["launcher"]["deepspeed"].endswith("zero2.json") for m in metas)
    candidate = run_dir / "iter_000" / "policy_update" / "policy"
    assert is_adapter(candidate) == bool(extra)
    assert math.isfinite(summary["iterations"][0]["kl"])
    # the largest worker's peak memory is recorded with the step that launched it (rlhf_ops.memory)
    row = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    update = next(r for r in row if r["node"] == "policy_update" and r["iteration"] == 0)
    assert update["peak_rss_worker_mb"] > 100 and update["peak_rss_mb"] > 0, update


@pytest.mark.distributed
@pytest.mark.trl_latest
def test_lora_under_zero3_with_every_weight_sharded(tiny_assets, sft_and_rm, tmp_path):
    """LoRA under ZeRO-3 where every parameter is partitioned (persistence threshold 0: a real model's adapter
    matrices are above DeepSpeed's default threshold, a tiny model's are not, so with the shipped zero3.json
    nothing here would be sharded). SFT's adapter is merged into its base and RLOO's adapter is saved: both
    need the gathered weights, a process's own shard of a weight is empty. PPO's adapter likewise, where TRL
    has PPO."""
    from safetensors.torch import load_file

    from rlhf_ops.launcher import CONF_DIR
    from rlhf_ops.lora import is_adapter
    from rlhf_ops.stages import trl_compat

    ds = json.loads((CONF_DIR / "deepspeed" / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3_all_sharded.json").write_text(json.dumps(ds))
    launch = ["launcher=zero3", f"launcher.deepspeed={tmp_path / 'zero3_all_sharded.json'}", "model.lora.r=4",
              "progress=false"]
    sft_out = tmp_path / "sft"
    p = run_cli("job=sft", *launch, f"io.policy={tiny_assets['policy']}", f"io.data={tiny_assets['sft']}",
                f"io.output={sft_out}", "stage.sft.per_device_train_batch_size=4", "stage.sft.max_steps=4",
                "stage.sft.learning_rate=1e-2", timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    assert not is_adapter(sft_out)
    before, after = load_policy(tiny_assets["policy"]), load_policy(sft_out)
    changed = {n for (n, a), b in zip(before.named_parameters(), after.parameters()) if not torch.equal(a, b)}
    assert changed and not any("norm" in n or "embed" in n for n in changed), changed  # only the adapted layers

    _, rm = sft_and_rm
    out = tmp_path / "rloo"
    p = run_cli("job=rloo", *launch, f"io.policy={sft_out}", f"io.reward_model={rm}", f"io.data={tiny_assets['prompts']}",
                f"io.output={out}", *[o for o in TINY if o.startswith("stage.rloo")], "stage.rloo.learning_rate=1e-2",
                timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    assert is_adapter(out)
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all(t.numel() > 0 for t in weights.values()), {k: t.shape for k, t in weights.items()}
    assert any(("lora_B" in k) and t.abs().sum() > 0 for k, t in weights.items())  # lora_B starts at zero

    if not trl_compat.has_ppo():  # the newest TRL has no PPO (its one-line refusal: tests/test_trl_compat.py)
        return
    # PPO has its own save path (policy and value model wrapped together, the adapter taken from the policy)
    out = tmp_path / "ppo"
    p = run_cli("job=ppo", *launch, f"io.policy={sft_out}", f"io.reward_model={rm}", f"io.data={tiny_assets['prompts']}",
                f"io.output={out}", "stage.ppo.total_episodes=32", "stage.ppo.per_device_train_batch_size=8",
                "stage.ppo.num_ppo_epochs=1", "stage.ppo.response_length=16", "stage.ppo.learning_rate=1e-2", timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    assert is_adapter(out)
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all(t.numel() > 0 for t in weights.values()), {k: t.shape for k, t in weights.items()}
    assert any(("lora_B" in k) and t.abs().sum() > 0 for k, t in weights.items())
