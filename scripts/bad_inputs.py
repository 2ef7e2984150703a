"""Feed rlhf_ops each kind of bad input and print the error it gives, as a markdown table.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bad_inputs.py [--out DIR] [--family N ...] [--quick]

A catalogue of what a tired user types or points at, by family: (0) a single stage's inputs,
(1) config values, (2) input files of task=files, (3) model directories (model=local model.path=DIR),
(4) run dirs and output dirs, (5) human-label files. Each case builds tiny assets (a locally trained
tokenizer, a tiny Llama policy, testbed tables, a user's files), breaks one thing, calls the real
entry point (the CLI's config pre-check `precheck`, the task's own read as `prepare` does it,
`run_stage`, `read_labels` / the human queue, or the CLI itself as a subprocess for run dirs) and
records: the error's type and message, the seconds until it was raised, whether it came before the
first model was built (in process: no torch module was constructed during the call; as a
subprocess: no checkpoint was written under the run dir), and whether the files it was given were
left as they were (every path, byte and folder). Nothing is mocked.

Outcomes: `error` (what is wanted), `handled` (the right answer is not an error: a warning, a pause,
an accepted file; the case says what must be seen, and that is checked), `GAP` (a known gap, kept in
the table and listed at the end). The script exits non-zero when a case gives no error (unless it
is `handled` as it should be), changes its files, leaves a `.tmp`, or builds a model before its
error. docs/reliability.md quotes its output; tests/test_bad_inputs_catalogue.py runs it in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

TINY_STAGE = ["stage.sft.max_steps=1", "stage.reward.max_steps=1", "stage.dpo.max_steps=1",
              "stage.ppo.total_episodes=16", "stage.ppo.per_device_train_batch_size=8",
              "stage.ppo.num_ppo_epochs=1", "stage.ppo.response_length=16"]
# tests/conftest.py's TINY (the CI test checks they stay equal): a CLI run of seconds on a CPU.
TINY_TASK = ["task.n_train_prompts=48", "task.n_eval_prompts=16", "task.n_gold_eval_prompts=8",
             "task.sft_demos_per_prompt=2", "task.n_offline_pairs=64", "task.tokenizer_corpus_size=600"]
TINY_RUN = ["model.hidden_size=32", "model.intermediate_size=64", "model.vocab_size=400",
            "stage.sft.max_steps=6", "stage.reward.max_steps=4", "stage.dpo.max_steps=3",
            "stage.ppo.total_episodes=16", "stage.ppo.per_device_train_batch_size=8", "stage.ppo.num_ppo_epochs=1",
            "stage.ppo.response_length=16", "loop.prompts_per_iteration=8", "loop.eval_samples_per_prompt=1",
            *(f"stage.{n}.{k}" for n in ("rloo", "grpo") for k in ("max_steps=2", "per_device_train_batch_size=8",
                                                                  "max_completion_length=16", "num_iterations=1")),
            "stage.rejection_sampling.max_steps=3",
            "progress=false", "tracking=disabled"]
TINY = TINY_TASK + TINY_RUN

FAMILIES = {0: "stage inputs", 1: "config", 2: "task files", 3: "model dir", 4: "run dir", 5: "human labels"}


@dataclass
class Case:
    """One bad input. `call` raises the error (or returns a line saying what it did instead); `keep` are
    paths under the work dir that must be left as they were. `handled`: a regex that the warning, pause or
    returned line must match (and `count`, how many warnings must match it) for the case to pass without
    an error. `gap`: why this is a known gap. `run_dir`: a subprocess case's run dir, where no checkpoint
    may appear."""

    what: str
    call: Callable[[], Optional[str]]
    keep: list[str] = field(default_factory=list)
    family: int = 1
    handled: Optional[str] = None
    count: Optional[int] = None
    gap: Optional[str] = None
    run_dir: Optional[Path] = None
    heavy: bool = False  # a CLI subprocess: seconds each; --quick runs only those marked `quick`
    quick: bool = False
    setup: Optional[Callable[[], None]] = None  # makes the case's files, only when the case runs

    def __iter__(self):  # (what, callable, paths), as the catalogue has always yielded
        return iter((self.what, self.call, self.keep))


class CLIError(RuntimeError):
    """The CLI exited non-zero; the message is its last line on stderr."""


def tree_hash(path: Path) -> str:
    """Every entry's relative path (folders too) and every file's bytes."""
    if not path.exists():
        return "absent"
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        h.update(str(p.relative_to(path) if p != path else p.name).encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def stage_cfg(name: str, **changes) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=TINY_STAGE)
    c = OmegaConf.to_container(cfg.stage[name], resolve=True)
    c.update(changes)
    return c


def jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


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
    (d / "user").mkdir(exist_ok=True)
    topics = ["tea", "rain", "trains", "maps", "bread", "owls", "jazz", "glass", "moss", "kites", "salt", "ink"]
    return {"policy": str(d / "policy"),
            "sft": str(write_table(build_sft_demos(splits["train"], 1, 0), d / "sft.parquet")),
            "pairs": str(write_table(build_grammar_pairs(splits["train"], 48, panel_member("careful", 0), 0),
                                     d / "pairs.jsonl")),
            "prompts": str(write_table(build_prompt_pool(splits["train"]), d / "prompts.parquet")),
            # a user's own files, as README.md "Your own model and data" describes them
            "u_prompts": jsonl(d / "user" / "prompts.jsonl", [{"prompt": f"Write a line about {t}."} for t in topics]),
            "u_sft": jsonl(d / "user" / "sft.jsonl", [{"prompt": f"Write a line about {t}.",
                                                       "completion": f"{t.title()} is quiet today."} for t in topics]),
            "u_pairs": jsonl(d / "user" / "pairs.jsonl", [{"prompt": f"Write a line about {t}.",
                                                           "chosen": f"{t.title()} hums along.",
                                                           "rejected": f"{t} {t} {t}"} for t in topics])}


# -- how each kind of case is called ------------------------------------------------------------

def _precheck(argv: list[str]) -> Callable[[], None]:
    def check():
        from rlhf_ops.cli import precheck

        err = precheck(argv)
        if err:
            raise SystemExit(err)
    check.precheck = True
    return check


def _task_read(argv: list[str]) -> Callable[[], str]:
    """The pre-check, then what `prepare` does first with task=files: build the task and read its files."""
    def read():
        from hydra.core.global_hydra import GlobalHydra

        from rlhf_ops.cli import compose, one_line
        from rlhf_ops.tasks import make_task
        from rlhf_ops.validate import validate_config

        try:  # what `precheck` does (composed once here, to keep the config)
            cfg = compose(argv)
            validate_config(cfg)
        except Exception as e:  # noqa: BLE001 - as precheck: one line
            raise SystemExit(one_line(e)) from e
        finally:
            GlobalHydra.instance().clear()
        td = make_task(cfg.task).load(cfg.seed)
        return f"read {len(td.train_prompts)} training and {len(td.eval_prompts)} evaluation prompts"
    return read


def _cli(argv: list[str], timeout: int = 300) -> Callable[[], str]:
    def run():
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
        p = subprocess.run([sys.executable, "-m", "rlhf_ops", *argv], cwd=REPO, capture_output=True, text=True,
                           timeout=timeout, env=env)
        lines = [ln.strip() for ln in p.stderr.splitlines() if ln.strip()]
        if p.returncode:  # the CLI's own message: from its last "rlhf_ops:" line on (some span lines)
            start = max([i for i, ln in enumerate(lines) if ln.startswith("rlhf_ops:")] or [len(lines) - 1])
            raise CLIError(" ".join(lines[start:]) if lines else f"exit {p.returncode}, nothing on stderr")
        return (p.stdout.strip().splitlines() or ["exit 0"])[-1]
    return run


# -- the catalogue ------------------------------------------------------------------------------

def cases(a: dict, d: Path):
    """Case(what, callable, paths that must be left as they were, ...) for each bad input, by family."""
    yield from stage_cases(a, d)
    yield from config_cases(a, d)
    yield from file_cases(a, d)
    yield from model_cases(a, d)
    yield from run_dir_cases(a, d)
    yield from label_cases(a, d)


def stage_cases(a: dict, d: Path):
    import pandas as pd

    from rlhf_ops.artifacts import write_table
    from rlhf_ops.launcher import run_stage

    def stage(name, inputs, out, **kw):
        return lambda: run_stage(name, cfg=stage_cfg(name), inputs=inputs, output=d / out, seed=0, progress=False, **kw)

    def case(what, call, keep):
        return Case(what, call, keep, family=0)

    yield case("dataset file missing", stage("sft", {"policy": a["policy"], "data": str(d / "nope.parquet")}, "o_missing"), ["o_missing"])
    (d / "empty.jsonl").write_text("")
    yield case("dataset file empty", stage("sft", {"policy": a["policy"], "data": str(d / "empty.jsonl")}, "o_empty"), ["o_empty"])
    pairs = pd.read_json(a["pairs"], lines=True)
    write_table(pairs.drop(columns=["rejected"]), d / "no_rejected.parquet")
    yield case("preference rows without `rejected`",
               stage("dpo", {"policy": a["policy"], "data": str(d / "no_rejected.parquet")}, "o_dpo"), ["o_dpo"])
    blank = pairs.copy()
    blank.loc[5, "chosen"] = "   "
    write_table(blank, d / "blank.jsonl")
    yield case("preference row with empty text",
               stage("reward", {"reward_model": a["policy"], "data": str(d / "blank.jsonl")}, "o_rm"), ["o_rm"])
    nopad = d / "nopad"
    shutil.copytree(a["policy"], nopad)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (nopad / name).exists():
            c = json.loads((nopad / name).read_text())
            c.pop("pad_token", None)
            (nopad / name).write_text(json.dumps(c))
    yield case("tokenizer without a pad token", stage("sft", {"policy": str(nopad), "data": a["sft"]}, "o_nopad"), ["o_nopad"])

    from omegaconf import OmegaConf

    from rlhf_ops.config import ModelConfig
    from rlhf_ops.models import build_tiny_reward, save_model, train_tokenizer

    other = train_tokenizer(["completely different words here"] * 50, 300)
    save_model(build_tiny_reward(OmegaConf.structured(ModelConfig(hidden_size=32, intermediate_size=64)), other, 0),
               other, d / "other_rm")
    yield case("PPO reward model with another vocabulary",
               stage("ppo", {"policy": a["policy"], "reward_model": str(d / "other_rm"), "data": a["prompts"]}, "o_ppo"),
               ["o_ppo"])
    rows = pd.read_parquet(a["prompts"])
    rows.loc[3, "prompt"] = "word " * 400
    write_table(rows, d / "long.parquet")
    yield case("prompt longer than the model allows",
               stage("ppo", {"policy": a["policy"], "reward_model": a["policy"], "data": str(d / "long.parquet")}, "o_long"),
               ["o_long"])
    run_stage("sft", cfg=stage_cfg("sft"), inputs={"policy": a["policy"], "data": a["sft"]}, output=d / "o_done",
              seed=0, progress=False)
    yield case("output dir holds a finished stage",
               stage("sft", {"policy": a["policy"], "data": a["sft"]}, "o_done"), ["o_done"])


def config_cases(a: dict, d: Path):
    """What a tired user types, through the CLI's pre-check (composition + rlhf_ops.validate)."""
    def case(what, *overrides, base=("+experiment=quickstart",), **kw):
        return Case(f"config: {what}", _precheck([*base, *overrides]), family=1, **kw)

    files = ("+experiment=quickstart", "task=files", f"task.prompts={a['u_prompts']}", "loop.labeler=human")
    yield case("misspelled key", "loop.rm_update_evry=2")
    yield case("wrong type", "loop.kl.beta=abc")
    yield case("value not among the choices", "loop.labeler=oracle")
    yield case("TRL field without the +", "stage.sft.trl.max_grad_norm=0.5")
    yield case("misspelled TRL field", "+stage.sft.trl.max_gradnorm=0.5")
    # seeds, iterations, sizes
    yield case("negative seed", "seed=-1")
    yield case("seed beyond numpy's range", "seed=4294967296")
    yield case("negative iterations", "loop.iterations=-1")
    yield case("zero iterations with per-iteration steps", "loop.iterations=0")
    yield case("zero prompts per iteration", "loop.prompts_per_iteration=0")
    yield case("one completion per prompt (no pairs)", "loop.completions_per_prompt=1")
    yield case("zero eval samples per prompt", "loop.eval_samples_per_prompt=0")
    yield case("loop.min_pairs negative", "loop.min_pairs=-1")
    yield case("loop.min_pairs above prompts per iteration", "loop.min_pairs=100")
    # learning and batches
    yield case("NaN learning rate", "stage.sft.learning_rate=nan")
    yield case("negative learning rate", "stage.ppo.learning_rate=-3e-5")
    yield case("zero epochs and no max_steps", "stage.reward.num_train_epochs=0")
    yield case("zero batch size", "stage.sft.per_device_train_batch_size=0")
    yield case("zero gradient accumulation", "stage.dpo.gradient_accumulation_steps=0")
    yield case("max_length of 1", "stage.sft.max_length=1")
    yield case("negative warmup steps", "stage.sft.warmup_steps=-5")
    yield case("NaN weight decay", "stage.sft.weight_decay=nan")
    yield case("logging every 0 steps", "stage.dpo.logging_steps=0")
    yield case("PPO mini-batches that don't divide the batch", "stage.ppo.num_mini_batches=3")
    yield case("PPO episodes fewer than one batch", "stage.ppo.total_episodes=8")
    yield case("PPO whitening on mini-batches under 8 (TRL asserts)", "stage.ppo.whiten_rewards=true",
               "stage.ppo.per_device_train_batch_size=8", "stage.ppo.num_mini_batches=2", "stage.ppo.total_episodes=16")
    yield case("zero PPO epochs", "stage.ppo.num_ppo_epochs=0")
    yield case("NaN PPO cliprange", "stage.ppo.cliprange=nan")
    yield case("negative value-function coefficient", "stage.ppo.vf_coef=-1")
    yield case("zero rollout forward batch", "stage.ppo.local_rollout_forward_batch_size=0")
    yield case("NaN missing-EOS penalty", "stage.ppo.missing_eos_penalty=nan")
    yield case("zero response length", "stage.ppo.response_length=0")
    yield case("unknown KL estimator", "stage.ppo.kl_estimator=k2")
    yield case("NaN reward centring", "stage.reward.center_rewards_coefficient=nan")
    yield case("reward eval fraction of 1", "stage.reward.eval_fraction=1")
    yield case("DPO beta 0", "stage.dpo.beta=0")
    yield case("misspelled DPO loss (TRL fails in its first step)", "stage.dpo.loss_type=sigmod")
    # temperatures
    yield case("PPO temperature 0 (greedy)", "stage.ppo.temperature=0")
    yield case("eval temperature 0", "loop.eval_temperature=0")
    # the KL controller
    yield case("NaN beta", "loop.kl.beta=nan")
    yield case("negative beta", "loop.kl.beta=-0.1")
    yield case("beta above max_beta", "loop.kl.beta=20")
    yield case("adaptive horizon 0", "loop.kl.controller=adaptive", "loop.kl.horizon=0")
    yield case("adaptive target 0", "loop.kl.controller=adaptive", "loop.kl.target=0")
    yield case("adaptive min_beta above beta", "loop.kl.controller=adaptive", "loop.kl.min_beta=0.1")
    yield case("negative KL schedule end", "loop.kl.schedule=linear", "loop.kl.end_mult=-1")
    yield case("remedy beta floor above max_beta", "loop.kl.remedy_min_beta=20")
    yield case("negative learning-rate schedule end", "loop.lr_schedule=linear", "loop.lr_end_mult=-1")
    # the reward model: schedule, windows, ensembles
    yield case("RM update every 0 iterations", "loop.rm_update_every=0")
    yield case("negative RM KL threshold", "loop.rm_update_kl_threshold=-1")
    yield case("reversed RM freeze window", "loop.rm_freeze=[[2,1]]")
    yield case("RM schedule that can never fire", "loop.rm_freeze=[[0,2]]")
    yield case("replay ratio 1", "loop.rm_replay_ratio=1")
    yield case("held-out fraction 0", "loop.rm_heldout_fraction=0")
    yield case("negative tolerance", "loop.rm_accuracy_tolerance=-0.1")
    yield case("NaN z", "loop.rm_accuracy_z=nan")
    yield case("ensemble of 0", "stage.reward.ensemble_size=0")
    yield case("negative ensemble lambda", "loop.ensemble_lambda=-1")
    yield case("uncertainty reduction with one reward model", "loop.ensemble_reduce=uncertainty",
               handled=r"ensemble_reduce=uncertainty .*ensemble_size=1", count=1)
    # detectors, votes and the gate
    yield case("unknown detector", "loop.detectors=[{name:kl_budgett,max_kl:5}]")
    yield case("misspelled detector field", "loop.detectors=[{name:kl_budget,maxkl:5}]")
    yield case("negative KL budget", "loop.detectors=[{name:kl_budget,max_kl:-1}]")
    yield case("NaN KL budget", "loop.detectors=[{name:kl_budget,max_kl:nan}]")
    yield case("entropy ratio above 1", "loop.detectors=[{name:entropy_collapse,min_ratio:1.5}]")
    yield case("unknown remedy", "loop.detectors=[{name:kl_budget,max_kl:5,remedy:raise_bta}]")
    yield case("detector listed twice", "loop.detectors=[{name:kl_budget,max_kl:5},{name:kl_budget,max_kl:9}]")
    yield case("vote larger than the detectors", "loop.gate_vote=10")
    yield case("judge labeler without a judge", "loop.labeler=judge")
    yield case("judge url without http://", "loop.labeler=judge", "loop.judge.url=localhost:8000")
    yield case("judge given twice", "loop.labeler=judge", "loop.judge.model=/tmp", "loop.judge.url=http://127.0.0.1:9")
    yield case("judge model that is not a directory", "loop.gate.oracle=judge", "loop.judge.model=/etc/hostname")
    yield case("gate alpha as a percentage", "loop.gate.alpha=5")
    yield case("gate budget below its minimum", "loop.gate.max_comparisons=8", "loop.gate.min_comparisons=16")
    yield case("gate oracle misspelt", "loop.gate.oracle=jugde")
    yield case("vote 'all'", "loop.gate_vote=all")
    yield case("win rate as a percentage", "loop.min_win_rate=40")
    yield case("max_rollbacks 0", "loop.max_rollbacks=0")
    yield case("beta remedy that lowers beta", "loop.beta_remedy_factor=0.5")
    yield case("lr remedy that raises the lr", "loop.lr_remedy_factor=2")
    yield case("negative keep_last (silently kept everything)", "loop.keep_last=-1")
    # the tiny model's shape and the context
    yield case("hidden size not a multiple of the heads", "model.hidden_size=30")
    yield case("odd head size (RoPE)", "model.hidden_size=36")
    yield case("kv heads that don't divide the heads", "model.num_kv_heads=3")
    yield case("zero layers", "model.num_layers=0")
    yield case("vocabulary smaller than the byte alphabet", "model.vocab_size=100")
    yield case("response_length >= max_position_embeddings", "model.max_position_embeddings=48")
    yield case("model=local without model.path (built the tiny model)", "model=local")
    # recipe, labeler, task keys, launcher, io
    yield case("unknown step", "loop.steps=[collect,labl,rm_update,policy_update,evaluate,gate,prune]")
    yield case("human_labels_on_error value", "loop.human_labels_on_error=ignore")
    yield case("human_labels_partial value", "loop.human_labels_partial=skip")
    yield case("annotator the task lacks", "loop.annotator=nobody")
    yield case("testbed SFT demos 0", "task.sft_demos_per_prompt=0")
    yield case("testbed warm-up pairs 0", "task.n_offline_pairs=0")
    yield case("launcher.num_processes 0", "launcher.num_processes=0")
    yield case("negative launcher timeout", "launcher.timeout_s=-1")
    yield case("missing DeepSpeed config", "launcher.deepspeed=deepspeed/zero4.json")
    yield case("job=sft without io.output", "job=sft")
    yield case("io.data given to a loop", f"io.data={a['sft']}")
    yield case("task=files without task.prompts", base=("+experiment=quickstart", "task=files", "loop.labeler=human"))
    yield case("task=files with the testbed's annotator", "loop.labeler=annotator", base=files[:3])
    yield case("task=files, labeler=reward_model, no task.pairs", "loop.labeler=reward_model", base=files[:3])
    yield case("task.eval_fraction above 1", "task.eval_fraction=1.5", base=files)
    yield case("task.heldout_pair_fraction 1", "task.heldout_pair_fraction=1", base=files)


