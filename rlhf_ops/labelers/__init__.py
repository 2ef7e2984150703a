"""Labelers turn sampled completions into preference pairs, each row keeping its provenance.

One interface, `label(prompt_rows, candidates, *, iteration, checkpoint, work_dir) -> DataFrame`
with the columns of `rlhf_ops.testbed.builders.PAIR_COLUMNS` (pair_id, prompt, prompt_id, chosen,
rejected, gold_chosen, gold_rejected, labeler, iteration, policy_checkpoint, source):

- `annotator`: a simulated annotator from the testbed panel (gold reward + noise + biases);
- `reward_model`: best vs worst of n by a reward model or ensemble (RLHFlow-style);
- `human`: a file queue: pairs are exported as JSONL and the loop pauses until labels come back.
"""

from __future__ import annotations


def make_labeler(kind: str, *, annotator: str = "careful", seed: int = 0, reward_model: str = "",
                 trust_remote_code: bool = False):
    if kind == "annotator":
        from .annotator import AnnotatorLabeler

        return AnnotatorLabeler(annotator, seed)
    if kind == "reward_model":
        from .reward_model import RewardModelLabeler

        return RewardModelLabeler(reward_model, trust_remote_code)
    if kind == "human":
        from .human import HumanQueueLabeler

        return HumanQueueLabeler()
    raise ValueError(f"unknown labeler '{kind}' (use annotator, reward_model or human)")
