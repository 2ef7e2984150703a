"""Feed rlhf_ops each kind of bad input and print the error it gives, as a markdown table.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bad_inputs.py [--out DIR]

Each case builds the tiny assets the tests use (a locally trained tokenizer, a tiny Llama policy,
testbed tables), breaks one thing, calls the real entry point (`run_stage`, `read_labels`, the
CLI's config pre-check) and records the exception's type and message, the seconds until it was
raised (so "before any training" is visible: a training step would take longer than any of them),
and whether the output / input files were left as they were. Nothing here is mocked: a case that
stops raising, or raises late, shows up in the table. docs/reliability.md quotes its output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

TINY_STAGE = ["stage.sft.max_steps=1", "stage.reward.max_steps=1", "stage.dpo.max_steps=1",
              "stage.ppo.total_episodes=16", "stage.ppo.per_device_train_batch_size=8",
              "stage.ppo.num_ppo_epochs=1", "stage.ppo.response_length=16"]


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest() if path.exists() else "absent"


def stage_cfg(name: str, **changes) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=TINY_STAGE)
    c = OmegaConf.to_container(cfg.stage[name], resolve=True)
    c.update(changes)
    return c


def assets(d: Path) -> dict:
    from omegaconf import OmegaConf

    from rlhf_ops.artifacts import write_table
    from rlhf_ops.config import ModelConfig
    from rlhf_ops.tasks.reviews import panel_member
    from rlhf_ops.models import build_tiny_policy, save_model, train_tokenizer
    from rlhf_ops.tasks.reviews.builders import build_grammar_pairs, build_prompt_pool, build_sft_demos
    from rlhf_ops.tasks.reviews.task import prompt_splits, tokenizer_corpus

    splits = prompt_splits(0, 32, 8, 8)
    tok = train_tokenizer(tokenizer_corpus(0, 600), 400)
    save_model(build_tiny_policy(OmegaConf.structured(ModelConfig(hidden_size=32, intermediate_size=64)), tok, 0),
               tok, d / "policy")
    return {"policy": str(d / "policy"),
            "sft": str(write_table(build_sft_demos(splits["train"], 1, 0), d / "sft.parquet")),
            "pairs": str(write_table(build_grammar_pairs(splits["train"], 48, panel_member("careful", 0), 0),
                                     d / "pairs.jsonl")),
            "prompts": str(write_table(build_prompt_pool(splits["train"]), d / "prompts.parquet"))}


def cases(a: dict, d: Path):
    """(what, callable, paths that must be left as they were) for each bad input."""
    import pandas as pd

    from rlhf_ops.artifacts import write_table
    from rlhf_ops.cli import precheck
    from rlhf_ops.labelers.human import read_labels
    from rlhf_ops.launcher import run_stage

    def stage(name, inputs, out, **kw):
        return lambda: run_stage(name, cfg=stage_cfg(name), inputs=inputs, output=d / out, seed=0, progress=False, **kw)

    yield "dataset file missing", stage("sft", {"policy": a["policy"], "data": str(d / "nope.parquet")}, "o_missing"), ["o_missing"]
    (d / "empty.jsonl").write_text("")
    yield "dataset file empty", stage("sft", {"policy": a["policy"], "data": str(d / "empty.jsonl")}, "o_empty"), ["o_empty"]
    pairs = pd.read_json(a["pairs"], lines=True)
    write_table(pairs.drop(columns=["rejected"]), d / "no_rejected.parquet")
    yield ("preference rows without `rejected`",
           stage("dpo", {"policy": a["policy"], "data": str(d / "no_rejected.parquet")}, "o_dpo"), ["o_dpo"])
    blank = pairs.copy()
    blank.loc[5, "chosen"] = "   "
    write_table(blank, d / "blank.jsonl")
    yield ("preference row with empty text",
           stage("reward", {"reward_model": a["policy"], "data": str(d / "blank.jsonl")}, "o_rm"), ["o_rm"])
    nopad = d / "nopad"
    shutil.copytree(a["policy"], nopad)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (nopad / name).exists():
            c = json.loads((nopad / name).read_text())
            c.pop("pad_token", None)
            (nopad / name).write_text(json.dumps(c))
    yield "tokenizer without a pad token", stage("sft", {"policy": str(nopad), "data": a["sft"]}, "o_nopad"), ["o_nopad"]

    from omegaconf import OmegaConf

    from rlhf_ops.config import ModelConfig
    from rlhf_ops.models import build_tiny_reward, save_model, train_tokenizer

    other = train_tokenizer(["completely different words here"] * 50, 300)
    save_model(build_tiny_reward(OmegaConf.structured(ModelConfig(hidden_size=32, intermediate_size=64)), other, 0),
               other, d / "other_rm")
    yield ("PPO reward model with another vocabulary",
           stage("ppo", {"policy": a["policy"], "reward_model": str(d / "other_rm"), "data": a["prompts"]}, "o_ppo"),
           ["o_ppo"])
    rows = pd.read_parquet(a["prompts"])
    rows.loc[3, "prompt"] = "word " * 400
    write_table(rows, d / "long.parquet")
    yield ("prompt longer than the model allows",
           stage("ppo", {"policy": a["policy"], "reward_model": a["policy"], "data": str(d / "long.parquet")}, "o_long"),
           ["o_long"])
    run_stage("sft", cfg=stage_cfg("sft"), inputs={"policy": a["policy"], "data": a["sft"]}, output=d / "o_done",
              seed=0, progress=False)
    yield ("output dir holds a finished stage",
           stage("sft", {"policy": a["policy"], "data": a["sft"]}, "o_done"), ["o_done"])

    bad_labels = [
        ("labels: bad JSON", b'{"pair_id": "p2", "choice": "a"'),
        ("labels: not an object", b'["p2", "a"]'),
        ("labels: missing field", b'{"pair_id": "p2"}'),
        ("labels: wrong type", b'{"pair_id": 2, "choice": "a"}'),
        ("labels: choice not a/b", b'{"pair_id": "p2", "choice": "A"}'),
        ("labels: empty pair id", b'{"pair_id": "  ", "choice": "a"}'),
        ("labels: unknown pair id", b'{"pair_id": "zz", "choice": "a"}'),
        ("labels: duplicate row", b'{"pair_id": "p1", "choice": "b"}'),
        ("labels: not UTF-8", b'{"pair_id": "p2", "choice": "\xe9"}'),
    ]
    for k, (what, line) in enumerate(bad_labels):
        path = d / f"labels_{k}" / "labels.jsonl"
        path.parent.mkdir()
        path.write_bytes(b'{"pair_id": "p1", "choice": "a"}\n' + line + b"\n")
        yield what, (lambda path=path: read_labels(path, {"p1", "p2", "p3"})), [str(path.relative_to(d))]

    for what, override in [
        ("config: misspelled key", "loop.rm_update_evry=2"),
        ("config: wrong type", "loop.kl.beta=abc"),
        ("config: value not among the choices", "loop.labeler=oracle"),
        ("config: RM schedule that can never fire", "loop.rm_freeze=[[0,2]]"),
        ("config: PPO mini-batches that don't divide the batch", "stage.ppo.num_mini_batches=3"),
        ("config: negative tolerance", "loop.rm_accuracy_tolerance=-0.1"),
    ]:
        def check(override=override):
            err = precheck(["+experiment=quickstart", override])
            if err:
                raise SystemExit(err)
        yield what, check, []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    d = args.out or Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    d.mkdir(parents=True, exist_ok=True)
    a = assets(d)
    print("| bad input | error | raised after (s) | files left as they were |")
    print("|---|---|---|---|")
    failures = 0
    for what, call, keep in cases(a, d):
        before = {p: tree_hash(d / p) for p in keep}
        t0 = time.monotonic()
        try:
            call()
            err, failures = "**no error**", failures + 1
        except SystemExit as e:  # the CLI pre-check's one line
            err = f"`{e.code}`"
        except Exception as e:  # noqa: BLE001 (reporting whatever it was is the point)
            err = f"{type(e).__name__}: `{str(e).replace(str(d) + '/', '')}`"
        dt = time.monotonic() - t0
        same = all(tree_hash(d / p) == h for p, h in before.items())
        leftovers = [p.name for p in d.iterdir() if p.name.endswith(".tmp")]
        print(f"| {what} | {err.replace('|', '&#124;')} | {dt:.2f} | {'yes' if same and not leftovers else 'NO'} |",
              flush=True)
    if args.out is None:
        shutil.rmtree(d, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
