"""The garbage collector's pauses inside one PPO stage, three ways: TRL as is (`none`), the stage's
objects frozen before train() (`freeze`), and frozen with TRL's per-update gc.collect() freezing what
it leaves (`shim`, what rlhf_ops runs). Prints wall time and the summed GC pause (gc.callbacks) as JSON;
the three write identical weights (compare the safetensors under /tmp/prof/ppo_<mode>).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/gc_pause_ab.py none|freeze|shim SETUP_DIR

SETUP_DIR is a loop run's `setup/` (e.g. `python -m rlhf_ops +experiment=quickstart loop.iterations=0
loop.steps=[] run_dir=R` then R/setup): its sft/policy, rm_warmup/rm and 64 of its train prompts.
"""
import gc, sys, time, shutil, json, os
os.makedirs("/tmp/prof", exist_ok=True)
import pandas as pd
from omegaconf import OmegaConf
from rlhf_ops.cli import compose
from rlhf_ops.launcher import run_stage
import rlhf_ops.stages.common as common
mode = sys.argv[1]  # none | freeze | shim
src = sys.argv[2]
st = OmegaConf.to_container(compose(["+experiment=quickstart", "job=ppo", "io.output=x"]).stage.ppo, resolve=True)
pd.read_parquet(src + "/prepare/prompts_train.parquet").head(64).to_parquet(f"/tmp/prof/p64.parquet")
inputs = {"policy": src + "/sft/policy", "reward_model": src + "/rm_warmup/rm", "data": f"/tmp/prof/p64.parquet"}
orig_fit = common.fit
if mode == "none":
    common_fit = lambda trainer, collecting_modules=(): trainer.train()
elif mode == "freeze":
    common_fit = lambda trainer, collecting_modules=(): orig_fit(trainer, ())
else:
    common_fit = orig_fit
import rlhf_ops.stages.ppo as ppo
ppo.fit = common_fit
pause = {"t": 0.0, "n": 0, "s": None}
def cb(phase, info):
    if phase == "start": pause["s"] = time.perf_counter()
    else: pause["t"] += time.perf_counter() - pause["s"]; pause["n"] += 1
out = f"/tmp/prof/ppo_{mode}"
shutil.rmtree(out, ignore_errors=True)
gc.callbacks.append(cb)
t = time.perf_counter()
meta = run_stage("ppo", cfg=st, inputs=inputs, output=out, seed=0, progress=False)
print(json.dumps({"mode": mode, "wall_s": round(time.perf_counter() - t, 2), "gc_s": round(pause["t"], 2), "gc_n": pause["n"]}))
