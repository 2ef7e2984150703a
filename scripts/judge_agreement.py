"""How well a judge agrees with the testbed's gold: pairwise verdicts on the testbed's held-out pairs
(and, with --samples, a candidate policy's evaluation samples against the baseline's), scored by gold.

    python scripts/judge_agreement.py --judge DIR --run RUN_DIR [--n 100] [--rubric TEXT] [--samples ITER]

Prints one JSON line: agreement with gold on pairs gold separates (order-debiased verdicts; and asked in
one order only, as a judge without swapping would be), tie rate,
mean position bias, the judge's preference for the longer answer, seconds per comparison. RUN_DIR is a
finished testbed run (setup/prepare/heldout_pairs.parquet; iter_NNN/evaluate/samples.parquet).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rlhf_ops.evaluation import count_words
from rlhf_ops.labelers.judge import DEFAULT_RUBRIC, Judge, LocalJudge, question_text
from rlhf_ops.tasks.reviews.gold import gold_reward


def score(judge, items, golds_a, golds_b, words_a, words_b) -> dict:
    t = time.perf_counter()
    v = judge.compare(items)
    dt = time.perf_counter() - t
    ga, gb = np.asarray(golds_a), np.asarray(golds_b)
    sep = ga != gb
    says_a = np.array([x.p_a > 0.5 for x in v])
    tie = np.array([x.tie for x in v])
    longer_a = np.asarray(words_a) > np.asarray(words_b)
    decided = sep & ~tie
    first = np.array([x.p_ab > 0.5 for x in v])  # one order only (a shown first): no debiasing, no ties
    return {"n": len(items), "gold_separates": int(sep.sum()),
            "agreement_one_order": float(np.mean(first[sep] == (ga > gb)[sep])) if sep.any() else None,
            "agreement": float(np.mean(says_a[decided] == (ga > gb)[decided])) if decided.any() else None,
            "agreement_ties_half": float(np.mean(np.where(tie, 0.5, says_a == (ga > gb))[sep])) if sep.any() else None,
            "tie_rate": float(tie.mean()), "position_bias": float(np.mean([x.position_bias for x in v])),
            "prefers_longer": float(np.mean(says_a[~tie] == longer_a[~tie])) if (~tie).any() else None,
            "s_per_comparison": dt / len(items)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--judge", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rubric", default=DEFAULT_RUBRIC)
    ap.add_argument("--samples", type=int, help="also judge iter_NNN's evaluation samples against the baseline's")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    run = Path(args.run)
    judge = Judge(LocalJudge(args.judge, batch_size=args.batch_size), rubric=args.rubric)
    pairs = pd.read_parquet(run / "setup" / "prepare" / "heldout_pairs.parquet").head(args.n)
    src = pairs["prompt_source"] if "prompt_source" in pairs else pairs["prompt"]
    qs = [question_text(str(s)) for s in src]
    rng = np.random.default_rng(0)
    flip = rng.random(len(pairs)) < 0.5  # chosen is not always "a"
    a = np.where(flip, pairs["rejected"], pairs["chosen"])
    b = np.where(flip, pairs["chosen"], pairs["rejected"])
    out = {"judge": args.judge, "pairs": score(judge, list(zip(qs, a, b)), [gold_reward(s, x) for s, x in zip(src, a)],
                                               [gold_reward(s, x) for s, x in zip(src, b)],
                                               [count_words(x) for x in a], [count_words(x) for x in b])}
    if args.samples is not None:
        cand = pd.read_parquet(run / f"iter_{args.samples:03d}" / "evaluate" / "samples.parquet")
        base = pd.read_parquet(run / "setup" / "baseline" / "samples.parquet")
        table = pd.read_parquet(run / "setup" / "prepare" / "prompts_gold_eval.parquet")
        tq = [question_text(str(s)) for s in table["prompt_source"]]
        items = [(tq[i], c, b) for i, c, b in zip(cand["prompt_index"], cand["completion"], base["completion"])]
        out["samples"] = score(judge, items, cand["gold"], base["gold"], cand["words"], base["words"])
        out["samples"]["gold_win_rate"] = float(np.mean(np.where(cand["gold"] > base["gold"], 1.0,
                                                                 np.where(cand["gold"] == base["gold"], 0.5, 0.0))))
    out["judge_calls"] = judge.calls
    print(json.dumps(out))


if __name__ == "__main__":
    main()
