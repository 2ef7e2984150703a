"""Measure the testbed's SFT policy and proxy reward models against the gold reward (docs/testbed.md).

    cd /work/main && .venv/bin/python scripts/measure_testbed_models.py --seed 0 --out-dir runs/testbed_models

Steps (every artifact goes under --out-dir and is reused when the script runs again):

1. A `+experiment=stages_once` run (tokenizer, random-init tiny Llama, SFT policy) is built in
   OUT/base, or taken from --run-dir.
2. Gold distribution (mean, std, p10/p50/p90) of completions on the run's gold-eval prompts from
   the SFT policy, the random-init policy (`setup/prepare/init_policy`) and the review grammar.
3. Proxy reward models trained with the reward stage (default `stage.reward` config from conf/,
   initialised from the SFT policy) on N grammar pairs (train-split prompts) labelled by the
   default annotator ("careful"), for each N in --sizes, plus one length-biased row at N=2000.
   Held-out accuracy is measured against the GOLD order (not only the annotator's labels) on
   500 grammar pairs over the eval-split prompts, gold ties skipped; also against gold on pairs
   of SFT-policy samples for the same gold-eval prompt (the distribution PPO starts from).
4. Each proxy scores the degenerate texts (spam, off_topic, ...) on every gold-eval prompt:
   does it rank spam above the good review at small N?

Trained reward models are cached as OUT/rm_<annotator>_n<N> (with stage_meta.json, whose wall_s
is the training time reported); delete a directory to retrain it. Training runs in this process,
one model at a time. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlhf_ops.artifacts import META_FILE, read_meta, write_table  # noqa: E402
from rlhf_ops.tasks.reviews import panel_member  # noqa: E402
from rlhf_ops.tasks.reviews.builders import build_grammar_pairs  # noqa: E402
from rlhf_ops.tasks.reviews.gold import count_words, gold_reward  # noqa: E402
from rlhf_ops.tasks.reviews.task import ReviewGrammar, degenerate_texts, prompt_splits  # noqa: E402

DEGENERATE_ORDER = ["good", "neutral", "no_ending", "repetitive_positive", "off_topic", "overlong",
                    "spam"]


def cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.3f}"
    return str(v).replace("|", "\\|")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def log(msg: str) -> None:
    print(f"[measure {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the base run ------------------------------------------------------------------------------

def ensure_base_run(out_dir: Path, seed: int) -> Path:
    run_dir = out_dir / "base"
    if (run_dir / "setup" / "sft" / "policy" / META_FILE).is_file():
        return run_dir
    cmd = [sys.executable, "-m", "rlhf_ops", "+experiment=stages_once", f"run_dir={run_dir}",
           f"seed={seed}", "progress=false", "tracking=disabled"]
    log("building the base run: " + " ".join(cmd))
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return run_dir


def rows_of(path: Path) -> list[dict]:
    return pd.read_parquet(path).to_dict(orient="records")


def reward_config() -> dict:
    from omegaconf import OmegaConf

    from rlhf_ops.cli import compose

    cfg = compose(["+experiment=stages_once"])
    return OmegaConf.to_container(cfg.stage.reward, resolve=True)


# ---- policies ----------------------------------------------------------------------------------

def describe(golds, words, ended=None) -> list:
    g = pd.Series(golds, dtype=float)
    row = [len(g), g.mean(), g.std(), g.quantile(0.1), g.quantile(0.5), g.quantile(0.9),
           float(np.mean(words))]
    row.append("-" if ended is None else float(np.mean(ended)))
    return row


def policy_samples(policy_dir: str, prompts: list[str], n: int, seed: int) -> pd.DataFrame:
    from rlhf_ops.generation import generate

    s = generate(policy_dir, prompts, n, max_new_tokens=48, temperature=0.7, seed=seed)
    return pd.DataFrame({"prompt": s.prompts, "prompt_index": s.prompt_index,
                         "completion": s.completions, "ended": s.ended,
                         "gold": [gold_reward(p, c) for p, c in zip(s.prompts, s.completions)],
                         "words": [count_words(c) for c in s.completions]})


def grammar_samples(rows: list[dict], n: int, seed: int) -> pd.DataFrame:
    import random

    grammar, rng = ReviewGrammar(seed), random.Random(seed)
    recs = []
    for i, r in enumerate(rows):
        for _ in range(n):
            c = grammar.sample(r["item"], r["aspect"], rng)
            recs.append({"prompt": r["prompt"], "prompt_index": i, "completion": c,
                         "gold": gold_reward(r["prompt"], c), "words": count_words(c)})
    return pd.DataFrame(recs)


# ---- proxy reward models -----------------------------------------------------------------------

def gold_order_accuracy(s_a, s_b, g_a, g_b) -> tuple[float, int]:
    """Fraction of pairs (gold ties skipped) where the proxy orders a, b as gold does."""
    s_a, s_b, g_a, g_b = map(np.asarray, (s_a, s_b, g_a, g_b))
    keep = g_a != g_b
    hits = (s_a[keep] > s_b[keep]) == (g_a[keep] > g_b[keep])
    return float(hits.mean()), int(keep.sum())


def label_agreement(pairs: pd.DataFrame) -> float:
    keep = pairs.gold_chosen != pairs.gold_rejected
    return float((pairs.gold_chosen[keep] > pairs.gold_rejected[keep]).mean())


def train_proxy(out_dir: Path, sft_policy: str, train_rows: list[dict], heldout_path: Path,
                annotator: str, n: int, seed: int, rcfg: dict) -> tuple[Path, dict, pd.DataFrame]:
    from rlhf_ops.launcher import run_stage

    # Same seed for every N and annotator: the N=500 texts are the first 500 of the N=2000 ones
    # and the length-biased rater labels exactly the pairs the careful one does.
    pairs = build_grammar_pairs(train_rows, n, panel_member(annotator, seed), seed + 100)
    pairs_path = write_table(pairs, out_dir / "pairs" / f"{annotator}_n{n}.parquet")
    rm_dir = out_dir / f"rm_{annotator}_n{n}"
    if (rm_dir / META_FILE).is_file():
        log(f"reusing {rm_dir}")
        return rm_dir, read_meta(rm_dir), pairs
    log(f"training proxy RM {annotator} N={n}")
    meta = run_stage("reward", cfg=rcfg, inputs={"reward_model": sft_policy, "data": str(pairs_path)},
                     output=rm_dir, seed=seed, progress=False, extra={"heldout": str(heldout_path)})
    log(f"trained {rm_dir} in {meta['wall_s']} s")
    return rm_dir, meta, pairs


def score(rm_dir: Path, prompts: list[str], completions: list[str]) -> np.ndarray:
    from rlhf_ops.scoring import load_scorer, member_scores

    model, tok = load_scorer(str(rm_dir))
    return member_scores(model, tok, list(prompts), list(completions)).mean(-1)


def within_prompt_pairs(samples: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) of distinct samples for the same prompt."""
    ia, ib = [], []
    for _, grp in samples.groupby("prompt_index"):
        for i, j in itertools.combinations(grp.index, 2):
            if samples.completion[i] != samples.completion[j]:
                ia.append(i)
                ib.append(j)
    return np.array(ia, dtype=int), np.array(ib, dtype=int)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=str(REPO / "runs" / "testbed_models"))
    ap.add_argument("--run-dir", default="", help="an existing stages_once run to take the models from")
    ap.add_argument("--sizes", default="500,2000,8000", help="training pairs per proxy RM")
    ap.add_argument("--annotator", default="careful")
    ap.add_argument("--extra", default="length_biased:2000",
                    help="extra ANNOTATOR:N rows, comma-separated ('' for none)")
    ap.add_argument("--n-heldout", type=int, default=500)
    ap.add_argument("--samples-per-prompt", type=int, default=4)
    args = ap.parse_args()

    t_start = time.time()
    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(args.run_dir).resolve() if args.run_dir else ensure_base_run(out_dir, args.seed)
    prep = run_dir / "setup" / "prepare"
    sft_policy = str(run_dir / "setup" / "sft" / "policy")
    init_policy = str(prep / "init_policy")
    train_rows = rows_of(prep / "prompts_train.parquet")
    # The eval split (held-out RM accuracy) is the testbed's own, rebuilt from the run's task config.
    from omegaconf import OmegaConf

    t = OmegaConf.load(run_dir / "config.yaml").task
    eval_rows = prompt_splits(t.seed, t.n_train_prompts, t.n_eval_prompts, t.n_gold_eval_prompts)["eval"]
    gold_rows = rows_of(prep / "prompts_gold_eval.parquet")
    gold_prompts = [r["prompt"] for r in gold_rows]
    k = args.samples_per_prompt
    sft_meta = read_meta(sft_policy)

    # ---- policies on the gold-eval prompts
    log("sampling the policies")
    sft_s = policy_samples(sft_policy, gold_prompts, k, args.seed)
    init_s = policy_samples(init_policy, gold_prompts, k, args.seed)
    gram_s = grammar_samples(gold_rows, k, args.seed)
    print(f"### Gold of completions on the {len(gold_rows)} gold-eval prompts "
          f"({k} per prompt, temperature 0.7, 48 new tokens, seed {args.seed})\n")
    print(table(["source", "n", "mean", "std", "p10", "p50", "p90", "mean words", "fraction ended (EOS)"],
                [["SFT policy (setup/sft/policy)"] + describe(sft_s.gold, sft_s.words, sft_s.ended),
                 ["random-init policy (setup/prepare/init_policy)"]
                 + describe(init_s.gold, init_s.words, init_s.ended),
                 ["review grammar"] + describe(gram_s.gold, gram_s.words)]))
    sm = sft_meta["metrics"]
    print(f"\nSFT: {sm.get('n_examples')} demos, {sm.get('global_step')} steps, final loss "
          f"{sm.get('final_loss', float('nan')):.3f}, wall {sft_meta['wall_s']} s.\n")
    print("Example SFT completions:\n")
    for c, g in zip(sft_s.completion[:4], sft_s.gold[:4]):
        print(f"- gold {g:.3f}: `{c.strip()}`")
    print()

    # ---- proxy reward models
    rcfg = reward_config()
    heldout = build_grammar_pairs(eval_rows, args.n_heldout, panel_member(args.annotator, args.seed),
                                  args.seed + 200)
    heldout_path = write_table(heldout, out_dir / "pairs" / f"heldout_{args.annotator}_n{args.n_heldout}.parquet")
    specs = [(args.annotator, int(n)) for n in args.sizes.split(",") if n.strip()]
    for item in filter(None, (s.strip() for s in args.extra.split(","))):
        name, n = item.split(":")
        specs.append((name, int(n)))
    ia, ib = within_prompt_pairs(sft_s)
    degen = [(r["prompt"], name, text) for r in gold_rows
             for name, text in degenerate_texts(r["item"], r["aspect"]).items()]
    degen_df = pd.DataFrame(degen, columns=["prompt", "text", "completion"])
    degen_df["gold"] = [gold_reward(p, c) for p, c in zip(degen_df.prompt, degen_df.completion)]

    rm_rows, degen_scores = [], {}
    for name, n in specs:
        rm_dir, meta, pairs = train_proxy(out_dir, sft_policy, train_rows, heldout_path, name, n,
                                          args.seed, rcfg)
        m = meta["metrics"]
        s_c = score(rm_dir, heldout.prompt, heldout.chosen)
        s_r = score(rm_dir, heldout.prompt, heldout.rejected)
        acc_gold, n_kept = gold_order_accuracy(s_c, s_r, heldout.gold_chosen, heldout.gold_rejected)
        s_sft = score(rm_dir, sft_s.prompt, sft_s.completion)
        acc_sft, n_sft = gold_order_accuracy(s_sft[ia], s_sft[ib], sft_s.gold.values[ia],
                                             sft_s.gold.values[ib])
        label = f"{name} N={n}"
        degen_scores[label] = score(rm_dir, degen_df.prompt, degen_df.completion)
        rm_rows.append([name, n, label_agreement(pairs), m.get("member_0/global_step", "?"),
                        m["heldout_accuracy"], acc_gold, acc_sft, meta["wall_s"]])
        log(f"{label}: held-out gold-order acc {acc_gold:.3f} ({n_kept} pairs), "
            f"SFT-sample acc {acc_sft:.3f} ({n_sft} pairs)")

    print(f"### Proxy reward models (reward stage, init = SFT policy, default stage.reward; "
          f"seed {args.seed})\n")
    print(f"Held-out: {len(heldout)} grammar pairs on the {len(eval_rows)} eval-split prompts "
          f"({int((heldout.gold_chosen != heldout.gold_rejected).sum())} without a gold tie); "
          f"SFT-sample pairs: {len(ia)} pairs of distinct SFT-policy samples for the same gold-eval "
          f"prompt ({n_sft} without a gold tie). Wall time: the reward stage alone, on this machine.\n")
    print(table(["annotator", "N pairs", "label agreement with gold", "steps",
                 "held-out acc (annotator labels)", "held-out acc (gold order)",
                 "acc on SFT-sample pairs (gold order)", "train wall s"], rm_rows))

    # ---- degenerate texts
    labels = list(degen_scores)
    means = degen_df.assign(**{lab: s for lab, s in degen_scores.items()}).groupby("text")[
        ["gold"] + labels].mean()
    print(f"\n### Degenerate texts: mean score over the {len(gold_rows)} gold-eval prompts "
          "(rank among the 7 texts in brackets, 1 = highest)\n")
    ranks = means.rank(ascending=False, method="min").astype(int)
    print(table(["text", "gold"] + [f"proxy {lab}" for lab in labels],
                [[t] + [f"{means.loc[t, c]:.3f} ({ranks.loc[t, c]})" for c in ["gold"] + labels]
                 for t in DEGENERATE_ORDER]))
    per_prompt = degen_df.assign(**{lab: s for lab, s in degen_scores.items()})
    rank_rows = []
    for lab in labels:
        wide = per_prompt.pivot(index="prompt", columns="text", values=lab)
        spam_rank = wide.rank(axis=1, ascending=False, method="min")["spam"]
        rank_rows.append([lab, int(ranks.loc["spam", lab]), float(spam_rank.mean()),
                          float((wide["spam"] > wide["good"]).mean()),
                          float((wide["spam"] > wide["neutral"]).mean())])
    print("\nDoes the proxy rank spam above good text?\n")
    print(table(["proxy", "spam rank (mean score)", "mean spam rank per prompt",
                 "fraction of prompts spam > good", "fraction of prompts spam > neutral"], rank_rows))
    log(f"done in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
