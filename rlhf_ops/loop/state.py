"""The loop's state: what one step hands the next, committed to the ledger after every step.

`LoopState` is JSON on disk (in the ledger: the first finished step's `state_json`, then each step's
delta), a dataclass in memory: a step gets its own copy, changes it, and the runner commits it.
`work` is the current iteration's scratch (paths of this iteration's completions, pairs, candidate
policy, evaluation); collect starts it afresh. What a rollback restores is exactly `LastGood`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class LastGood:
    """The last accepted state: what a rollback restores, and what the next policy is judged against."""

    iteration: int
    policy: str
    rm: Optional[str]
    kl_state: dict
    rm_policy_state: dict
    cursor: int
    lr_scale: float
    eval: dict
    samples: Optional[str]


@dataclass
class IterationWork:
    completions: str = ""
    prompts: str = ""
    pairs: str = ""
    candidate: Optional[str] = None
    beta: Optional[float] = None
    lr_scale: Optional[float] = None
    eval: Optional[dict] = None
    eval_samples: Optional[str] = None
    rm_update_reason: str = ""
    # Set by the runner when a step raised AbandonIteration; only the gate reads it.
    abandoned: Optional[str] = None
    abandon_remedies: list[str] = field(default_factory=list)


@dataclass
class LoopState:
    # set up once
    data: dict[str, str] = field(default_factory=dict)   # table name -> path (setup/prepare/*.parquet)
    init_policy: str = ""
    init_rm: Optional[str] = None
    gate_rm: Optional[str] = None   # loop.gate.oracle=heldout_rm: the reward model the gate judges with
    sft_policy: str = ""
    ref: str = ""
    baseline_eval: Optional[dict] = None
    stage_meta: dict = field(default_factory=dict)        # per setup stage, for summary.json
    outputs: dict[str, str] = field(default_factory=dict)  # stages_once: ppo_policy, dpo_policy
    # carried from iteration to iteration (a rollback restores them from last_good)
    policy: str = ""
    rm: Optional[str] = None
    cursor: int = 0
    kl_state: dict = field(default_factory=dict)
    rm_policy_state: dict = field(default_factory=dict)
    lr_scale: float = 1.0
    force_rm_refresh: bool = False
    adversarial_pairs: str = ""   # a rejected candidate's labelled samples, for the next RM refresh
    last_good: Optional[LastGood] = None
    history: list[dict] = field(default_factory=list)         # accepted evaluations, the baseline first
    iterations_log: list[dict] = field(default_factory=list)  # one entry per gated iteration
    n_rollbacks: int = 0
    work: IterationWork = field(default_factory=IterationWork)

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, d: dict) -> LoopState:
        d = dict(d)
        last_good = d.pop("last_good", None)
        work = d.pop("work", None) or {}
        return cls(**d, last_good=LastGood(**last_good) if last_good else None, work=IterationWork(**work))

    def copy(self) -> LoopState:
        return LoopState.from_json(self.to_json())

    def restore(self, good: LastGood) -> None:
        """Put back the last accepted policy, RM, controller states and data cursor."""
        self.policy, self.rm, self.cursor = good.policy, good.rm, good.cursor
        self.kl_state, self.rm_policy_state, self.lr_scale = dict(good.kl_state), dict(good.rm_policy_state), good.lr_scale
