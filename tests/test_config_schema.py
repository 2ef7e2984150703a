"""The typed schema (rlhf_ops/config.py) and the YAML in conf/ say the same thing: every default of
the default composition equals its dataclass default, and every schema key is read by some code
(verl tests its configs the same way). A new key that nothing reads, or a YAML default drifting
from the schema's, fails here."""

from __future__ import annotations

import dataclasses
import re

import pytest
from omegaconf import OmegaConf

from conftest import REPO

# The loop's graph and detectors are data the YAML declares; the schema has no default for them.
DECLARED_IN_YAML = {"loop.detectors", "run_dir"}


def _leaves(d: dict, pre: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{pre}{k}."))
        else:
            out[f"{pre}{k}"] = v
    return out


def test_yaml_defaults_equal_schema_defaults():
    from rlhf_ops.cli import compose
    from rlhf_ops.config import ReviewsTaskConfig, RunConfig

    yaml = OmegaConf.to_container(compose([]), resolve=False)
    yaml.pop("hydra")
    schema = OmegaConf.to_container(OmegaConf.structured(RunConfig), resolve=False)
    schema["task"] = OmegaConf.to_container(OmegaConf.structured(ReviewsTaskConfig))
    y, s = _leaves(yaml), _leaves(schema)
    assert set(y) == set(s), sorted(set(y) ^ set(s))
    differ = {k: (y[k], s[k]) for k in y if k not in DECLARED_IN_YAML and y[k] != s[k]}
    assert not differ, differ


def _schema_fields():
    from rlhf_ops import config

    for cls in vars(config).values():
        if dataclasses.is_dataclass(cls) and isinstance(cls, type):
            for f in dataclasses.fields(cls):
                yield cls.__name__, f.name


STAGE_CLASSES = {"SFTStageConfig": "sft", "RewardStageConfig": "reward", "PPOStageConfig": "ppo",
                 "DPOStageConfig": "dpo", "GroupRLStageConfig": "grpo"}  # GroupRL's fields are RLOO's too (below)


def _stages():
    """The stages whose TRL config class the installed TRL has: PPO's only up to TRL 1.12 (trl_compat)."""
    from rlhf_ops.stages.trl_compat import has_ppo

    return [s for s in ("sft", "reward", "ppo", "dpo", "rloo", "grpo", "rejection_sampling") if s != "ppo" or has_ppo()]


@pytest.mark.trl_latest
def test_every_schema_key_is_read():
    from rlhf_ops.stages.trl_args import trl_fields

    code = "\n".join(p.read_text() for p in (REPO / "rlhf_ops").rglob("*.py") if p.name != "config.py")
    unread = []
    for owner, name in _schema_fields():
        if name.startswith("_"):
            continue  # _target_ is read by hydra.utils.instantiate
        if owner in STAGE_CLASSES and STAGE_CLASSES[owner] not in _stages():
            continue  # PPOStageConfig on a TRL without PPO: checked on TRL 1.12
        if owner in STAGE_CLASSES and name in trl_fields(STAGE_CLASSES[owner]):
            continue  # handed to TRL's config class by name (rlhf_ops/stages/trl_args.py)
        # Read as cfg["name"], cfg.name, spec.get("name"), name=... (a keyword passed through) or **cfg.
        pattern = rf"""["']{re.escape(name)}["']|\.{re.escape(name)}\b|\b{re.escape(name)}\s*="""
        if not re.search(pattern, code):
            unread.append(f"{owner}.{name}")
    assert not unread, f"schema keys nothing reads: {unread}"


@pytest.mark.trl_latest
def test_every_stage_schema_key_is_a_trl_field_or_ours():
    """The start-up check skips importing TRL when a stage has only schema keys (trl_args.check): that is
    sound only while every schema key is a field of the TRL config class or one rlhf_ops reads itself."""
    from rlhf_ops.stages.trl_args import COMMON, OURS, check, schema_fields, trl_fields

    for stage in _stages():
        assert schema_fields(stage) - OURS[stage] - COMMON <= trl_fields(stage), stage
    with pytest.raises(ValueError, match="stage.sft.trl.max_grad_nrm"):
        check("sft", {"learning_rate": 1e-3, "trl": {"max_grad_nrm": 1.0}})
