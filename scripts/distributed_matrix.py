"""Every training stage under every multi-process launcher, against one process doing the same work.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/distributed_matrix.py --out /tmp/dist [--stages ppo rloo ...]
        [--launchers zero2 zero3 multi_process] [--seeds 0 1] [--lora]

For each stage (sft, reward, reward with an ensemble of 2, ppo, rloo, grpo, dpo) it runs the stage on its own
from the CLI (`job=STAGE io.*=...`) on the testbed's tiny assets: in one process with seeds --seeds (the
seed-to-seed spread is the noise), then under each launcher with 2 processes and seed 0. The global batch is
the same in every run (2 processes get half the per-device batch), so the runs do the same number of
optimizer steps on the same amount of data; only the data's split over processes and the reduction order
differ. It prints, per stage, the stage's own end metric (SFT and DPO: final training loss; the reward
stage: held-out accuracy and loss; PPO: objective/scores and objective/kl; RLOO / GRPO: reward and kl; for
the policy updates also the trained policy's sampled KL to the SFT policy, 64 prompts x 4 samples),
the wall time, and whether the 2-process value lies within the one-process seeds' range widened by half
its width (written as `ok` / `OUT`). A failed run shows its exit code and the last line of its log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

# stage -> (metric keys read from stage_meta.json, sizes shared by every run of that stage)
STAGES = {
    "sft": (["final_loss"], ["stage.sft.max_steps=8"]),
    "reward": (["heldout_accuracy", "final_loss"], ["stage.reward.max_steps=8", "stage.reward.eval_fraction=0.25"]),
    "reward_ensemble": (["heldout_accuracy", "final_loss"], ["stage.reward.max_steps=8", "stage.reward.ensemble_size=2",
                                                             "stage.reward.eval_fraction=0.25"]),
    "ppo": (["objective/scores", "objective/kl"], ["stage.ppo.total_episodes=64", "stage.ppo.num_ppo_epochs=2",
                                                   "stage.ppo.response_length=16", "stage.ppo.learning_rate=3e-4"]),
    "rloo": (["reward", "kl"], ["stage.rloo.max_steps=4", "stage.rloo.max_completion_length=16",
                                "stage.rloo.num_iterations=2", "stage.rloo.learning_rate=3e-4"]),
    "grpo": (["reward", "kl"], ["stage.grpo.max_steps=4", "stage.grpo.max_completion_length=16",
                                "stage.grpo.num_iterations=2", "stage.grpo.learning_rate=3e-4"]),
    "dpo": (["final_loss"], ["stage.dpo.max_steps=6"]),
}
BATCH = {"sft": 16, "reward": 16, "reward_ensemble": 16, "ppo": 16, "rloo": 16, "grpo": 16, "dpo": 8}


def assets(out: Path) -> dict:
    """The tiny policy, SFT demos, pairs and prompts (as tests/conftest.py's tiny_assets), an SFT policy and an RM."""
    from omegaconf import OmegaConf

    from rlhf_ops.artifacts import write_table
    from rlhf_ops.config import ModelConfig
    from rlhf_ops.launcher import run_stage
    from rlhf_ops.models import build_tiny_policy, save_model, train_tokenizer
    from rlhf_ops.tasks.reviews import panel_member
    from rlhf_ops.tasks.reviews.builders import build_grammar_pairs, build_prompt_pool, build_sft_demos
    from rlhf_ops.tasks.reviews.task import prompt_splits, tokenizer_corpus
    from conftest import stage_cfg

    d = out / "assets"
    if (d / "done.json").exists():
        return json.loads((d / "done.json").read_text())
    d.mkdir(parents=True, exist_ok=True)
    splits = prompt_splits(0, 64, 8, 8)
    tok = train_tokenizer(tokenizer_corpus(0, 600), 400)
    save_model(build_tiny_policy(OmegaConf.structured(ModelConfig(hidden_size=32, intermediate_size=64)), tok, 0), tok,
               d / "policy")
    a = {"policy": str(d / "policy"),
         "sft": str(write_table(build_sft_demos(splits["train"], 2, 0), d / "sft.parquet")),
         "pairs": str(write_table(build_grammar_pairs(splits["train"], 128, panel_member("careful", 0), 0),
                                  d / "pairs.parquet")),
         "prompts": str(write_table(build_prompt_pool(splits["train"]), d / "prompts.parquet"))}
    run_stage("sft", cfg=stage_cfg("sft", max_steps=30), inputs={"policy": a["policy"], "data": a["sft"]},
              output=d / "sft_policy", seed=0, progress=False)
    run_stage("reward", cfg=stage_cfg("reward", max_steps=20), inputs={"reward_model": str(d / "sft_policy"),
              "data": a["pairs"]}, output=d / "rm", seed=0, progress=False)
    a.update(sft_policy=str(d / "sft_policy"), rm=str(d / "rm"))
    (d / "done.json").write_text(json.dumps(a))
    return a


def command(stage: str, a: dict, out: Path, launcher: str, seed: int, lora: bool) -> list[str]:
    job = "reward" if stage.startswith("reward") else stage
    procs = 1 if launcher == "local" else 2
    per_device = BATCH[stage] // procs
    io = {"sft": [f"io.policy={a['policy']}", f"io.data={a['sft']}"],
          "reward": [f"io.reward_model={a['sft_policy']}", f"io.data={a['pairs']}"],
          "ppo": [f"io.policy={a['sft_policy']}", f"io.reward_model={a['rm']}", f"io.data={a['prompts']}"],
          "rloo": [f"io.policy={a['sft_policy']}", f"io.reward_model={a['rm']}", f"io.data={a['prompts']}"],
          "grpo": [f"io.policy={a['sft_policy']}", f"io.reward_model={a['rm']}", f"io.data={a['prompts']}"],
          "dpo": [f"io.policy={a['sft_policy']}", f"io.data={a['pairs']}"]}[job]
    extra = [f"stage.{job}.per_device_train_batch_size={per_device}"]
    if job in ("rloo", "grpo"):  # the group size must divide the per-device batch; 4 completions per prompt
        extra.append(f"stage.{job}.num_generations=4")
    if lora:
        extra += ["model.lora.r=4"]
    return [sys.executable, "-m", "rlhf_ops", f"job={job}", f"launcher={launcher}", *io, *STAGES[stage][1], *extra,
            f"io.output={out}", f"seed={seed}", "progress=false", "tracking=disabled", "overwrite=true"]


def policy_kl(policy: Path, a: dict) -> float:
    """The trained policy's sampled KL to the SFT policy it started from: 64 prompts x 4 samples at temperature
    0.7, a fixed seed (the trainers' own objective/kl is one batch's estimate, too noisy to compare runs)."""
    import numpy as np
    import pandas as pd

    from rlhf_ops.generation import generate, sequence_stats
    from rlhf_ops.models import load_policy, load_tokenizer

    prompts = pd.read_parquet(a["prompts"])["prompt"].tolist()[:64]
    tok, ref, pol = load_tokenizer(a["sft_policy"]), load_policy(a["sft_policy"]), load_policy(policy)
    s = generate(str(policy), prompts, 4, max_new_tokens=16, temperature=0.7, seed=123, model=pol, tokenizer=tok)
    return float(np.mean(sequence_stats(pol, ref, tok, s.prompts, s.response_ids, temperature=0.7)["kl"]))


def run_one(stage: str, a: dict, root: Path, launcher: str, seed: int, lora: bool) -> dict:
    out = root / f"{stage}_{launcher}_s{seed}{'_lora' if lora else ''}"
    if (out / "stage_meta.json").exists():
        meta = json.loads((out / "stage_meta.json").read_text())
        r = {"ok": True, "wall_s": meta["wall_s"], **{k: meta["metrics"].get(k) for k in STAGES[stage][0]}}
        if stage in ("ppo", "rloo", "grpo", "dpo"):
            r["policy_kl"] = policy_kl(out, a)
        return r
    t0 = time.time()
    p = subprocess.run(command(stage, a, out, launcher, seed, lora), cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "WANDB_MODE": "disabled"})
    if p.returncode != 0:
        return {"ok": False, "rc": p.returncode, "error": (p.stderr.strip().splitlines() or ["?"])[-1][:300],
                "wall_s": round(time.time() - t0, 1)}
    return run_one(stage, a, root, launcher, seed, lora)  # read back as a finished run


