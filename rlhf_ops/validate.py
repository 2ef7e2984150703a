"""Checks of a composed config that the schema's types cannot express, run before any work.

Every error is a ValueError naming the key, so the CLI prints it on one line.
"""

from __future__ import annotations

from pathlib import Path

JOBS = ("loop", "sft", "reward", "ppo", "dpo")
CHOICES = {
    "loop.policy_update": ("ppo", "dpo"),
    "loop.labeler": ("annotator", "reward_model", "human"),
    "loop.ensemble_reduce": ("mean", "min", "uncertainty"),
    "loop.kl.controller": ("fixed", "adaptive"),
    "loop.kl.schedule": ("constant", "linear", "cosine"),
    "loop.lr_schedule": ("constant", "linear", "cosine"),
    "loop.dpo_data": ("fresh", "offline"),
    "loop.human_labels_on_error": ("error", "skip"),
    "model.reward_init": ("policy", "scratch"),
    "launcher.mixed_precision": ("no", "bf16", "fp16"),
    "tracking.wandb_mode": ("offline", "online", "disabled"),
    "stage.ppo.kl_estimator": ("k1", "k3"),
}


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def validate_config(cfg) -> None:
    if cfg.job not in JOBS:
        raise ValueError(f"job: '{cfg.job}' is not one of {JOBS}")
    for key, allowed in CHOICES.items():
        v = _get(cfg, key)
        if v not in allowed:
            raise ValueError(f"{key}: '{v}' is not one of {allowed}")
    ppo = cfg.stage.ppo
    batch = ppo.per_device_train_batch_size * ppo.gradient_accumulation_steps
    if batch % ppo.num_mini_batches:
        raise ValueError(f"stage.ppo.num_mini_batches={ppo.num_mini_batches} must divide the batch "
                         f"(per_device_train_batch_size x gradient_accumulation_steps = {batch})")
    if ppo.total_episodes < batch:
        raise ValueError(f"stage.ppo.total_episodes={ppo.total_episodes} is smaller than one batch ({batch})")
    if cfg.stage.reward.ensemble_size < 1:
        raise ValueError("stage.reward.ensemble_size must be >= 1")
    if cfg.loop.kl.beta < 0:
        raise ValueError(f"loop.kl.beta={cfg.loop.kl.beta} must be >= 0")
    for key in ("rm_accuracy_tolerance", "rm_accuracy_z"):
        if not cfg.loop[key] >= 0:
            raise ValueError(f"loop.{key}={cfg.loop[key]} must be >= 0")
    if not 0 <= cfg.loop.rm_replay_ratio < 1:
        raise ValueError(f"loop.rm_replay_ratio={cfg.loop.rm_replay_ratio} must be in [0, 1)")
    if cfg.model.path and not Path(cfg.model.path).is_dir():
        raise ValueError(f"model.path: no checkpoint directory at {cfg.model.path}")
    if cfg.launcher.deepspeed:
        from .launcher import resolve_deepspeed

        resolve_deepspeed(cfg.launcher.deepspeed)
    if cfg.job in ("sft", "reward", "ppo", "dpo"):
        if not cfg.io.output:
            raise ValueError(f"io.output: job={cfg.job} needs an output directory (io.output=PATH)")
        return
    _validate_loop(cfg)


def _validate_task(cfg) -> None:
    """The task is built (cheap: no data read) and checked, and the loop's labeler must fit it."""
    from .tasks import make_task

    set_io = [f"io.{k}" for k, v in cfg.io.items() if v]
    if set_io:
        raise ValueError(f"{', '.join(set_io)}: io.* paths are for one stage (job=sft|reward|ppo|dpo) and a loop "
                         "ignores them; give a loop your data with task=files task.prompts=FILE [task.sft=FILE] "
                         "[task.pairs=FILE] and your model with model=local model.path=DIR")
    try:
        task = make_task(cfg.task)
    except Exception as e:  # noqa: BLE001 - instantiate wraps the task's own error
        raise ValueError(f"task: cannot build task '{cfg.task.get('_target_')}': {e.__cause__ or e}") from e
    task.check()
    lp = cfg.loop
    uses_labeler = "label" in lp.steps
    if uses_labeler and lp.labeler == "annotator" and lp.annotator not in task.annotators():
        offered = list(task.annotators())
        raise ValueError(f"loop.labeler=annotator: task '{task.name}' has no simulated annotator '{lp.annotator}' "
                         f"(it offers {offered or 'none'}); use loop.labeler=reward_model or loop.labeler=human")
    if cfg.task.get("pairs", "given") is None:  # no seed pairs: no RM warm-up
        if uses_labeler and lp.labeler == "reward_model":
            raise ValueError("loop.labeler=reward_model needs a reward model before the first labels, and without "
                             "task.pairs there is no warm-up to train one; give task.pairs=FILE or use "
                             "loop.labeler=human")
        if not uses_labeler and lp.policy_update == "ppo":
            raise ValueError("this loop trains PPO against a reward model, but without task.pairs and without a "
                             "label step nothing trains one; give task.pairs=FILE")


def _validate_loop(cfg) -> None:
    from .control.detectors import build_detectors
    from .control.rm_update_policy import RMUpdatePolicy
    from .loop.recipe import check_recipe

    _validate_task(cfg)
    lp = cfg.loop
    ppo = cfg.stage.ppo
    batch = ppo.per_device_train_batch_size * ppo.gradient_accumulation_steps * max(1, cfg.launcher.num_processes)
    if lp.policy_update == "ppo" and 0 < lp.prompts_per_iteration < batch:
        import logging

        logging.getLogger(__name__).warning(
            "loop.prompts_per_iteration=%d is fewer than one PPO batch (%d = stage.ppo.per_device_train_batch_size x "
            "gradient_accumulation_steps x launcher.num_processes): each PPO update cycles the prompts to fill it",
            lp.prompts_per_iteration, batch)
    if lp.iterations < 0:
        raise ValueError(f"loop.iterations={lp.iterations} must be >= 0")
    build_detectors([dict(d) for d in lp.detectors])
    check_recipe(list(lp.setup), list(lp.steps), lp.iterations)
    if "rm_update" in lp.steps:
        never = lp.rm_update_every is None and lp.rm_update_kl_threshold is None
        policy = RMUpdatePolicy(every=lp.rm_update_every, kl_threshold=lp.rm_update_kl_threshold,
                                freeze=[tuple(w) for w in lp.rm_freeze], never=never)
        if not never and not policy.can_fire(lp.iterations):
            raise ValueError(
                f"loop.rm_update_every={lp.rm_update_every} / loop.rm_freeze={list(map(list, lp.rm_freeze))}: "
                f"the reward model can never be updated within loop.iterations={lp.iterations}"
            )