def file_cases(a: dict, d: Path):
    """task=files inputs: the pre-check, then the task's own read (what `prepare` does before any model)."""
    u = d / "user"
    base = ["+experiment=quickstart", "task=files", "loop.labeler=human"]
    n = [0]

    def case(what, content, key="prompts", suffix=".jsonl", extra=(), **kw):
        """`content`: bytes, a list of JSON rows, a DataFrame (parquet), a Path, or a callable making the path."""
        n[0] += 1
        path = u / f"bad{n[0]:02d}_{key}{suffix}"
        if callable(content):
            path = content(path)
        elif isinstance(content, Path):
            path = content
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, list):
            jsonl(path, content)
        else:
            content.to_parquet(path, index=False)
        given = {"prompts": a["u_prompts"], key: str(path)}
        argv = [*base, *(f"task.{k}={v}" for k, v in given.items()), *extra]
        keep = [str(Path(p).relative_to(d)) for p in given.values() if Path(p).is_relative_to(d) and Path(p).exists()]
        return Case(f"task.{key}: {what}", _task_read(argv), keep, family=2, **kw)

    import pandas as pd

    good = [json.loads(line) for line in Path(a["u_prompts"]).read_text().splitlines()]
    yield case("missing file", u / "nope.jsonl")
    yield case("missing file", u / "nope_sft.jsonl", key="sft")
    yield case("missing file", u / "nope_eval.jsonl", key="eval_prompts")
    yield case("empty file", b"")
    yield case("only blank lines", b"\n\n  \n")
    yield case("a JSON array instead of JSON lines", json.dumps(good).encode())
    yield case("a pretty-printed JSON array (.json)", json.dumps(good, indent=2).encode(), suffix=".json")
    yield case("one pretty-printed object per record", "".join(json.dumps(r, indent=2) + "\n" for r in good).encode())
    yield case("a UTF-8 BOM (accepted, as in a labels file)", b"\xef\xbb\xbf" + Path(a["u_prompts"]).read_bytes(),
               handled=r"read \d+ training and \d+ evaluation prompts")
    yield case("Latin-1 text, not UTF-8", b'{"prompt": "caf\xe9 au lait"}\n' * 4)
    yield case("a truncated last line", Path(a["u_prompts"]).read_bytes()[:-9])
    yield case("column 'question' instead of 'prompt'", [{"question": r["prompt"]} for r in good])
    yield case("an empty prompt", good[:3] + [{"prompt": ""}] + good[3:])
    yield case("a null prompt", good[:3] + [{"prompt": None}] + good[3:])
    yield case("a number as prompt", good[:3] + [{"prompt": 42}] + good[3:])
    yield case("a message with role 'bot'", good + [{"prompt": [{"role": "bot", "content": "hi"}]}])
    yield case("a conversation ending with the assistant", good + [{"prompt": [{"role": "user", "content": "hi"},
                                                                               {"role": "assistant", "content": "yo"}]}])
    yield case("a directory, not a datasets folder", lambda p: (p.with_suffix("").mkdir() or p.with_suffix("")))
    yield case("CSV", b"prompt\nWrite a line about tea.\nWrite a line about rain.\n", suffix=".csv")
    yield case("plain text, one prompt per line", b"Write a line about tea.\nWrite a line about rain.\n", suffix=".txt")
    yield case("gzipped JSON lines", b"\x1f\x8b\x08\x00", suffix=".jsonl.gz")
    yield case("a truncated parquet file", lambda p: (p.write_bytes(Path(a["prompts"]).read_bytes()[:300]) and p),
               suffix=".parquet")
    yield case("one prompt and no task.eval_prompts", good[:1])
    yield case("a prompt_id shared by two prompts", [{**r, "prompt_id": "p1" if i < 2 else f"p{i}"}
                                                     for i, r in enumerate(good)])
    yield case("duplicate prompts (a warning, once)", good + good[:3] + good[:2],
               handled=r"5 duplicate prompt\(s\) \(first: row 12 repeats row 0\)", count=1)

    def dataset_dict(p):
        from datasets import Dataset, DatasetDict

        DatasetDict({"test": Dataset.from_list(good)}).save_to_disk(str(p.with_suffix("")))
        return p.with_suffix("")
    yield case("a DatasetDict without a 'train' split", dataset_dict)
    sft = [json.loads(line) for line in Path(a["u_sft"]).read_text().splitlines()]
    yield case("'response' instead of 'completion'", [{"prompt": r["prompt"], "response": r["completion"]} for r in sft],
               key="sft")
    yield case("a whitespace completion", sft[:2] + [{**sft[2], "completion": "   "}], key="sft")
    yield case("messages ending with the user", [{"messages": [{"role": "user", "content": "hi"},
                                                               {"role": "assistant", "content": "yo"},
                                                               {"role": "user", "content": "and?"}]}], key="sft")
    yield case("a completion given as an object", sft[:2] + [{**sft[2], "completion": {"text": "x"}}], key="sft")
    yield case("the pairs file given as task.sft", Path(a["u_pairs"]), key="sft")
    pairs = [json.loads(line) for line in Path(a["u_pairs"]).read_text().splitlines()]
    yield case("pairs without 'rejected'", [{k: v for k, v in r.items() if k != "rejected"} for r in pairs],
               key="pairs")
    yield case("chosen == rejected", pairs[:4] + [{**pairs[4], "rejected": pairs[4]["chosen"]}], key="pairs")
    yield case("an empty rejected", pairs[:4] + [{**pairs[4], "rejected": ""}], key="pairs")
    yield case("chosen as a list of strings", pairs[:4] + [{**pairs[4], "chosen": ["a", "b"]}], key="pairs")
    yield case("a row missing 'chosen' (null in the table)", pairs[:4] + [{"prompt": "x", "rejected": "y"}],
               key="pairs")
    yield case("implicit prompts that differ", [{"chosen": [{"role": "user", "content": "a"},
                                                            {"role": "assistant", "content": "x"}],
                                                 "rejected": [{"role": "user", "content": "b"},
                                                              {"role": "assistant", "content": "y"}]}], key="pairs")
    yield case("an empty eval prompt", good[:2] + [{"prompt": " "}], key="eval_prompts")
    yield case("a parquet with list-typed prompts", pd.DataFrame({"prompt": [["a", "b"], ["c"]]}), suffix=".parquet")
    # end to end: the CLI, a fresh run dir, nothing built
    for what, rows in (("a JSON array (the CLI)", json.dumps(good).encode()),
                       ("an empty prompt (the CLI)", good[:3] + [{"prompt": ""}] + good[3:])):
        n[0] += 1
        path = u / f"bad{n[0]:02d}_prompts.jsonl"
        path.write_bytes(rows) if isinstance(rows, bytes) else jsonl(path, rows)
        rd = d / f"run_files_{n[0]}"
        yield Case(f"task.prompts: {what}", _cli(["+experiment=quickstart", "task=files", f"task.prompts={path}",
                                                  "loop.labeler=human", *TINY_RUN, f"run_dir={rd}"]),
                   [str(path.relative_to(d))], family=2, run_dir=rd, heavy=True)


