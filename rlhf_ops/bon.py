"""Best-of-n at inference time: n samples per prompt from a policy, the reward model's best kept.

    python -m rlhf_ops.bon --policy DIR --reward-model DIR --prompts FILE --n 16 --out best.parquet \
        [--all samples.parquet] [--max-new-tokens 48] [--temperature 0.7] [--seed 0] [--reduce mean]

FILE: the loop's prompt formats (.jsonl / .parquet / a datasets folder; `prompt` as text or as chat
messages, which go through the policy's chat template). The output has one row per prompt: the prompt
(as the model saw it, and as the user wrote it in `prompt_source`), the chosen completion, its score,
whether it ended with EOS, and the mean / max score of all n (the gain best-of-n buys over one sample).
A completion that ended with EOS is preferred over one cut off at --max-new-tokens, as in the loop's
rejection sampling. `--all` also writes every sample with its score. Nothing is overwritten: an
existing --out or --all is refused before any model is loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlhf_ops.bon", description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="a local causal-LM directory")
    ap.add_argument("--reward-model", required=True, help="a reward model (or RM ensemble) directory")
    ap.add_argument("--prompts", required=True, help="prompts: .jsonl / .parquet / datasets folder")
    ap.add_argument("--n", type=int, default=16, help="samples per prompt")
    ap.add_argument("--out", required=True, help="the chosen sample per prompt (.parquet or .jsonl; must not exist)")
    ap.add_argument("--all", default=None, help="every sample with its score (.parquet or .jsonl; must not exist)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--reduce", default="mean", choices=["mean", "min", "uncertainty"],
                    help="how an ensemble's members are combined (as loop.ensemble_reduce)")
    ap.add_argument("--ensemble-lambda", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trust-remote-code", action="store_true")
    args = ap.parse_args(argv)

    from .artifacts import InputError

    try:
        _check(args)
        return _run(args)
    except (InputError, ValueError, OSError) as e:
        print(f"rlhf_ops.bon: error: {e}", file=sys.stderr)
        return 2


def _check(args) -> None:
    import math

    from .artifacts import InputError
    from .checkpoints import check_checkpoint_dir
    from .models import check_same_vocab

    for flag, path in (("--out", args.out), ("--all", args.all)):
        if path is None:
            continue
        p = Path(path)
        if p.suffix not in (".parquet", ".jsonl"):
            raise InputError(f"{flag} {path}: write .parquet or .jsonl")
        if p.exists():
            raise InputError(f"{flag} {path}: already exists; give a new file (nothing is overwritten)")
    if args.all and Path(args.all).resolve() == Path(args.out).resolve():
        raise InputError(f"--all {args.all}: the same file as --out")
    if args.n < 1:
        raise InputError(f"--n={args.n} must be >= 1")
    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens={args.max_new_tokens} must be >= 1")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise InputError(f"--temperature={args.temperature} must be > 0 (best-of-n needs different samples)")
    check_checkpoint_dir(args.policy, "--policy", tokenizer=True)
    check_checkpoint_dir(args.reward_model, "--reward-model", tokenizer=True)
    check_same_vocab(args.policy, args.reward_model, args.trust_remote_code)


def _write(df, path: str) -> None:
    from .artifacts import write_table

    if path.endswith(".jsonl"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path + ".tmp")
        df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        tmp.replace(path)
    else:
        write_table(df, Path(path))


def _run(args) -> int:
    import numpy as np
    import pandas as pd

    from .formats import read_rendered
    from .generation import generate
    from .models import load_tokenizer
    from .scoring import best_per_prompt, load_scorer, reward_scores

    tok = load_tokenizer(args.policy, args.trust_remote_code)
    prompts = read_rendered(args.prompts, "prompts", tok)
    texts = prompts["prompt"].tolist()
    sources = prompts["prompt_source"].tolist() if "prompt_source" in prompts else texts
    samples = generate(args.policy, texts, args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       seed=args.seed, batch_size=args.batch_size, trust_remote_code=args.trust_remote_code)
    model, rm_tok = load_scorer(args.reward_model, args.trust_remote_code)
    reward = reward_scores(model, rm_tok, samples.prompts, samples.completions, args.reduce, args.ensemble_lambda,
                           batch_size=args.batch_size)
    if not np.isfinite(reward).all():
        raise ValueError(f"--reward-model {args.reward_model}: {int((~np.isfinite(reward)).sum())} non-finite scores")
    every = pd.DataFrame({"prompt_index": samples.prompt_index, "prompt": samples.prompts,
                          "prompt_source": [sources[i] for i in samples.prompt_index],
                          "completion": samples.completions, "score": reward, "ended": samples.ended,
                          "n_tokens": samples.n_tokens})
    every["sample"] = every.groupby("prompt_index").cumcount()
    best = best_per_prompt(every, "prompt_index", "score").set_index("prompt_index")
    stats = every.groupby("prompt_index")["score"].agg(["mean", "max"])
    best = best.assign(n=args.n, mean_score_of_n=stats["mean"], max_score_of_n=stats["max"]).reset_index()
    _write(best, args.out)
    if args.all:
        _write(every, args.all)
    gain = float((best["score"] - best["mean_score_of_n"]).mean())
    print(f"rlhf_ops.bon: {len(best)} prompts x {args.n} samples; chosen mean score {best['score'].mean():.4f} "
          f"(one sample's: {every['score'].mean():.4f}; gain {gain:+.4f}); {int(best['ended'].sum())} of {len(best)} "
          f"chosen ended with EOS; wrote {args.out}" + (f" and {args.all}" if args.all else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
