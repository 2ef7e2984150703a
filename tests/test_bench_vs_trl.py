"""scripts/bench_vs_trl.py --fast: rlhf_ops' stages and plain TRL scripts (scripts/raw_trl/) train the
same weights, tensor for tensor. Timings are not asserted: they are not stable on a shared machine."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench_vs_trl.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_vs_trl", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_fast(work: Path, stages: str) -> dict:
    out = work / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--fast", "--stages", stages, "--work", str(work), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    # exit 1 with every stage in the JSON: some weights differ (the tests below say which); else a crash
    results = {r["stage"]: r for r in json.loads(out.read_text())["results"]} if out.is_file() else {}
    assert proc.returncode == 0 or set(results) == set(stages.split(",")), proc.stdout[-3000:] + proc.stderr[-3000:]
    return results


@pytest.fixture(scope="module")
def fast_stages(tmp_path_factory):
    from rlhf_ops.stages.trl_compat import has_ppo

    return _run_fast(tmp_path_factory.mktemp("bench_fast"), "sft,reward,dpo" + (",ppo" if has_ppo() else ""))


@pytest.mark.parametrize("stage", [*(pytest.param(s, marks=pytest.mark.trl_latest) for s in ("sft", "reward", "dpo")),
                                   "ppo"])
def test_stage_weights_match_plain_trl(fast_stages, stage):
    if stage not in fast_stages:
        pytest.skip("no PPO in this TRL (rlhf_ops.stages.trl_compat)")
    r = fast_stages[stage]
    (pair,) = r["pairs"]
    assert pair["weights"]["identical"], pair["weights"]
    assert pair["weights"]["n_tensors"] > 0
    assert pair["ours"]["peak_rss_mb"] > 0 and pair["raw"]["wall_s"] > 0


@pytest.mark.slow
def test_iteration_matches_plain_trl(tmp_path):
    (pair,) = _run_fast(tmp_path, "iteration")["iteration"]["pairs"]
    assert pair["completions_identical"]
    assert pair["rm_weights"]["identical"], pair["rm_weights"]
    assert pair["weights"]["identical"], pair["weights"]


def test_raw_scripts_do_not_import_rlhf_ops():
    for path in sorted((REPO / "scripts" / "raw_trl").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "rlhf_ops" for n in names), f"{path.name} imports rlhf_ops"


def test_compare_dirs_reports_a_difference(tmp_path):
    import torch
    from safetensors.torch import save_file

    bench = _bench_module()
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    w = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3), "y": torch.ones(4)}
    save_file(w, str(a / "model.safetensors"))
    save_file({k: v.clone() for k, v in w.items()}, str(b / "model.safetensors"))
    save_file({"x": w["x"] + 1e-3, "y": w["y"]}, str(c / "model.safetensors"))
    assert bench.compare_dirs(a, b) == {"identical": True, "n_tensors": 2}
    diff = bench.compare_dirs(a, c)
    assert not diff["identical"] and diff["differing"] == ["x"] and diff["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert not bench.compare_dirs(a, tmp_path)["identical"]  # no weights at all is not a match


def test_gradient_checkpointing_flag_follows_ours():
    bench = _bench_module()
    assert bench.gc_flag({"learning_rate": 1e-3}) == "trl-default"  # unset: TRL 1.12's default (on)
    assert bench.gc_flag({"gradient_checkpointing": False}) == "off"
    assert bench.gc_flag({"trl": {"gradient_checkpointing": True}}) == "on"
