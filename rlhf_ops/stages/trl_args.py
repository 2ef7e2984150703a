"""Stage settings pass through to TRL's own config classes by name.

Every key of `stage.<name>` that is a field of the stage's TRL config class (SFTConfig,
RewardConfig, PPOConfig, DPOConfig) is handed to it as is, so a TRL field keeps one default, TRL's;
`stage.<name>.trl` takes any other field of that class (`+stage.sft.trl.max_grad_norm=0.5`), and a
name the class does not have is refused at start-up, naming the key. The few keys that are ours
(`OURS`) are read by the stage itself and never reach TRL.
"""

from __future__ import annotations

import dataclasses
import functools

# Keys of our stage schemas that are not TRL fields: read by rlhf_ops itself.
OURS = {"sft": set(), "reward": {"ensemble_size", "bootstrap", "eval_fraction"}, "ppo": set(), "dpo": set(),
        "rloo": {"missing_eos_penalty"}, "grpo": {"missing_eos_penalty"}, "rejection_sampling": set()}
COMMON = {"trl"}  # the pass-through of other TRL fields


@functools.cache
def trl_class(stage: str):
    import contextlib
    import io
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    # Checked at start-up, before any step's log is open: transformers prints an "[INFO] Running in
    # WANDB offline mode" line when its integrations are first imported, which is not ours to show.
    with contextlib.redirect_stdout(io.StringIO()):
        if stage == "ppo":  # TRL <= 1.12 only (rlhf_ops.stages.trl_compat)
            from .trl_compat import ppo_classes

            return ppo_classes()[0]
        import trl

        return {"sft": trl.SFTConfig, "reward": trl.RewardConfig, "dpo": trl.DPOConfig, "rloo": trl.RLOOConfig,
                "grpo": trl.GRPOConfig, "rejection_sampling": trl.SFTConfig}[stage]


def trl_fields(stage: str) -> set[str]:
    return {f.name for f in dataclasses.fields(trl_class(stage)) if f.init}


def schema_fields(stage: str) -> set[str]:
    """The keys of our typed stage schema (rlhf_ops.config): TRL fields by name (tests/test_config_schema.py
    checks that each is one) and OURS."""
    from .. import config

    cls = {"sft": config.SFTStageConfig, "reward": config.RewardStageConfig, "ppo": config.PPOStageConfig,
           "dpo": config.DPOStageConfig, "rloo": config.GroupRLStageConfig, "grpo": config.GroupRLStageConfig,
           "rejection_sampling": config.SFTStageConfig}[stage]
    return {f.name for f in dataclasses.fields(cls)}


def check(stage: str, cfg: dict) -> None:
    """Refuse a stage key that neither rlhf_ops nor TRL's config class knows. TRL (and with it torch)
    is imported only when there is a key beyond the schema's to look up, so a config error elsewhere
    is reported without it."""
    if set(cfg) <= schema_fields(stage) and not cfg.get("trl"):
        return
    known = trl_fields(stage)
    for key in cfg:
        if key not in known and key not in OURS[stage] | COMMON:
            raise ValueError(f"stage.{stage}.{key}: not a field of {trl_class(stage).__name__} (TRL) nor of rlhf_ops")
    for key in cfg.get("trl") or {}:
        if key not in known:
            raise ValueError(f"stage.{stage}.trl.{key}: {trl_class(stage).__name__} (TRL {_trl_version()}) has no "
                             f"field '{key}'")


def trl_kwargs(stage: str, cfg: dict, **ours) -> dict:
    """The TRL config's arguments: the stage's TRL fields by name, its `trl` pass-through, then what
    the orchestrator decides per call (`ours`: paths, seed, precision, the loop's beta and lr scale)."""
    check(stage, cfg)
    known = trl_fields(stage)
    kwargs = {k: v for k, v in cfg.items() if k in known}
    kwargs.update(cfg.get("trl") or {})
    kwargs.update(ours)
    return kwargs


def _trl_version() -> str:
    import trl

    return trl.__version__
