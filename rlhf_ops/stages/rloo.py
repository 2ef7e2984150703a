"""RLOO stage: see rlhf_ops.stages.group_rl (one implementation for RLOO and GRPO)."""

from .group_rl import train, validate  # noqa: F401
