"""Checks of a composed config that the schema's types cannot express, run before any work.

Every error is a ValueError naming the key, so the CLI prints it on one line.
"""

from __future__ import annotations

from pathlib import Path

import math


def _check(ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value} {rule}")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ranges(cfg) -> None:
    """Values every job needs in range; a NaN or a negative learning rate never reaches a trainer."""
    _check(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    for name in ("sft", "reward", "ppo", "dpo"):
        st = cfg.stage[name]
        _check(_finite(st.learning_rate) and st.learning_rate > 0, f"stage.{name}.learning_rate", st.learning_rate,
               "must be a finite number > 0")
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            _check(st[key] >= 1, f"stage.{name}.{key}", st[key], "must be >= 1")
        if "num_train_epochs" in st:
            _check(_finite(st.num_train_epochs) and (st.num_train_epochs > 0 or st.max_steps > 0),
                   f"stage.{name}.num_train_epochs", st.num_train_epochs, "must be > 0 (or set max_steps > 0)")
        if "max_length" in st:
            _check(st.max_length >= 2, f"stage.{name}.max_length", st.max_length, "must be >= 2")
    ppo = cfg.stage.ppo
    _check(ppo.response_length >= 1, "stage.ppo.response_length", ppo.response_length, "must be >= 1")
    _check(_finite(ppo.temperature) and ppo.temperature > 0, "stage.ppo.temperature", ppo.temperature,
           "must be > 0 (sampling; PPO's KL and entropy need a tempered distribution)")
    _check(_finite(cfg.stage.dpo.beta) and cfg.stage.dpo.beta > 0, "stage.dpo.beta", cfg.stage.dpo.beta, "must be > 0")
    _check(0 <= cfg.stage.reward.eval_fraction < 1, "stage.reward.eval_fraction", cfg.stage.reward.eval_fraction,
           "must be in [0, 1)")


def _loop_ranges(cfg) -> None:
    lp, kl = cfg.loop, cfg.loop.kl
    for key in ("prompts_per_iteration", "eval_samples_per_prompt"):
        _check(lp[key] >= 1, f"loop.{key}", lp[key], "must be >= 1")
    _check(lp.completions_per_prompt >= 1, "loop.completions_per_prompt", lp.completions_per_prompt, "must be >= 1")
    _check(lp.min_pairs >= 0, "loop.min_pairs", lp.min_pairs, "must be >= 0")
    if "label" in lp.steps and lp.min_pairs > lp.prompts_per_iteration:
        raise ValueError(f"loop.min_pairs={lp.min_pairs}: a labeler gives at most one pair per prompt, and "
                         f"loop.prompts_per_iteration={lp.prompts_per_iteration}: every iteration would be abandoned")
    if "label" in lp.steps and lp.completions_per_prompt < 2:
        raise ValueError(f"loop.completions_per_prompt={lp.completions_per_prompt}: a labeler compares completions "
                         "of one prompt, so it needs >= 2 (with 1 every iteration gives zero pairs)")
    _check(_finite(kl.beta) and kl.beta >= 0, "loop.kl.beta", kl.beta, "must be a finite number >= 0")
    _check(_finite(kl.max_beta) and kl.max_beta >= kl.beta, "loop.kl.max_beta", kl.max_beta,
           f"must be >= loop.kl.beta ({kl.beta})")
    if kl.controller == "adaptive":
        _check(_finite(kl.target) and kl.target > 0, "loop.kl.target", kl.target, "must be > 0 (the adaptive controller's KL target)")
        _check(kl.horizon >= 1, "loop.kl.horizon", kl.horizon, "must be >= 1")
        _check(0 <= kl.min_beta <= kl.beta, "loop.kl.min_beta", kl.min_beta, f"must be in [0, loop.kl.beta={kl.beta}]")
    for key in ("start_mult", "end_mult"):
        _check(_finite(kl[key]) and kl[key] >= 0, f"loop.kl.{key}", kl[key], "must be >= 0")
    t = lp.eval_temperature
    if t is not None:
        _check(_finite(t) and t > 0, "loop.eval_temperature", t,
               "must be > 0 (at 0 the KL and entropy the detectors read are meaningless); null = PPO's")
    if lp.min_win_rate is not None:
        _check(0 <= lp.min_win_rate <= 1, "loop.min_win_rate", lp.min_win_rate, "must be in [0, 1] or null")
    for key in ("beta_remedy_factor",):
        _check(_finite(lp[key]) and lp[key] >= 1, f"loop.{key}", lp[key], "must be >= 1 (it raises beta)")
    _check(_finite(lp.lr_remedy_factor) and 0 < lp.lr_remedy_factor <= 1, "loop.lr_remedy_factor",
           lp.lr_remedy_factor, "must be in (0, 1] (it lowers the learning rate)")
    _check(0 < lp.rm_heldout_fraction < 1, "loop.rm_heldout_fraction", lp.rm_heldout_fraction, "must be in (0, 1)")
    if lp.max_rollbacks is not None:
        _check(lp.max_rollbacks >= 1, "loop.max_rollbacks", lp.max_rollbacks, "must be >= 1 or null")
    vote = str(lp.gate_vote)
    n_detectors = len({d["name"] for d in lp.detectors} | {"non_finite"})  # non_finite is always on
    if vote.isdigit():
        _check(1 <= int(vote) <= n_detectors, "loop.gate_vote", vote,
               f"must be between 1 and the number of detectors ({n_detectors}, non_finite included): "
               "a larger vote can never reject")
    else:
        _check(vote in ("any", "majority"), "loop.gate_vote", vote, "must be any, majority or a count")


def validate_config(cfg) -> None:
    _ranges(cfg)
    from omegaconf import OmegaConf

    from .stages import trl_args

    for name in ("sft", "reward", "ppo", "dpo"):  # every stage key is TRL's or ours, by name
        trl_args.check(name, OmegaConf.to_container(cfg.stage[name], resolve=True))
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
        p = Path(cfg.model.path)
        if p.is_file():
            hint = (" (a GGUF file must be converted to a save_pretrained directory first)" if p.suffix == ".gguf"
                    else " (point at the directory that holds config.json and the .safetensors weights)")
            raise ValueError(f"model.path: {p} is a file, not a checkpoint directory{hint}")
        raise ValueError(f"model.path: no checkpoint directory at {cfg.model.path}")
    if cfg.model.path:
        from .checkpoints import check_checkpoint_dir

        check_checkpoint_dir(cfg.model.path, "model.path", tokenizer=True)
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
    _loop_ranges(cfg)
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
