"""Best vs worst of n by a reward model (or the mean of an ensemble), as in RLHFlow's iterative DPO.

A NaN or infinite score is never turned into a label: the whole batch is refused with an error
naming the prompt, so the loop rejects the iteration instead of training on garbage.
"""

from __future__ import annotations

import math

import pandas as pd

from ..scoring import load_scorer, member_scores
from ..pairs import PAIR_COLUMNS, make_pair_id


class NonFiniteRewardError(FloatingPointError):
    pass


class RewardModelLabeler:
    def __init__(self, path: str, trust_remote_code: bool = False):
        if not path:
            raise ValueError("labeler=reward_model needs a reward model path")
        self.path, self.trc = path, trust_remote_code

    def label(self, prompt_rows: list[dict], candidates: list[list[str]], *, iteration: int, checkpoint: str,
              work_dir=None, scores=None) -> pd.DataFrame:
        if scores is None:
            model, tok = load_scorer(self.path, self.trc)
            flat_p = [r["prompt"] for r, cs in zip(prompt_rows, candidates) for _ in cs]
            flat_c = [c for cs in candidates for c in cs]
            flat = member_scores(model, tok, flat_p, flat_c).mean(-1).tolist()
            scores, k = [], 0
            for cs in candidates:
                scores.append(flat[k:k + len(cs)])
                k += len(cs)
        records = []
        for j, (row, cs, ss) in enumerate(zip(prompt_rows, candidates, scores)):
            bad = [s for s in ss if not math.isfinite(s)]
            if bad:
                raise NonFiniteRewardError(f"reward model {self.path} gave {bad[0]} for a completion of "
                                           f"prompt {row['prompt_id']!r}; refusing to label this batch")
            order = sorted(range(len(cs)), key=lambda i: ss[i])
            best, worst = cs[order[-1]], cs[order[0]]
            if best == worst or ss[order[-1]] == ss[order[0]]:
                continue  # identical texts, or a tie: the RM prefers neither, so there is no label
            records.append({
                "pair_id": make_pair_id("rm", iteration, checkpoint, row["prompt_id"], j, best, worst),
                "prompt": row["prompt"], "prompt_id": row["prompt_id"], "chosen": best, "rejected": worst,
                "gold_chosen": float("nan"), "gold_rejected": float("nan"),
                "labeler": f"rm:{self.path}", "iteration": iteration, "policy_checkpoint": checkpoint, "source": "policy",
            })
        return pd.DataFrame.from_records(records, columns=PAIR_COLUMNS)