# Stages whose training is deterministic given the seed (no sampling): the same seed in one process and in two
# must give the same weights up to the reduction order; their starting point, to scale the gap by.
DETERMINISTIC = {"sft": "policy", "dpo": "sft_policy", "reward": "sft_policy"}


def weight_gap(a: Path, b: Path, start: Path) -> str:
    """max |w_a - w_b| over every weight two runs share, against how far run a moved from `start` (the score
    head, new in a reward model, is compared to zero)."""
    from safetensors.torch import load_file

    wa, wb, w0 = (load_file(d / "model.safetensors") for d in (a, b, start))
    gap = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    moved = max((wa[k] - w0.get(k, 0 * wa[k])).abs().max().item() for k in wa if k in w0 or "score" in k)
    return f"max weight difference {gap:.2g} (the training moved the weights up to {moved:.2g})"


def mean_sd(x: list[float]) -> str:
    import statistics
    return f"{statistics.mean(x):.4g} ± {statistics.stdev(x):.2g} (n={len(x)})"


def welch_t(y: list[float], x: list[float]) -> float:
    """Welch's t of mean(y) - mean(x); |t| above about 2.1 at these n is a difference beyond seed noise (p < .05)."""
    import statistics
    se = (statistics.variance(x) / len(x) + statistics.variance(y) / len(y)) ** 0.5
    return (statistics.mean(y) - statistics.mean(x)) / se if se else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/dist")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    ap.add_argument("--launchers", nargs="+", default=["zero2", "zero3", "multi_process"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--launcher-seeds", type=int, nargs="+", default=[0],
                    help="seeds of the 2-process runs (more than one: the 2-process spread is compared too)")
    ap.add_argument("--lora", action="store_true", help="with model.lora.r=4 (policy and reward adapters)")
    a = ap.parse_args()
    root = Path(a.out)
    assets_ = assets(root)
    results = {}
    for stage in a.stages:
        keys = STAGES[stage][0]
        one = [run_one(stage, assets_, root, "local", s, a.lora) for s in a.seeds]
        results[stage] = {"local": one}
        for launcher in a.launchers:
            results[stage][launcher] = [run_one(stage, assets_, root, launcher, s, a.lora) for s in a.launcher_seeds]
        (root / "results.json").write_text(json.dumps(results, indent=1, default=str))
        print(f"\n{stage}: " + ", ".join(keys), flush=True)
        for s, r in zip(a.seeds, one):
            kl = f", policy KL to SFT {r['policy_kl']:.3f}" if r.get("policy_kl") is not None else ""
            print(f"  1 process, seed {s}: " + (", ".join(f"{r[k]:.4g}" for k in keys) + f"{kl}  ({r['wall_s']} s)"
                                                 if r["ok"] else f"FAILED rc={r['rc']}: {r['error']}"), flush=True)
        for launcher, (s, r) in ((x, y) for x in a.launchers for y in zip(a.launcher_seeds, results[stage][x])):
            if not r["ok"]:
                print(f"  2 processes, {launcher}, seed {s}: FAILED rc={r['rc']}: {r['error']}", flush=True)
                continue
            verdict = []
            for k in keys:
                vals = [x[k] for x in one if x["ok"] and x.get(k) is not None]
                lo, hi = (min(vals), max(vals)) if vals else (float("nan"), float("nan"))
                pad = (hi - lo) / 2
                verdict.append("ok" if vals and lo - pad <= r[k] <= hi + pad else "OUT")
            kl = f", policy KL to SFT {r['policy_kl']:.3f}" if r.get("policy_kl") is not None else ""
            print(f"  2 processes, {launcher}, seed {s}: " + ", ".join(f"{r[k]:.4g}" for k in keys) + kl
                  + f"  ({r['wall_s']} s) [{' '.join(verdict)}]", flush=True)
            lora = "_lora" if a.lora else ""
            one_dir, two_dir = root / f"{stage}_local_s{s}{lora}", root / f"{stage}_{launcher}_s{s}{lora}"
            if stage in DETERMINISTIC and not a.lora and (one_dir / "model.safetensors").is_file():
                print(f"    against 1 process, seed {s}: "
                      + weight_gap(one_dir, two_dir, Path(assets_[DETERMINISTIC[stage]])), flush=True)
        for launcher in (x for x in a.launchers if len(a.launcher_seeds) > 1 and len(a.seeds) > 1):
            for k in [*keys, "policy_kl"]:
                x = [r[k] for r in one if r["ok"] and r.get(k) is not None]
                y = [r[k] for r in results[stage][launcher] if r["ok"] and r.get(k) is not None]
                if len(x) > 1 and len(y) > 1:
                    print(f"  {k}: 1 process {mean_sd(x)}, {launcher} {mean_sd(y)}, Welch t {welch_t(y, x):+.2f}",
                          flush=True)


if __name__ == "__main__":
    main()
