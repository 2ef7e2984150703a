"""Print summary statistics of the gold-oracle testbed as markdown tables (for docs/testbed.md).

    cd /work/main && .venv/bin/python scripts/testbed_stats.py --seed 0

Tables: gold distribution of 2000 grammar samples (overall and per flaw kind); gold of each
degenerate text vs the "good" one for 3 item/aspect pairs; each default-panel annotator's
agreement with gold on 2000 grammar pairs, plus pairwise agreement and Fleiss' kappa.
Pure Python, a few seconds on one CPU core.
"""

from __future__ import annotations

import argparse
import random

import pandas as pd

from rlhf_ops.tasks.reviews.annotators import (
    agreement_with_gold, default_panel, inter_annotator_agreement,
)
from rlhf_ops.tasks.reviews.gold import gold_reward, gold_terms
from rlhf_ops.tasks.reviews.task import ReviewGrammar, degenerate_texts, make_prompt, prompt_splits

PENALTIES = ["repetition_penalty", "off_topic_penalty", "length_penalty", "ending_penalty"]
DEGENERATE_PAIRS = [("the hotel", "service"), ("the pizza place", "food"),
                    ("the laptop", "battery")]


def cell(v) -> str:
    # Pipes inside a cell (the "careful|typical" keys) would end the cell in markdown.
    return f"{v:.3f}" if isinstance(v, float) else str(v).replace("|", "\\|")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def grammar_samples(seed: int, n: int) -> pd.DataFrame:
    prompts = prompt_splits(seed, n, 0, 0)["train"]
    grammar, rng = ReviewGrammar(seed), random.Random(seed)
    records = []
    for row in prompts:
        text, flaw = grammar.sample_with_flaw(row["item"], row["aspect"], rng)
        terms = gold_terms(row["prompt"], text)
        records.append({"flaw": flaw or "(none)", "gold": terms["gold"],
                        "penalised": any(terms[k] > 0 for k in PENALTIES) or terms["empty"] > 0,
                        "n_words": terms["n_words"]})
    return pd.DataFrame(records)


def grammar_rows(seed: int, n: int) -> tuple[list[tuple[str, str, str]], int]:
    """n (prompt, a, b) rows in random order with distinct gold; also the number of ties seen."""
    prompts = prompt_splits(seed, 1000, 0, 0)["train"]
    grammar, rng = ReviewGrammar(seed + 1), random.Random(seed + 1)
    rows, ties = [], 0
    while len(rows) < n:
        r = prompts[(len(rows) + ties) % len(prompts)]
        a, b = (grammar.sample(r["item"], r["aspect"], rng) for _ in range(2))
        if gold_reward(r["prompt"], a) == gold_reward(r["prompt"], b):
            ties += 1
        else:
            rows.append((r["prompt"], a, b))
    return rows, ties


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=2000, help="grammar samples and pairs")
    args = ap.parse_args()

    df = grammar_samples(args.seed, args.n)
    g = df["gold"]
    print(f"### Gold of {args.n} grammar samples (seed {args.seed})\n")
    print(table(["mean", "std", "p10", "p50", "p90", "fraction flawed (grammar)",
                 "fraction with any gold penalty", "mean words"],
                [[g.mean(), g.std(), g.quantile(0.1), g.quantile(0.5), g.quantile(0.9),
                  (df.flaw != "(none)").mean(), df.penalised.mean(), df.n_words.mean()]]))
    print()
    by = df.groupby("flaw").agg(n=("gold", "size"), mean=("gold", "mean"),
                                p10=("gold", lambda s: s.quantile(0.1)),
                                p90=("gold", lambda s: s.quantile(0.9)),
                                words=("n_words", "mean"))
    print(table(["flaw", "n", "mean gold", "p10", "p90", "mean words"],
                [[k, int(r.n), r["mean"], r.p10, r.p90, r.words] for k, r in by.iterrows()]))

    print("\n### Degenerate texts vs a good review (gold; VADER compound in brackets)\n")
    texts = {pair: degenerate_texts(*pair) for pair in DEGENERATE_PAIRS}
    rows = []
    for kind in texts[DEGENERATE_PAIRS[0]]:
        row = [kind]
        for item, aspect in DEGENERATE_PAIRS:
            t = gold_terms(make_prompt(item, aspect), texts[(item, aspect)][kind])
            row.append(f"{t['gold']:.3f} ({t['sentiment']:.2f})")
        rows.append(row)
    print(table(["text"] + [f"{i} / {a}" for i, a in DEGENERATE_PAIRS], rows))

    pair_rows, ties = grammar_rows(args.seed, args.n)
    print(f"\n### Default panel on {args.n} grammar pairs (random order; {ties} gold ties "
          "skipped while sampling)\n")
    acc = []
    for ann in default_panel(args.seed):
        acc.append([ann.name, ann.tau, ann.length_bias, ann.flip_rate,
                    agreement_with_gold(ann, pair_rows)])
    print(table(["annotator", "tau", "length_bias", "flip_rate", "agreement with gold"], acc))
    iaa = inter_annotator_agreement(default_panel(args.seed), pair_rows)
    print()
    print(table(["annotator pair", "agreement"], [[k, v] for k, v in iaa["pairwise"].items()]
                + [["mean pairwise", iaa["mean_pairwise"]],
                   ["Fleiss' kappa (4 raters, 2 categories)", iaa["fleiss_kappa"]]]))


if __name__ == "__main__":
    main()
