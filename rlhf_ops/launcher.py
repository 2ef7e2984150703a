"""Running a training stage: in-process, or under `accelerate launch` (several processes, DeepSpeed).

The orchestrator stays one process. `run_stage` validates the stage's inputs, trains into a
temporary directory, writes `stage_meta.json` there and renames it into place, so an output
directory is either absent, a `.tmp` leftover, or finished. With `launcher.num_processes > 1` or a
DeepSpeed config the stage's `train(spec)` runs inside `accelerate launch -m rlhf_ops.stages.worker`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from . import console, gcpolicy, memory
from .artifacts import atomic_dir, check_output, write_meta

STAGE_NAMES = ("sft", "reward", "ppo", "dpo", "rloo", "grpo", "rejection_sampling")


def stage_module(name: str):
    """The stage's module (rlhf_ops.stages.<name>), imported on first use: it imports torch and TRL, which
    the start-up checks (resolve_deepspeed among them) must not wait for."""
    import importlib

    if name not in STAGE_NAMES:
        raise ValueError(f"unknown stage '{name}' (use one of {sorted(STAGE_NAMES)})")
    return importlib.import_module(f"rlhf_ops.stages.{name}")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
RESULT_FILE = "_result.json"
SPEC_FILE = "_spec.json"


class StageFailed(RuntimeError):
    pass


def check_written(stage: str, tmp: Path) -> None:
    """What a stage wrote passes the checks every checkpoint input gets (rlhf_ops.checkpoints) before it is
    published: a broken save (a ZeRO-3 shard's empty weights, say) fails the stage, not the next one to load it."""
    from .artifacts import InputError
    from .checkpoints import check_checkpoint_dir

    try:
        check_checkpoint_dir(tmp, f"stage '{stage}' output")
    except InputError as e:
        raise StageFailed(f"stage '{stage}' wrote a checkpoint that would not load: {e}") from None


def resolve_deepspeed(path: str) -> str:
    if not path:
        return ""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = CONF_DIR / path
    if not p.is_file():
        raise FileNotFoundError(f"launcher.deepspeed: DeepSpeed config not found: {path} (also looked in {CONF_DIR})")
    json.loads(p.read_text())  # a malformed JSON fails here, not inside N workers
    return str(p.resolve())


def distributed(launcher: dict) -> bool:
    return int(launcher.get("num_processes", 1)) > 1 or bool(launcher.get("deepspeed"))


def accelerate_command(launcher: dict, spec_path: Path) -> list[str]:
    import torch

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(launcher.get("num_processes", 1)),
           "--num_machines", "1", "--mixed_precision", launcher.get("mixed_precision", "no")]
    if launcher.get("deepspeed"):
        cmd += ["--use_deepspeed", "--deepspeed_config_file", resolve_deepspeed(launcher["deepspeed"])]
    elif int(launcher.get("num_processes", 1)) > 1:
        # On a CPU too: accelerate refuses --cpu with --multi_gpu, and --cpu alone starts one process; its
        # multi-GPU launcher is torchrun, and in workers without CUDA the Accelerator runs MULTI_CPU (gloo).
        cmd += ["--multi_gpu"]
    cmd += list(launcher.get("extra_args", []))
    cmd += ["-m", "rlhf_ops.stages.worker", str(spec_path)]
    return cmd


def _launch(spec: dict, launcher: dict) -> dict:
    tmp = Path(spec["tmp_dir"])
    spec_path = tmp / SPEC_FILE
    spec_path.write_text(json.dumps(spec))
    cmd = accelerate_command(launcher, spec_path)
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1", TOKENIZERS_PARALLELISM="false")
    timeout = launcher.get("timeout_s") or None
    # The workers print what the in-process stage would: into the step's log, when there is one.
    log = console.log_file()
    proc = subprocess.run(cmd, env=env, timeout=timeout, stdout=log, stderr=subprocess.STDOUT if log else None)
    if proc.returncode != 0:
        raise StageFailed(f"stage '{spec['stage']}' failed under accelerate launch (exit {proc.returncode}): {' '.join(cmd)}")
    memory.collect_worker_peaks(tmp)
    result = json.loads((tmp / RESULT_FILE).read_text())
    (tmp / RESULT_FILE).unlink()
    spec_path.unlink()
    return result


def run_stage(stage: str, *, cfg: dict, inputs: dict, output: str | Path, seed: int, launcher: dict | None = None,
              overwrite: bool = False, extra: dict | None = None, progress: bool = True,
              trust_remote_code: bool = False, lora: dict | None = None, generation: dict | None = None) -> dict:
    """Validate, train and atomically publish one stage. Returns the stage metadata. `lora`: model.lora
    (rlhf_ops.lora.stage_lora: None trains in full); `generation`: the config's generation group."""
    gcpolicy.release()  # start-up is over: what it left is long-lived
    module = stage_module(stage)
    launcher = dict(launcher or {})
    output = Path(output)
    spec = {
        "stage": stage, "cfg": dict(cfg), "inputs": {k: str(v) for k, v in inputs.items() if v},
        "output": str(output), "seed": int(seed), "progress": progress, "trust_remote_code": trust_remote_code,
        "mixed_precision": launcher.get("mixed_precision", "no"),
        "deepspeed": resolve_deepspeed(launcher.get("deepspeed", "")),
        # Set when the stage's output goes to a log file rather than a console (rlhf_ops.console).
        "log": str(console.current_log() or ""), "lora": lora, "generation": dict(generation or {}),
        **(extra or {}),
    }
    check_output(output, overwrite)
    module.validate(spec)
    t0 = time.time()
    with atomic_dir(output, overwrite=overwrite) as tmp:
        spec["tmp_dir"] = str(tmp)
        if distributed(launcher):
            metrics = _launch(spec, launcher)
        else:
            # A stage's result must not depend on what ran before it in this process (a resumed run
            # starts a fresh one): a new head's random init, dropout and shuffles start from the seed.
            from transformers import set_seed

            set_seed(spec["seed"])
            metrics = module.train(spec)
        check_written(stage, Path(tmp))
        meta = {
            "stage": stage, "config": spec["cfg"], "inputs": spec["inputs"], "output": str(output),
            "seed": spec["seed"], "metrics": metrics, "wall_s": round(time.time() - t0, 2),
            "launcher": launcher, "extra": extra or {}, "host": platform.node(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_meta(tmp, meta)
    return meta
