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
