"""What differs between the TRL releases rlhf_ops runs on, in one place.

rlhf_ops pins TRL 1.12.0, the last release with PPO (`trl.experimental.ppo`); TRL 1.13 removed it. Every
other stage (sft, reward, dpo, rloo, grpo, rejection_sampling) and every loop without PPO also runs on
TRL 1.16.0 (`make test-trl-latest`). On a TRL without PPO, a config that would train PPO is refused at
start-up (rlhf_ops.validate) with one line saying what to install, and the PPO stage refuses the same way
when called directly.
"""

from __future__ import annotations

import os

PPO_LAST_RELEASE = "1.12.0"  # the newest TRL with trl.experimental.ppo
PPO_REMOVED_IN = "1.13"


def has_ppo() -> bool:
    """Whether the installed TRL has `trl.experimental.ppo`, found without importing TRL: a file lookup
    (well under a millisecond; `importlib.util.find_spec("trl.experimental.ppo")` imports
    trl.experimental to answer, about 0.25 s here, and the CLI's start-up is kept short)."""
    import importlib.util

    spec = importlib.util.find_spec("trl")
    if spec is None:
        return False
    locations = spec.submodule_search_locations or ()
    return any(os.path.isfile(os.path.join(loc, "experimental", "ppo", "__init__.py")) for loc in locations)


def trl_version() -> str:
    """The installed TRL's version, from its metadata (no import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trl")
    except PackageNotFoundError:
        return "not installed"


def ppo_missing(what: str, instead: str) -> str:
    """The one line for `what` needing PPO on a TRL without it; `instead` is the alternative without PPO."""
    return (f"{what} needs TRL's PPOTrainer, which TRL {PPO_REMOVED_IN} removed (installed: trl {trl_version()}); "
            f"pip install trl=={PPO_LAST_RELEASE}, or {instead}")


def ppo_classes():
    """(PPOConfig, PPOTrainer) from the installed TRL; on a TRL without them an ImportError saying which to install."""
    if not has_ppo():
        raise ImportError(ppo_missing("the ppo stage", "train the policy with the rloo or grpo stage"))
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    return PPOConfig, PPOTrainer
