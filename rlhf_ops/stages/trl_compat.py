"""What rlhf_ops adapts to in TRL, in one place: what differs between the releases it runs on (PPO), and what
TRL does silently that rlhf_ops makes loud (rows dropped for max_length, the same in 1.12 and 1.16).

rlhf_ops pins TRL 1.12.0, the last release with PPO (`trl.experimental.ppo`); TRL 1.13 removed it. Every
other stage (sft, reward, dpo, rloo, grpo, rejection_sampling) and every loop without PPO also runs on
TRL 1.16.0 (`make test-trl-latest`). On a TRL without PPO, a config that would train PPO is refused at
start-up (rlhf_ops.validate) with one line saying what to install, and the PPO stage refuses the same way
when called directly.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

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
    locations = [loc for loc in spec.submodule_search_locations or () if os.path.isdir(loc)]
    if not locations:  # not installed as plain files (a zip, say): ask the import system, the slow way
        return importlib.util.find_spec("trl.experimental.ppo") is not None
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


# What TRL's trainers drop for max_length (TRL 1.12 to 1.16 alike), the trainer, and what else to shorten.
_DROPS = {"reward": ("is longer than it (the prompt with the chosen or with the rejected text, in tokens)",
                     "RewardTrainer", "the completions (in a loop: stage.ppo.response_length)"),
          "dpo": ("has a prompt that fills it alone", "DPOTrainer", "the prompts")}


def check_rows_kept(trainer, given: int, stage: str) -> None:
    """TRL's RewardTrainer drops a pair longer than max_length, and DPOTrainer one whose prompt fills it, without a
    word: with every row dropped training failed in the dataloader ("num_samples should be a positive integer value,
    but got num_samples=0"), with some it trained on fewer pairs than the stage reports. None left is one error
    naming the key; some dropped, a line in the step's log (not on the console: the tiny testbed's own reward
    warm-up loses about 40% of its pairs at stage.reward.max_length=96, as it always has)."""
    kept, max_length = len(trainer.train_dataset), trainer.args.max_length
    what, trainer_name, shorter = _DROPS[stage]
    if kept == 0:
        raise ValueError(f"stage.{stage}.max_length={max_length}: every one of the {given} pairs {what}, and TRL's "
                         f"{trainer_name} drops such pairs, so none is left to train on; raise stage.{stage}.max_length "
                         f"or shorten {shorter}")
    if kept < given:
        log.info("stage.%s.max_length=%s: %d of %d pairs dropped by TRL's %s, each %s", stage, max_length,
                 given - kept, given, trainer_name, what)
