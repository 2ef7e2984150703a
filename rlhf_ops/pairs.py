"""The preference-pair schema every labeler writes and every trainer reads, and stable pair ids.

A pair row keeps its provenance (labeler, iteration, the policy checkpoint that sampled it,
source) so later analysis can tell seed pairs from on-policy pairs. `gold_chosen` /
`gold_rejected` hold the task's gold reward of both texts where the task has one, NaN otherwise.
"""

from __future__ import annotations

import hashlib
import math

import pandas as pd

PAIR_COLUMNS = ["pair_id", "prompt", "prompt_id", "chosen", "rejected", "gold_chosen",
                "gold_rejected", "labeler", "iteration", "policy_checkpoint", "source"]


def make_pair_id(source: str, iteration: int, policy_checkpoint: str, prompt_id: str, k: int,
                 a: str, b: str) -> str:
    """Stable pair id: same inputs, same id; k is the pair's position in its batch."""
    # Readable prefix for grepping; the hash keeps ids unique across calls with other seeds.
    digest = hashlib.sha1("\x1f".join([source, str(iteration), policy_checkpoint, prompt_id,
                                       str(k), a, b]).encode()).hexdigest()[:10]
    return f"{source}-it{iteration}-{prompt_id}-{k:05d}-{digest}"


def empty_pairs() -> pd.DataFrame:
    return pd.DataFrame(columns=PAIR_COLUMNS)


def with_gold(pairs: pd.DataFrame, gold) -> pd.DataFrame:
    """Fill gold_chosen / gold_rejected from `gold(prompt, completion)`, or NaN when gold is None."""
    pairs = pairs.copy()
    if gold is None or not len(pairs):
        pairs["gold_chosen"] = math.nan
        pairs["gold_rejected"] = math.nan
        return pairs
    pairs["gold_chosen"] = [gold(p, c) for p, c in zip(pairs["prompt"], pairs["chosen"])]
    pairs["gold_rejected"] = [gold(p, r) for p, r in zip(pairs["prompt"], pairs["rejected"])]
    return pairs
