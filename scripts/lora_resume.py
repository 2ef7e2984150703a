"""A LoRA run killed like `kill -9` and resumed reaches the uninterrupted run's summary, on a real model directory.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/lora_resume.py --model /work/models/smollm2-135m-instruct \
        --out /tmp/lora_resume [--method rloo] [--r 16] [--fault 0:policy_update:after]

Runs the testbed loop (`task=reviews`, shrunk as in scripts/lora_memory.py) on the model directory with LoRA on
the policy and the reward model, two iterations, twice from scratch: once uninterrupted, once killed at --fault
(the fault hook exits like SIGKILL: no cleanup) and resumed with the same command. Prints, per iteration, both
runs' status, gold, proxy, KL and length and whether they agree (relative 1e-6), then whether the final
policies are the same adapter over the same SFT base. Exit status 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from lora_memory import EXPERIMENT, SHRINK  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default="/tmp/lora_resume")
    ap.add_argument("--method", choices=sorted(EXPERIMENT), default="rloo")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--fault", default="0:policy_update:after")
    a = ap.parse_args()
    out = Path(a.out)
    args = [sys.executable, "-m", "rlhf_ops", f"+experiment={EXPERIMENT[a.method]}", "model=local",
            f"model.path={a.model}", "stage=small", *[s for s in SHRINK if not s.startswith("loop.iterations=")],
            "loop.iterations=2", f"model.lora.r={a.r}", "stage.ppo.learning_rate=3e-5", "stage.rloo.learning_rate=3e-5"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    ref, killed = out / "uninterrupted", out / "killed"
    for d in (ref, killed):
        if d.exists():
            raise SystemExit(f"{d} exists; remove it (or pass another --out)")
    walls = {}
    t0 = time.time()
    p = subprocess.run([*args, f"run_dir={ref}"], cwd=REPO, env=env, capture_output=True, text=True)
    walls["uninterrupted"] = time.time() - t0
    if p.returncode:
        raise SystemExit(f"the uninterrupted run failed: {p.stderr.strip().splitlines()[-1:]}")
    t0 = time.time()
    p = subprocess.run([*args, f"run_dir={killed}"], cwd=REPO, env={**env, "RLHF_OPS_FAULT": a.fault},
                       capture_output=True, text=True)
    if p.returncode != 137:
        raise SystemExit(f"the run with RLHF_OPS_FAULT={a.fault} did not die like kill -9 (exit {p.returncode})")
    p = subprocess.run([*args, f"run_dir={killed}"], cwd=REPO, env=env, capture_output=True, text=True)
    walls["killed + resumed"] = time.time() - t0
    if p.returncode:
        raise SystemExit(f"the resumed run failed: {p.stderr.strip().splitlines()[-1:]}")

    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, killed))
    same = len(sa["iterations"]) == len(sb["iterations"]) == 2
    print(f"{a.method}, LoRA r={a.r}, {a.model}, killed at {a.fault}; wall: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()))
    print("iteration | run | status | gold | proxy | KL | length")
    for x, y in zip(sa["iterations"], sb["iterations"]):
        for name, it in (("uninterrupted", x), ("resumed", y)):
            print(f"{it['iteration']} | {name} | {it['status']} | "
                  + " | ".join(f"{it[k]:.6g}" for k in ("gold", "proxy", "kl", "length")))
        agree = x["status"] == y["status"] and all(
            math.isclose(x[k], y[k], rel_tol=1e-6, abs_tol=1e-9) for k in ("gold", "proxy", "kl", "length"))
        print(f"  iteration {x['iteration']}: {'the same' if agree else 'DIFFERENT'}")
        same &= agree
    from rlhf_ops.lora import adapter_base, is_adapter

    fa, fb = sa["final"]["policy"], sb["final"]["policy"]
    adapters = is_adapter(fa) and is_adapter(fb)
    bases = adapters and Path(adapter_base(fb)).resolve() == Path(sb["outputs"]["sft_policy"]).resolve()
    print(f"final policies: {'adapters' if adapters else 'NOT both adapters'}; the resumed run's adapter is over its "
          f"own SFT policy: {bases}")
    sys.exit(0 if same and adapters and bases else 1)


if __name__ == "__main__":
    main()
