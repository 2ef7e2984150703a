"""Fine-tune a local causal LM into a pairwise judge from preference pairs you already have.

    python -m rlhf_ops.judge_train --pairs PAIRS --init MODEL_DIR --out JUDGE_DIR [--heldout 0.1] [--max-steps N]

Each pair (prompt, chosen, rejected; the formats task.pairs reads, text or conversational) becomes two
rows of rlhf_ops' judge prompt (`rlhf_ops.labelers.judge`: the rubric, the request, answers A and B),
one per order, whose completion is the letter of the chosen answer; the SFT stage (TRL's SFTTrainer,
loss on the completion only) trains on them. So the judge `loop.judge.model=JUDGE_DIR` reads is
asked exactly what it was trained on. A held-out share of the pairs measures it afterwards: accuracy
(order-averaged preference for the chosen answer), ties and position bias, written to
JUDGE_DIR/judge_eval.json and printed.

A tokenizer without a chat template gets a plain-text one (`### role:` turns) in the judge's copy; the
init model directory is never written. `--tiny-from TOKENIZER_DIR` starts from a fresh tiny Llama on that
tokenizer instead of a pretrained model (the testbed's, with a longer context for two answers).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

PLAIN_TEMPLATE = ("{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}### assistant:\n{% endif %}")


def judge_rows(pairs, questions: list[str], tok, rubric: str, template: str, seed: int = 0) -> list[dict]:
    from .labelers.judge import judge_messages

    rng = random.Random(seed)
    rows = []
    for q, c, r in zip(questions, pairs["chosen"], pairs["rejected"]):
        for first_chosen in (True, False):
            a, b = (c, r) if first_chosen else (r, c)
            text = tok.apply_chat_template(judge_messages(rubric, template, q, a, b), tokenize=False,
                                           add_generation_prompt=True)
            rows.append({"prompt": text, "completion": "A" if first_chosen else "B"})
    rng.shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlhf_ops.judge_train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", required=True, help="preference pairs: .jsonl / .parquet / datasets folder")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--init", help="a local causal-LM directory to fine-tune")
    src.add_argument("--tiny-from", help="a tokenizer directory: start from a fresh tiny Llama on it")
    ap.add_argument("--out", required=True, help="the judge's directory (must not exist)")
    ap.add_argument("--heldout", type=float, default=0.1, help="share of the pairs held out to measure the judge")
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rubric", default="", help="empty = the built-in rubric (give the same as loop.judge.rubric)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from .artifacts import InputError

    out = Path(args.out)
    try:
        if out.exists():
            raise InputError(f"--out {out}: already exists; give a new directory (nothing is overwritten)")
        if not 0 <= args.heldout < 1:
            raise InputError(f"--heldout={args.heldout} must be in [0, 1)")
        return _train(args, out)
    except (InputError, ValueError, OSError) as e:
        print(f"rlhf_ops.judge_train: error: {e}", file=sys.stderr)
        return 2


def _train(args, out: Path) -> int:
    from dataclasses import asdict

    import pandas as pd

    from .artifacts import InputError, write_json_atomic, write_table
    from .config import LauncherConfig, ModelConfig, SFTStageConfig
    from .formats import has_chat_template, normalize_pairs, read_any, source_key
    from .labelers.judge import DEFAULT_RUBRIC, DEFAULT_TEMPLATE, Judge, LocalJudge, question_text
    from .launcher import run_stage
    from .models import build_tiny_policy, check_checkpoint_dir, load_tokenizer, save_model

    pairs = normalize_pairs(read_any(args.pairs, "--pairs"), args.pairs)
    if len(pairs) < 4:
        raise ValueError(f"--pairs {args.pairs}: {len(pairs)} pair(s); a judge needs more to learn from")
    rng = random.Random(args.seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    n_held = int(round(len(pairs) * args.heldout))
    held, train = pairs.iloc[sorted(order[:n_held])], pairs.iloc[sorted(order[n_held:])]
    rubric = args.rubric or DEFAULT_RUBRIC
    with tempfile.TemporaryDirectory(prefix="judge_train_", dir=out.parent if out.parent.exists() else None) as tmp:
        tmp = Path(tmp)
        init = tmp / "init"
        if args.tiny_from:
            if not Path(args.tiny_from).is_dir():
                raise InputError(f"--tiny-from {args.tiny_from}: not a directory with a tokenizer")
            tok = load_tokenizer(args.tiny_from)
            save_model(build_tiny_policy(ModelConfig(max_position_embeddings=args.max_length), tok, args.seed), tok, init)
        else:
            check_checkpoint_dir(args.init, "--init", tokenizer=True)
            import shutil

            shutil.copytree(args.init, init)
        tok = load_tokenizer(init)
        if not has_chat_template(tok):
            tok.chat_template = PLAIN_TEMPLATE
            tok.save_pretrained(init)
        qs = [question_text(source_key(p)) for p in train["prompt"]]
        data = write_table(pd.DataFrame(judge_rows(train, qs, tok, rubric, DEFAULT_TEMPLATE, args.seed)),
                           tmp / "judge_sft.parquet")
        cfg = asdict(SFTStageConfig(learning_rate=args.learning_rate, num_train_epochs=args.epochs,
                                    max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
                                    max_length=args.max_length))
        meta = run_stage("sft", cfg=cfg, inputs={"policy": str(init), "data": str(data)}, output=out, seed=args.seed,
                         launcher=asdict(LauncherConfig()), progress=False)
    result = {"train_pairs": len(train), "heldout_pairs": len(held), "final_loss": meta["metrics"].get("final_loss"),
              "wall_s": meta["wall_s"]}
    if len(held):
        judge = Judge(LocalJudge(str(out)), rubric=rubric)
        v = judge.compare([(question_text(source_key(p)), c, r)
                           for p, c, r in zip(held["prompt"], held["chosen"], held["rejected"])])
        result.update(accuracy=sum(x.p_a > 0.5 for x in v) / len(v), tie_rate=sum(x.tie for x in v) / len(v),
                      mean_preference=sum(x.p_a for x in v) / len(v),
                      position_bias=sum(x.position_bias for x in v) / len(v))
    write_json_atomic(out / "judge_eval.json", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
