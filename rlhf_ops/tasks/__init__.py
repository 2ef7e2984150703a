"""Tasks: where a run's prompts, demonstrations, seed pairs and (optionally) gold reward come from.

A task is chosen with `task=NAME` (conf/task/NAME.yaml) and built with `hydra.utils.instantiate`
from its `_target_`. The core of rlhf_ops only knows the `Task` protocol below; it never imports a
task's package. Code that wants a gold reward asks `task.gold` and says "no gold" when it is None.

    task=reviews   the built-in testbed (rlhf_ops.tasks.reviews): exact gold reward, simulated annotators
    task=files     the user's own JSONL / parquet / `datasets` folders (rlhf_ops.tasks.files)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import pandas as pd

GoldFn = Callable[[str, str], float]  # gold(prompt, completion) -> reward


@dataclass
class TaskData:
    """What a task hands the loop. Prompt values are text or a list of {role, content} messages;
    the loop renders them (chat template) before any model sees them."""

    train_prompts: pd.DataFrame            # prompt, prompt_id: the pool collect draws from
    eval_prompts: pd.DataFrame             # prompt, prompt_id: frozen, evaluated every iteration
    sft: Optional[pd.DataFrame] = None     # prompt, completion (None: the model is already fine-tuned)
    pairs: Optional[pd.DataFrame] = None   # prompt, chosen, rejected: seed pairs of the RM warm-up
    heldout_pairs: Optional[pd.DataFrame] = None  # prompt, chosen, rejected: RM accuracy (None: split)
    # prompt, completion: capability anchors, references the policy must not forget (None: none)
    anchors: Optional[pd.DataFrame] = None
    # Texts to train a tiny tokenizer on (model=tiny only).
    corpus: list[str] = field(default_factory=list)
    # Where each table came from, for messages ({"prompts": "data/p.jsonl", ...}).
    sources: dict[str, str] = field(default_factory=dict)


class Labeler(Protocol):
    def label(self, prompt_rows: list[dict], candidates: list[list[str]], *, iteration: int,
              checkpoint: str, work_dir: Any = None) -> pd.DataFrame: ...


class Task(Protocol):
    name: str

    def check(self) -> None:
        """Cheap start-up checks (files exist, options valid); raise InputError naming the culprit."""

    def load(self, seed: int) -> TaskData:
        """Read or build the task's tables (validated: errors name the file, row and columns)."""

    @property
    def gold(self) -> Optional[GoldFn]:
        """The task's gold reward, or None (a user's own task has none)."""

    def annotators(self) -> tuple[str, ...]:
        """Names of the simulated annotators the task offers (empty: none)."""

    def annotator(self, name: str, seed: int) -> Labeler:
        """A labeler backed by the named simulated annotator."""


def make_task(task_cfg: Any) -> Task:
    """Build the task from its config node (`_target_` plus the task's own keys)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = task_cfg if OmegaConf.is_config(task_cfg) else OmegaConf.create(task_cfg)
    return instantiate(node, _convert_="all")


def gold_by_prompt(task: Task, *tables: pd.DataFrame) -> Optional[GoldFn]:
    """The task's gold as a function of the *rendered* prompt the models saw: the loop keeps the
    task's own prompt in `prompt_source` beside it (they differ once a chat template is applied)."""
    gold = task.gold
    if gold is None:
        return None
    source = {}
    for t in tables:
        if t is not None and "prompt_source" in t.columns:
            source.update(zip(t["prompt"], t["prompt_source"]))
    return lambda prompt, completion: gold(source.get(prompt, prompt), completion)
