"""What every training stage shares: the spec it receives, trainer arguments, metrics.

A stage is called with a *spec*, a plain JSON-serialisable dict, so the same function runs inside
the orchestrator or inside each `accelerate launch` worker:

    {"stage": "sft", "cfg": {...stage config...}, "inputs": {"policy": ..., "data": ...},
     "output": "<final dir>", "tmp_dir": "<final dir>.tmp", "seed": 0,
     "mixed_precision": "no", "trust_remote_code": false, "progress": true}

`validate(spec)` checks inputs in the orchestrator before anything expensive starts;
`train(spec)` trains and saves into spec["tmp_dir"] and returns metrics. The orchestrator
(`rlhf_ops.launcher`) writes the metadata and renames the tmp dir into place.
"""

from __future__ import annotations

import functools
import gc
import math
import os
from contextlib import contextmanager
from pathlib import Path

import torch


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def trainer_kwargs(spec: dict, cfg: dict) -> dict:
    """What the orchestrator decides for every TRL config, on top of the stage's own fields (passed
    by name: rlhf_ops.stages.trl_args): where it writes (checkpoints are ours to write, so the trainer
    saves none), the seed, precision, the device, and the loop's learning-rate scale."""
    mp = spec.get("mixed_precision", "no")
    kw = dict(
        output_dir=str(Path(spec["tmp_dir"]) / "_trainer"),
        seed=spec["seed"],
        data_seed=spec["seed"],
        report_to=[],
        save_strategy="no",
        disable_tqdm=not spec.get("progress", True),
        use_cpu=not torch.cuda.is_available(),
        bf16=mp == "bf16",
        fp16=mp == "fp16",
        dataloader_num_workers=0,
        learning_rate=cfg["learning_rate"] * spec.get("lr_scale", 1.0),
    )
    if spec.get("deepspeed"):
        kw["deepspeed"] = spec["deepspeed"]
    return kw


class _CollectThenFreeze:
    """Stands in for the `gc` module inside a trainer's module: its `collect()` collects as asked, then
    freezes what survived, so the next call walks only what was allocated since (TRL's PPO calls it
    twice per update; the survivors are the trainer's own long-lived state). Anything else is gc's."""

    def collect(self, generation: int = 2) -> int:
        n = gc.collect(generation)
        gc.freeze()
        return n

    def __getattr__(self, name):
        return getattr(gc, name)


def fit(trainer, collecting_modules=()):
    """`trainer.train()` with the garbage collector's current objects frozen, restored afterwards.

    TRL's PPO update calls `gc.collect()` twice per update and accelerate's memory release calls it at
    the end of every train(): each call walks every tracked object, the loaded models' modules and
    parameters included (about 0.27 s a call on the tiny models here, 41% of a PPO iteration). Frozen
    objects are skipped by every collection, so each call only sees what training allocates; in
    `collecting_modules` (modules that call `gc.collect()` per step) each call also freezes what it
    leaves, so it sees only what the last step allocated. Everything is unfrozen afterwards, and nothing
    numeric changes (the weights are identical: tests/test_bench_vs_trl.py)."""
    patched = [(m, m.gc) for m in collecting_modules if getattr(m, "gc", None) is gc]
    gc.freeze()
    try:
        for m, _ in patched:
            m.gc = _CollectThenFreeze()
        return trainer.train()
    finally:
        for m, original in patched:
            m.gc = original
        gc.unfreeze()


def trainable_parameters(model) -> int:
    """Parameters the optimizer updates (all of them in full fine-tuning; the adapters and heads with LoRA)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def log_history_metrics(trainer) -> dict:
    """Final logged values of the trainer's metrics (loss and friends), plus the step count."""
    last: dict = {}
    for row in trainer.state.log_history:
        for k, v in row.items():
            if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                last[k] = float(v)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    if losses:
        last["final_loss"] = float(losses[-1])
    elif "train_loss" in last:  # fewer steps than logging_steps: the run's mean loss is all there is
        last["final_loss"] = last["train_loss"]
    last["global_step"] = int(trainer.state.global_step)
    last["trainable_parameters"] = trainable_parameters(trainer.model)
    return last


def check_finite_loss(metrics: dict, stage: str) -> None:
    for key in ("final_loss", "train_loss"):
        v = metrics.get(key)
        if v is not None and not math.isfinite(v):
            raise FloatingPointError(f"{stage}: {key} is {v}; the trained weights were not saved")


def quiet(trainer, spec: dict):
    """The trainer's console output. Without progress bars the trainer prints its per-step dicts
    instead: dropped on a console, kept in a step's log file (spec["log"], see rlhf_ops.console).
    With progress on and a step log open in this process, a compact bar is drawn on the terminal."""
    from transformers.trainer_callback import PrinterCallback

    trainer.add_callback(log_last_step())
    if not spec.get("progress", True) and not spec.get("log"):
        trainer.remove_callback(PrinterCallback)
    if spec.get("progress", True):
        bar = terminal_progress(spec["stage"])
        if bar is not None:
            trainer.add_callback(bar)
    return trainer


