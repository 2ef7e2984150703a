"""Peak memory of one loop iteration with and without LoRA, for PPO and RLOO, on a real model directory.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/lora_memory.py --model /work/models/smollm2-135m-instruct \
        --out /tmp/lora_mem [--methods ppo rloo] [--r 16]

For each method and LoRA off/on it runs the testbed loop (`task=reviews`, shrunk) on the model directory,
stops it after setup (SFT, reward-model warm-up, baseline) with the fault hook that kills the process like
`kill -9` before iteration 0's collect, then resumes it under `/usr/bin/time -v`: the resumed process runs
exactly one iteration (collect, label, RM refresh, policy update, evaluate, gate), so its maximum resident
set size is the iteration's peak. Prints one table row per run: method, LoRA, peak RSS, the iteration's wall
time, the policy update's trainable parameters (PPO's include its value model, trained in full either way);
then a table of each step's own peak (metrics.jsonl's peak_rss_mb: rlhf_ops.memory).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SHRINK = ["task.n_train_prompts=64", "task.n_eval_prompts=8", "task.n_gold_eval_prompts=16", "task.sft_demos_per_prompt=1",
          "task.n_offline_pairs=64", "task.n_anchors=4", "stage.sft.max_steps=4", "stage.reward.max_steps=4",
          "stage.sft.per_device_train_batch_size=8", "stage.sft.gradient_accumulation_steps=1",
          "stage.reward.per_device_train_batch_size=8", "stage.reward.gradient_accumulation_steps=1",
          "stage.sft.max_length=256", "stage.reward.max_length=256",
          "loop.prompts_per_iteration=16", "loop.eval_samples_per_prompt=1",
          "stage.ppo.total_episodes=32", "stage.ppo.per_device_train_batch_size=8",
          "stage.ppo.gradient_accumulation_steps=1", "stage.ppo.num_ppo_epochs=1", "stage.ppo.response_length=32",
          "stage.ppo.local_rollout_forward_batch_size=8",
          "stage.rloo.max_steps=2", "stage.rloo.per_device_train_batch_size=8", "stage.rloo.gradient_accumulation_steps=1",
          "stage.rloo.max_completion_length=32", "stage.rloo.num_iterations=1",
          "loop.iterations=1", "tracking=disabled", "progress=false"]
EXPERIMENT = {"ppo": "tiny_online_ppo", "rloo": "tiny_online_rloo"}


def run(method: str, lora: int, model: str, out: Path) -> dict:
    run_dir = out / f"{method}_lora{lora}"
    args = [sys.executable, "-m", "rlhf_ops", f"+experiment={EXPERIMENT[method]}", "model=local", f"model.path={model}",
            "stage=small", *SHRINK, f"model.lora.r={lora}", f"run_dir={run_dir}"]
    if lora:  # LoRA's usual larger step (the presets are for full fine-tuning)
        args += ["stage.ppo.learning_rate=3e-5", "stage.rloo.learning_rate=3e-5"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    if run_dir.exists():  # a measurement is of a fresh iteration only: never of a resume that finds it done
        raise SystemExit(f"{run_dir} exists; remove it (or pass another --out) to measure again")
    subprocess.run(args, cwd=REPO, env={**env, "RLHF_OPS_FAULT": "0:collect:before"}, capture_output=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary["baseline"] is None or summary["iterations"]:
        raise SystemExit(f"{run_dir}: setup did not stop before iteration 0 (see {run_dir / 'logs'})")
    p = subprocess.run(["/usr/bin/time", "-v", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        return {"method": method, "lora": lora, "error": p.stderr.strip().splitlines()[-25:]}
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", p.stderr).group(1)
    meta = json.loads((run_dir / "iter_000" / "policy_update" / "policy" / "stage_meta.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = {r["node"]: r["peak_rss_mb"] / 1024 for r in rows if r["iteration"] == 0 and "peak_rss_mb" in r}
    return {"method": method, "lora": lora, "peak_rss_gb": rss_kb / 1024 ** 2, "wall": wall,
            "trainable": meta["metrics"].get("trainable_parameters"),
            "iteration": summary["iterations"][0] if summary["iterations"] else None, "step_peak_gb": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default="/tmp/lora_mem")
    ap.add_argument("--methods", nargs="+", default=["ppo", "rloo"], choices=list(EXPERIMENT))
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--lora-only", action="store_true", help="measure only the LoRA runs")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in a.methods:
        for lora in ((a.r,) if a.lora_only else (0, a.r)):
            r = run(method, lora, a.model, out)
            rows.append(r)
            (out / "results.json").write_text(json.dumps(rows, indent=1, default=str))
            if "error" in r:
                print(f"{method} lora={lora}: FAILED\n" + "\n".join(r["error"]), flush=True)
            else:
                it = r["iteration"] or {}
                print(f"| {method} | {'r=' + str(lora) if lora else 'off'} | {r['peak_rss_gb']:.2f} GB | {r['wall']} | "
                      f"{r['trainable']} | {it.get('status')} kl={it.get('kl')} |", flush=True)
    done = [r for r in rows if "error" not in r]
    if done:  # each step's own peak (rlhf_ops.memory: the loop process's peak RSS, reset at the step's start)
        steps = list(done[0]["step_peak_gb"])
        print("\n| step | " + " | ".join(f"{r['method']} {'r=' + str(r['lora']) if r['lora'] else 'off'}" for r in done)
              + " |\n|---|" + "---|" * len(done))
        for step in steps:
            print(f"| {step} | " + " | ".join(f"{r['step_peak_gb'].get(step, float('nan')):.2f} GB" for r in done) + " |")


if __name__ == "__main__":
    main()
