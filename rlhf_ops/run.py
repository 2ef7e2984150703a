"""`run(cfg)`: what one Hydra job does, separate from the thin `@hydra.main` in rlhf_ops.cli.

job=loop runs the experiment's loop (rlhf_ops.loop.runner); job=sft|reward|ppo|dpo runs one stage
on the io.* paths. In a sweep (Hydra multirun) a failing job is recorded in its run dir
(`job_status.json`) and does not stop the others; a single run exits non-zero with one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import console
from .artifacts import write_json_atomic
from .validate import validate_config_once

log = logging.getLogger(__name__)
STAGE_JOBS = ("sft", "reward", "ppo", "dpo", "rloo", "grpo", "rejection_sampling")


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - outside Hydra (tests, API use)
        return False


def stage_log_path(output: str | Path) -> Path:
    """Where a one-stage job's library output goes: beside the output dir, which is published
    atomically and must hold only the checkpoint."""
    out = Path(output)
    return out.with_name(out.name + ".log")


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT, raised in the main thread at the next Python instruction: the step in flight
    unwinds as from a Ctrl-C (its row is marked failed, its temporary output removed, the run lock
    released) and the run resumes with the same command."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals():
    """The first SIGTERM / SIGINT stops the run cleanly; a second one, during that clean-up, exits at once
    (os._exit: every ledger write is a transaction and every output is published by a rename, so what
    is on disk stays consistent; the resume moves the step's leftovers aside). A cluster's preemption
    (SIGTERM, then SIGKILL after a grace period) loses at most the step in flight."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def second(signum, frame):
        console.echo(f"rlhf_ops: {signal.Signals(signum).name} again: exiting now; resume with the same command")
        os._exit(128 + signum)

    def first(signum, frame):
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, second)
        raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, first)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_one_stage(cfg: DictConfig) -> dict:
    from .launcher import run_stage
    from .lora import stage_lora

    plain = OmegaConf.to_container(cfg, resolve=True)
    io = plain["io"]
    inputs = {k: v for k, v in io.items() if k != "output" and v}
    with console.captured(stage_log_path(io["output"]), f"{cfg.job} -> {io['output']}"):
        meta = run_stage(cfg.job, cfg=plain["stage"][cfg.job], inputs=inputs, output=io["output"], seed=cfg.seed,
                         launcher=plain["launcher"], overwrite=cfg.overwrite, progress=cfg.progress,
                         trust_remote_code=cfg.model.trust_remote_code,
                         lora=stage_lora(plain["model"]["lora"], cfg.job), generation=plain["generation"])
    print(f"rlhf_ops: {cfg.job} finished in {meta['wall_s']}s; output: {io['output']}", flush=True)
    return meta


def _quiet_libraries() -> None:
    # Hydra sets the root logger to INFO; accelerate and datasets are chatty at that level.
    for name in ("accelerate", "datasets", "deepspeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_warning()
    except ImportError:
        pass


def run(cfg: DictConfig):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", cfg.tracking.wandb_mode)
    _quiet_libraries()
    if os.environ.get("RLHF_OPS_FAULT") or os.environ.get("RLHF_OPS_FAULT_LOG"):
        from .testing import faults  # the resume tests' fault injection, read once here

        faults.install()
    console.configure(verbose=bool(cfg.get("verbose", False)))  # verbose=false: library output goes to per-step log files
    t0 = time.time()
    try:
        with stop_on_signals():
            validate_config_once(cfg)
            if cfg.job in STAGE_JOBS:
                return run_one_stage(cfg)
            from .loop.runner import run_loop
            from .report import sweep_objective_from_env

            summary = run_loop(cfg)
        # A float only in an Optuna sweep (conf/sweep/optuna_kl_budget.yaml): final gold under a KL budget.
        objective = sweep_objective_from_env(summary)
        return summary if objective is None else objective
    except KeyboardInterrupt as e:
        # Ctrl-C or SIGTERM: the step's traceback is in its log; a loop resumes with the same command.
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        where = f" (log: {console.failed_log(e)})" if console.failed_log(e) else ""
        again = (f"; resume with the same command (run_dir={cfg.run_dir})" if cfg.job not in STAGE_JOBS
                 else "; nothing was published to io.output")
        print(f"rlhf_ops: interrupted by {signal.Signals(signum).name}{where}{again}", file=sys.stderr, flush=True)
        sys.exit(128 + signum)
    except Exception as e:  # noqa: BLE001 - reported, then re-raised or recorded
        msg = f"{type(e).__name__}: {e}".strip()
        if console.failed_log(e):  # the failed step's full output and traceback are in its log
            msg += f" (log: {console.failed_log(e)})"
        if _is_multirun():
            run_dir = Path(str(cfg.run_dir))
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(run_dir / "job_status.json", {"status": "failed", "error": msg,
                                                            "traceback": traceback.format_exc(),
                                                            "wall_s": round(time.time() - t0, 2)})
            log.error("job failed (the sweep goes on): %s", msg)
            return None
        print(f"rlhf_ops: error: {msg}", file=sys.stderr, flush=True)
        if os.environ.get("RLHF_OPS_TRACEBACK"):
            traceback.print_exc()
        sys.exit(1)