@functools.cache
def _log_last_step_class():
    from transformers import TrainerCallback

    class LogLastStep(TrainerCallback):
        """The last step is logged whatever logging_steps says, so a stage's final_loss is the loss at the end of
        training, averaged over every process. Otherwise the steps after the last logged one reach the metrics
        only through transformers' train_loss, which adds them as the main process's own loss: under several
        processes a short run's reported loss was one process's (SFT under DDP: the same weights as one process
        to 1e-7, a loss 0.07 higher)."""

        def on_step_end(self, args, state, control, **kw):
            if state.max_steps and state.global_step >= state.max_steps and args.logging_strategy != "no":
                control.should_log = True
            return control

    return LogLastStep


def log_last_step():
    """A LogLastStep callback (its class is built on first use: transformers is imported lazily here)."""
    return _log_last_step_class()()


def terminal_progress(desc: str):
    """A trainer callback drawing one compact bar on the terminal saved by rlhf_ops.console while the
    trainer's own bars go to the step's log; None without a step log or when the terminal is no TTY."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    from ..console import current_log, tqdm_kwargs

    kwargs = tqdm_kwargs()
    if current_log() is None or kwargs.get("disable"):
        return None

    class TerminalProgress(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kw):
            self.bar = tqdm(total=state.max_steps, desc=desc, leave=False, **kwargs)

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()

    return TerminalProgress()


def save_trained(trainer, tokenizer, out_dir: str | Path) -> None:
    trainer.save_model(str(out_dir))
    # training_args.bin is a pickle; checkpoints here are safetensors and JSON only
    if trainer.accelerator.is_main_process:
        (Path(out_dir) / "training_args.bin").unlink(missing_ok=True)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(str(out_dir))
    trainer.accelerator.wait_for_everyone()


def save_policy(trainer, tokenizer, spec: dict) -> None:
    """The trained policy into spec["tmp_dir"]: its full weights, or with LoRA (spec["lora"]) its adapter with
    the base recorded (rlhf_ops.lora); SFT's adapter is merged into its base, which every later adapter adapts."""
    from ..lora import base_of

    if not spec.get("lora"):
        save_trained(trainer, tokenizer, spec["tmp_dir"])
        return
    if spec["stage"] != "sft":
        save_trained_adapter(trainer, tokenizer, spec["tmp_dir"], base_of(spec["inputs"]["policy"]))
        return
    # SFT: the adapter is merged into the base read back from disk, not into the model in memory, whose weights
    # under ZeRO-3 are each process's shard (a merge there writes empty tensors, or fails on the shapes).
    import shutil

    from ..models import load_policy

    out = Path(spec["tmp_dir"])
    adapter = out / "_sft_adapter"
    save_trained_adapter(trainer, tokenizer, adapter, base_of(spec["inputs"]["policy"]))
    if trainer.accelerator.is_main_process:
        with zero3_init_off(trainer):
            model = load_policy(adapter, spec.get("trust_remote_code", False))
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
        shutil.rmtree(adapter)
    trainer.accelerator.wait_for_everyone()


@contextmanager
def zero3_init_off(trainer):
    """Models built in here load whole, in this process alone. While a trainer's ZeRO-3 config is registered,
    transformers builds every model under deepspeed.zero.Init, which partitions it across the processes: a
    collective, so one process loading a model alone waits for the others forever."""
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    hf = getattr(trainer.args, "hf_deepspeed_config", None)
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if hf is not None:
            set_hf_deepspeed_config(hf)


def gathered_state_dict(trainer, prefix: str = "") -> dict | None:
    """The trained model's full state dict on the main process (None elsewhere), its keys under `prefix` with
    the prefix removed. Every process must call it: under ZeRO-3 each holds a shard of every weight (a weight
    is empty outside its own shard) and this gathers them (`stage3_gather_16bit_weights_on_model_save`)."""
    acc = trainer.accelerator
    # A transformers Trainer keeps the engine / DDP wrapper in model_wrapped; TRL 1.12's PPO prepares .model itself.
    state = acc.get_state_dict(getattr(trainer, "model_wrapped", None) or trainer.model)
    if not acc.is_main_process:
        return None
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def save_trained_adapter(trainer, tokenizer, out_dir, base) -> None:
    """A trainer's LoRA adapter (PPO's: its policy's) into `out_dir`, recording `base` (rlhf_ops.lora), from the
    gathered weights (a process's own ZeRO-3 shard would save an empty adapter)."""
    from ..lora import save_adapter

    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.model)
    ppo = hasattr(model, "policy")  # PPO trains a policy-and-value wrapper
    state = gathered_state_dict(trainer, "policy." if ppo else "")
    save_adapter(model.policy if ppo else model, tokenizer, out_dir, base, main_process=acc.is_main_process,
                 state_dict=state)
    acc.wait_for_everyone()


def drop_trainer_dir(spec: dict) -> None:
    import shutil

    shutil.rmtree(Path(spec["tmp_dir"]) / "_trainer", ignore_errors=True)


def require(spec: dict, *names: str) -> None:
    from ..artifacts import InputError

    for n in names:
        if not spec["inputs"].get(n):
            raise InputError(f"stage '{spec['stage']}' needs input '{n}' (io.{n}=PATH)")
