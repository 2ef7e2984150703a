"""Dataset builders for the testbed: SFT demos, preference pairs, prompt pools, and table I/O.

Every pair carries its provenance (labeler, iteration, policy checkpoint, source) and the gold
reward of both texts, so later analysis can tell grammar pairs from on-policy pairs and measure
label quality exactly. Tables are written atomically (temp file + os.replace) so a reader never
sees half a file.
"""

from __future__ import annotations

import random

import pandas as pd

from rlhf_ops.artifacts import read_table, write_table  # noqa: F401  (re-exported: the testbed's table I/O)
from rlhf_ops.pairs import PAIR_COLUMNS, make_pair_id  # noqa: F401  (re-exported)
from rlhf_ops.tasks.reviews.annotators import SimulatedAnnotator
from rlhf_ops.tasks.reviews.gold import gold_reward
from rlhf_ops.tasks.reviews.task import ReviewGrammar

SFT_COLUMNS = ["prompt", "completion", "gold", "prompt_id", "source", "seed"]
POOL_COLUMNS = ["prompt", "prompt_id", "item", "aspect", "split"]


def build_sft_demos(prompts: list[dict], n_per_prompt: int, seed: int,
                    min_gold: float | None = None) -> pd.DataFrame:
    """Grammar completions for each prompt row; optionally only those with gold >= min_gold."""
    grammar, rng = ReviewGrammar(seed), random.Random(seed)
    records = []
    for row in prompts:
        for _ in range(n_per_prompt):
            completion = grammar.sample(row["item"], row["aspect"], rng)
            gold = gold_reward(row["prompt"], completion)
            if min_gold is None or gold >= min_gold:
                records.append({"prompt": row["prompt"], "completion": completion, "gold": gold,
                                "prompt_id": row["prompt_id"], "source": "grammar",
                                "seed": seed})
    return pd.DataFrame.from_records(records, columns=SFT_COLUMNS)




def pairs_from_candidates(prompt_rows: list[dict], candidates: list[list[str]],
                          annotator: SimulatedAnnotator, *, iteration: int,
                          policy_checkpoint: str, source: str, rng_seed: int) -> pd.DataFrame:
    """One labelled pair per prompt from a random pair of its distinct candidates.

    Prompts with fewer than 2 distinct candidates (e.g. a collapsed policy) yield no pair.
    """
    if len(prompt_rows) != len(candidates):
        raise ValueError(f"{len(prompt_rows)} prompt rows but {len(candidates)} candidate lists")
    rng = random.Random(rng_seed)
    records = []
    for k, (row, cands) in enumerate(zip(prompt_rows, candidates)):
        distinct = list(dict.fromkeys(cands))  # dedupe, keeping order for determinism
        if len(distinct) < 2:
            continue
        a, b = rng.sample(distinct, 2)
        chosen, rejected = annotator.label(row["prompt"], a, b)
        pid = make_pair_id(source, iteration, policy_checkpoint, row["prompt_id"], k, a, b)
        records.append({
            "pair_id": pid,
            "prompt": row["prompt"], "prompt_id": row["prompt_id"],
            "chosen": chosen, "rejected": rejected,
            "gold_chosen": gold_reward(row["prompt"], chosen),
            "gold_rejected": gold_reward(row["prompt"], rejected),
            "labeler": annotator.name, "iteration": iteration,
            "policy_checkpoint": policy_checkpoint, "source": source,
        })
    return pd.DataFrame.from_records(records, columns=PAIR_COLUMNS)


def build_grammar_pairs(prompts: list[dict], n_pairs: int, annotator: SimulatedAnnotator,
                        seed: int) -> pd.DataFrame:
    """`n_pairs` labelled pairs of two grammar samples each, cycling over `prompts`."""
    if n_pairs > 0 and not prompts:
        raise ValueError("no prompts to build pairs from")
    grammar, rng = ReviewGrammar(seed), random.Random(seed)
    rows, candidates = [], []
    for k in range(n_pairs):
        row = prompts[k % len(prompts)]
        a = grammar.sample(row["item"], row["aspect"], rng)
        b = grammar.sample(row["item"], row["aspect"], rng)
        for _ in range(100):  # identical samples are rare; resample so every pair is usable
            if b != a:
                break
            b = grammar.sample(row["item"], row["aspect"], rng)
        else:
            raise RuntimeError(f"grammar kept repeating one sample for {row['prompt_id']}")
        rows.append(row)
        candidates.append([a, b])
    return pairs_from_candidates(rows, candidates, annotator, iteration=-1,
                                 policy_checkpoint="grammar", source="grammar", rng_seed=seed)


def build_prompt_pool(prompt_rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame.from_records([{c: r[c] for c in POOL_COLUMNS} for r in prompt_rows],
                                     columns=POOL_COLUMNS)