def model_cases(a: dict, d: Path):
    """model=local model.path=DIR: a copy of the tiny policy, broken one way each; checked at start-up."""
    m = d / "models"
    m.mkdir(exist_ok=True)

    def copy(name: str, change=None) -> Path:
        p = m / name
        shutil.copytree(a["policy"], p)
        if change:
            change(p)
        return p

    def conf(**changes):
        def change(p):
            c = json.loads((p / "config.json").read_text())
            c.update(changes)
            for k, v in changes.items():
                if v is None:
                    c.pop(k)
            (p / "config.json").write_text(json.dumps(c))
        return change

    def case(what, path: Path, *extra, **kw):
        keep = [str(path.relative_to(d))] if path.exists() else []
        return Case(f"model dir: {what}", _precheck(["+experiment=quickstart", "model=local", f"model.path={path}",
                                                     *extra]), keep, family=3, **kw)

    weights = Path(a["policy"]) / "model.safetensors"
    yield case("no such directory", m / "nope")
    yield case("a hub id, not a directory", Path("HuggingFaceTB/SmolLM2-135M"))
    yield case("the .safetensors file, not its directory", copy("file") / "model.safetensors")
    gguf = m / "model-q4.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    yield case("a .gguf file", gguf)
    yield case("no config.json", copy("noconf", lambda p: (p / "config.json").unlink()))
    yield case("config.json not valid JSON", copy("badconf", lambda p: (p / "config.json").write_text('{"model_type": ')))
    yield case("config.json a JSON list", copy("listconf", lambda p: (p / "config.json").write_text("[]")))
    yield case("pytorch_model.bin, no safetensors", copy("bin", lambda p: (p / "model.safetensors").rename(p / "pytorch_model.bin")))
    yield case("truncated safetensors", copy("trunc", lambda p: (p / "model.safetensors").write_bytes(weights.read_bytes()[:-1000])))
    yield case("a Git LFS pointer instead of weights", copy("lfs", lambda p: (p / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 269060552\n")))
    yield case("config of another width (hidden_size)", copy("width", conf(hidden_size=64)))
    yield case("config of another depth (num_hidden_layers)", copy("depth", conf(num_hidden_layers=4)))
    yield case("config of another vocabulary (vocab_size)", copy("vocab", conf(vocab_size=999)))
    yield case("no tokenizer", copy("notok", lambda p: [(p / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")
                                                         if (p / f).exists()]))
    yield case("tokenizer_config.json not valid JSON", copy("badtokc", lambda p: (p / "tokenizer_config.json").write_text(
        '{"pad_token": "<pad>",')))
    yield case("tokenizer.json cut short", copy("badtok", lambda p: (p / "tokenizer.json").write_text(
        (p / "tokenizer.json").read_text()[:500])))

    def sharded(p):
        (p / "model.safetensors").rename(p / "model-00001-of-00002.safetensors")
        (p / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.layers.1.mlp.up_proj.weight": "model-00002-of-00002.safetensors"}}))
    yield case("a weights index naming a missing shard", copy("shard", sharded))

    ens = m / "ens"
    shutil.copytree(a["policy"], ens / "member_0")
    (ens / "ensemble.json").write_text(json.dumps({"members": ["member_0", "member_1"]}))
    yield case("ensemble.json naming a missing member", ens)
    yield case("context shorter than the responses", copy("ctx", conf(max_position_embeddings=16)),
               "stage.ppo.response_length=48")
    yield case("reward_init=scratch with a real model (ignored)", copy("scratch"), "model.reward_init=scratch")
    # end to end: what the pre-check cannot see (transformers' AutoConfig needs model_type), through the CLI
    nomt = copy("nomodeltype", conf(model_type=None))
    rd = d / "run_nomodeltype"
    yield Case("model dir: config.json without model_type (the CLI)",
               _cli(["+experiment=quickstart", *TINY_TASK, *TINY_RUN, "model=local", f"model.path={nomt}",
                     f"run_dir={rd}"]), [str(nomt.relative_to(d))], family=3, run_dir=rd, heavy=True, quick=True)


def run_dir_cases(a: dict, d: Path):
    from rlhf_ops.ledger import Ledger

    def cli_case(what, rd: Path, *extra, **kw):
        return Case(f"run dir: {what}", _cli(["+experiment=quickstart", *TINY, f"run_dir={rd}", *extra]),
                    [str(rd.relative_to(d))], family=4, run_dir=rd, heavy=True, **kw)

    mine = d / "run_mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    (mine / "config.yaml").write_text("mine: 1\n")
    yield cli_case("a user's files, no ledger", mine, quick=True)
    lost = d / "run_lost"
    (lost / "setup" / "prepare").mkdir(parents=True)
    (lost / "setup" / "prepare" / "prompts_train.parquet").write_bytes(Path(a["prompts"]).read_bytes())
    (lost / "summary.json").write_text('{"status": "running"}')
    yield cli_case("a run's results, ledger missing", lost)
    bad = d / "run_corrupt"
    bad.mkdir()
    (bad / "ledger.sqlite").write_bytes(os.urandom(8192))
    (bad / "summary.json").write_text('{"status": "running"}')
    yield cli_case("ledger.sqlite of random bytes", bad, quick=True)
    empty = d / "run_empty_ledger"
    Ledger(empty).close()
    (empty / "setup" / "prepare").mkdir(parents=True)
    (empty / "setup" / "prepare" / "prompts_train.parquet").write_bytes(Path(a["prompts"]).read_bytes())
    yield cli_case("results, but a ledger with no rows", empty)
    afile = d / "run_is_a_file"
    afile.write_text("not a folder\n")
    yield cli_case("run_dir is a file", afile)

    # A real run dir (prepare only, seconds), made once when a case below first needs it; then broken.
    done = d / "run_done"
    recipe = ["loop.setup=[prepare]", "loop.steps=[]", "loop.iterations=0"]

    def finished_run(into: Optional[Path] = None, change=None):
        def make():
            if not done.exists():
                try:
                    _cli(["+experiment=quickstart", *TINY, *recipe, f"run_dir={done}"])()
                except CLIError as e:
                    raise RuntimeError(f"could not make a run dir to break: {e}") from e
            if into is not None:
                shutil.copytree(done, into)
                change(into)
        return make

    yield cli_case("resumed with another seed", done, *recipe, "seed=1", setup=finished_run())
    locked = d / "run_locked"
    yield cli_case("in use by a live run (.lock)", locked, *recipe, setup=finished_run(locked, lambda p: (
        p / ".lock").write_text(json.dumps({"pid": os.getpid(), "hostname": socket.gethostname(),
                                            "started_at": "2026-01-01T00:00:00+00:00", "token": "x"}))))

    def cut(p):
        raw = (p / "ledger.sqlite").read_bytes()
        (p / "ledger.sqlite").write_bytes(raw[: len(raw) // 2])
    yield cli_case("ledger.sqlite cut in half (header intact)", d / "run_cut_ledger", *recipe,
                   setup=finished_run(d / "run_cut_ledger", cut))

    def scribble(p):
        raw = bytearray((p / "ledger.sqlite").read_bytes())
        raw[4096:8192] = os.urandom(4096)  # page 2 on: the tables' pages, header and length intact
        (p / "ledger.sqlite").write_bytes(bytes(raw))
    yield cli_case("ledger.sqlite with a scribbled page (header and length intact)", d / "run_scribbled_ledger",
                   *recipe, setup=finished_run(d / "run_scribbled_ledger", scribble))

    # io.output of a one-stage job (run_stage, as job=sft calls it)
    from rlhf_ops.launcher import run_stage

    user_out = d / "o_user"
    user_out.mkdir()
    (user_out / "results.csv").write_text("a,b\n1,2\n")
    yield Case("io.output: a folder of the user's", lambda: run_stage(
        "sft", cfg=stage_cfg("sft"), inputs={"policy": a["policy"], "data": a["sft"]}, output=user_out, seed=0,
        progress=False), ["o_user"], family=4)
    file_out = d / "o_file"
    file_out.write_text("not a folder\n")
    yield Case("io.output: an existing file", lambda: run_stage(
        "sft", cfg=stage_cfg("sft"), inputs={"policy": a["policy"], "data": a["sft"]}, output=file_out, seed=0,
        progress=False), ["o_file"], family=4)


def label_cases(a: dict, d: Path):
    from rlhf_ops.labelers.human import HumanQueueLabeler, read_labels

    bad_labels = [
        ("bad JSON", b'{"pair_id": "p2", "choice": "a"'),
        ("not an object", b'["p2", "a"]'),
        ("missing field", b'{"pair_id": "p2"}'),
        ("unknown field", b'{"pair_id": "p2", "choice": "a", "note": "close call"}'),
        ("wrong type", b'{"pair_id": 2, "choice": "a"}'),
        ("null choice", b'{"pair_id": "p2", "choice": null}'),
        ("choice not a/b", b'{"pair_id": "p2", "choice": "A"}'),
        ("choice 'tie'", b'{"pair_id": "p2", "choice": "tie"}'),
        ("choice with a space", b'{"pair_id": "p2", "choice": "a "}'),
        ("empty pair id", b'{"pair_id": "  ", "choice": "a"}'),
        ("unknown pair id", b'{"pair_id": "zz", "choice": "a"}'),
        ("duplicate row", b'{"pair_id": "p1", "choice": "b"}'),
        ("not UTF-8", b'{"pair_id": "p2", "choice": "\xe9"}'),
        ("CSV, not JSON lines", b"p2,a"),
    ]
    first = b'{"pair_id": "p1", "choice": "a"}\n'

    def labels_file(k, content: bytes) -> Path:
        path = d / f"labels_{k}" / "labels.jsonl"
        path.parent.mkdir()
        path.write_bytes(content)
        return path

    def case(what, call, path, **kw):
        return Case(f"labels: {what}", call, [str(path.parent.relative_to(d))], family=5, **kw)

    for k, (what, line) in enumerate(bad_labels):
        path = labels_file(k, first + line + b"\n")
        yield case(what, (lambda path=path: read_labels(path, {"p1", "p2", "p3"})), path)

    def accepted(path, on_error="error"):
        def call():
            choices, problems = read_labels(path, {"p1", "p2", "p3"}, on_error)
            return f"read {len(choices)} label(s): {sorted(choices.items())}; {len(problems)} skipped"
        return call
    k = len(bad_labels)
    path = labels_file(k, b"\xef\xbb\xbf" + first + b'{"pair_id": "p2", "choice": "b"}\n')
    yield case("a UTF-8 BOM (accepted)", accepted(path), path, handled=r"read 2 label\(s\)")
    path = labels_file(k + 1, first.replace(b"\n", b"\r\n") + b'{"pair_id": "p2", "choice": "b"}\r\n\r\n   \n')
    yield case("CRLF line ends and blank lines (accepted)", accepted(path), path, handled=r"read 2 label\(s\)")
    path = labels_file(k + 2, first + b'{"pair_id": "p2", "choice": "maybe"}\n{"pair_id": "p3"}\n')
    yield case("bad rows with human_labels_on_error=skip (a warning)", accepted(path, "skip"), path,
               handled=r"skipped 2 malformed label row\(s\)", count=1)

    # The queue itself: the exported pairs beside the labels, as the loop's `label` step finds them.
    def queue(k, labels: Optional[bytes], name="labels.jsonl", same_pair=False) -> Path:
        q = d / f"queue_{k}"
        q.mkdir()
        rows = [{"pair_id": f"p{i}", "prompt": f"prompt {i}", "prompt_id": f"row{i}", "a": f"one {i}",
                 "b": f"one {i}" if same_pair and i == 2 else f"two {i}"} for i in (1, 2, 3)]
        jsonl(q / "to_label.jsonl", rows)
        if labels is not None:
            (q / name).write_bytes(labels)
        return q / name

    def label(path, **kw):
        return lambda: HumanQueueLabeler(**kw).label([], [], iteration=0, checkpoint="ckpt", work_dir=path.parent)
    all3 = first + b'{"pair_id": "p2", "choice": "b"}\n{"pair_id": "p3", "choice": "a"}\n'
    path = queue(1, b"")
    yield case("an empty labels file", label(path), path)
    path = queue(2, b"\n\n")
    yield case("a labels file of blank lines", label(path), path)
    path = queue(3, first)
    yield case("1 of 3 pairs labelled (pauses, saying how many are left)", label(path), path,
               handled=r"labels 1 of 3 pairs; 2 are still unlabelled")
    path = queue(4, first)
    yield case("1 of 3 labelled, partial=fallback, no reward model yet", label(path, partial="fallback"), path)
    path = queue(5, all3, name="labels.json")
    yield case("labels written as labels.json (pauses, naming labels.jsonl)", label(path), path,
               handled=r"waiting for human labels: 3 pairs .* Write .*labels\.jsonl")
    path = queue(6, all3, same_pair=True)
    yield case("an exported pair edited to the same text", label(path), path)
    path = queue(7, json.dumps([{"pair_id": "p1", "choice": "a"}]).encode())
    yield case("a JSON array of labels", label(path), path)


# -- running the catalogue ----------------------------------------------------------------------

class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(record.getMessage())


def run_case(c: Case, d: Path) -> dict:
    """Call one case and judge it: outcome, message, seconds, before-the-first-model, files kept."""
    import torch

    built = []
    hook = torch.nn.modules.module.register_module_module_registration_hook(lambda *args: built.append(1))
    warnings = _Warnings()
    logger = logging.getLogger("rlhf_ops")
    logger.addHandler(warnings)
    level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    if c.setup is not None:
        c.setup()
    before = {p: tree_hash(d / p) for p in c.keep}
    ckpts_before = set(c.run_dir.rglob("*.safetensors")) if c.run_dir is not None and c.run_dir.is_dir() else set()
    err, returned, exc = None, None, None
    t0 = time.monotonic()
    try:
        returned = c.call()
    except SystemExit as e:  # the CLI pre-check's one line
        exc, err = e, f"`{e.code}`"
    except Exception as e:  # noqa: BLE001 (reporting whatever it was is the point)
        exc, err = e, f"{type(e).__name__}: `{str(e)}`"
    dt = time.monotonic() - t0
    hook.remove()
    logger.removeHandler(warnings)
    logger.setLevel(level)
    same = all(tree_hash(d / p) == h for p, h in before.items())
    leftovers = [p.name for p in d.iterdir() if p.name.endswith(".tmp")]
    if c.run_dir is not None:  # a subprocess: a checkpoint on disk is a model that was built
        ckpts = sorted(set(c.run_dir.rglob("*.safetensors")) - ckpts_before) if c.run_dir.is_dir() else []
        before_model = "yes (no checkpoint written)" if not ckpts else f"NO ({ckpts[0].relative_to(d)})"
        model_ok = not ckpts
    elif getattr(c.call, "precheck", False):
        before_model, model_ok = "yes (pre-check)", not built
    else:
        before_model = "yes" if not built else f"NO ({len(built)} modules built)"
        model_ok = not built
    text = "\n".join(filter(None, [str(exc) if exc is not None else None, returned, *warnings.records]))
    if c.handled is not None:
        matches = [w for w in warnings.records if re.search(c.handled, w)]
        ok = (len(matches) == c.count) if c.count is not None else bool(re.search(c.handled, text, re.S))
        outcome = "handled" if ok else "**FAIL** (not handled as expected)"
        shown = (matches[0] if matches else err or returned or "nothing")
        if c.count is not None:
            shown = f"warning x{len(matches)}: `{shown}`"
        elif exc is None:
            shown = f"`{returned}`"
        else:
            shown = err
    elif c.gap is not None:
        ok, outcome = True, "GAP"
        shown = err or f"no error: `{returned}`"
    else:
        ok = exc is not None
        outcome = "error" if ok else "**no error**"
        shown = err or f"`{returned}`"
    ok = ok and same and not leftovers and model_ok
    if not (same and not leftovers and model_ok) and outcome in ("error", "handled"):
        outcome = "**FAIL**"
    return {"what": c.what, "family": c.family, "outcome": outcome, "message": shown.replace(str(d) + "/", ""),
            "seconds": dt, "before_model": before_model, "kept": "yes" if same and not leftovers else "NO",
            "ok": ok or c.gap is not None, "gap": c.gap}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--family", type=int, action="append", choices=sorted(FAMILIES),
                    help="only these families (repeatable; default: all)")
    ap.add_argument("--quick", action="store_true", help="of the subprocess cases (seconds each), only those marked quick")
    args = ap.parse_args(argv)
    d = args.out or Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    d.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    a = assets(d)
    print("| # | family | bad input | outcome | error (or what handled it) | raised after (s) | before the first model "
          "| files left as they were |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    gens = {0: stage_cases, 1: config_cases, 2: file_cases, 3: model_cases, 4: run_dir_cases, 5: label_cases}
    for fam, gen in gens.items():
        if args.family and fam not in args.family:
            continue
        for c in gen(a, d):
            if c.heavy and args.quick and not c.quick:
                continue
            r = run_case(c, d)
            rows.append(r)
            msg = r["message"].replace("|", "&#124;").replace("\n", " ")
            print(f"| {len(rows)} | {fam} {FAMILIES[fam]} | {r['what']} | {r['outcome']} | {msg} | {r['seconds']:.2f} "
                  f"| {r['before_model']} | {r['kept']} |", flush=True)
    per = {FAMILIES[f]: sum(r["family"] == f for r in rows) for f in FAMILIES}
    print(f"\n{len(rows)} cases ({', '.join(f'{k}: {v}' for k, v in per.items() if v)}) in "
          f"{time.monotonic() - t_start:.0f}s; " + ", ".join(
              f"{o}: {sum(r['outcome'] == o for r in rows)}" for o in ("error", "handled", "GAP")))
    gaps = [r for r in rows if r["gap"]]
    for r in gaps:
        print(f"- GAP: {r['what']}: {r['gap']}")
    failed = [r for r in rows if not r["ok"]]
    for r in failed:
        print(f"- FAILED: {r['what']}: {r['outcome']}, before the first model: {r['before_model']}, files kept: {r['kept']}")
    main.rows = rows  # for tests/test_bad_inputs_catalogue.py
    if args.out is None:
        shutil.rmtree(d, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
