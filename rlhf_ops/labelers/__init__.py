"""Labelers turn sampled completions into preference pairs, each row keeping its provenance.

One interface, `label(prompt_rows, candidates, *, iteration, checkpoint, work_dir) -> DataFrame`
with the columns of `rlhf_ops.pairs.PAIR_COLUMNS` (pair_id, prompt, prompt_id, chosen, rejected,
gold_chosen, gold_rejected, labeler, iteration, policy_checkpoint, source); the loop fills the gold
columns from the task's gold reward where it has one:

- `annotator`: a simulated annotator the task provides (the testbed's panel: gold reward + noise + biases);
- `reward_model`: best vs worst of n by a reward model or ensemble (RLHFlow-style);
- `human`: a file queue: pairs are exported as JSONL and the loop pauses until labels come back.
"""

from __future__ import annotations


def make_labeler(kind: str, *, task=None, annotator: str = "careful", seed: int = 0, reward_model: str = "",
                 trust_remote_code: bool = False):
    if kind == "annotator":
        if task is None or annotator not in task.annotators():
            offered = list(task.annotators()) if task is not None else []
            raise ValueError(f"loop.labeler=annotator: the task has no annotator '{annotator}' (it offers {offered})")
        return task.annotator(annotator, seed)
    if kind == "reward_model":
        from .reward_model import RewardModelLabeler

        return RewardModelLabeler(reward_model, trust_remote_code)
    if kind == "human":
        from .human import HumanQueueLabeler

        return HumanQueueLabeler()
    raise ValueError(f"unknown labeler '{kind}' (use annotator, reward_model or human)")
