"""Small helpers the loop's ops share: stage arguments, controller construction, evaluation I/O."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..artifacts import write_json_atomic, write_table
from ..evaluation import evaluate_policy
from ..scoring import load_scorer, member_scores
from ..tasks import gold_by_prompt, make_task


def stage_kwargs(cfg: dict) -> dict:
    return {"seed": cfg["seed"], "launcher": cfg["launcher"], "overwrite": False, "progress": cfg["progress"],
            "trust_remote_code": cfg["model"]["trust_remote_code"]}


def eval_seed(cfg: dict) -> int:
    # One fixed sampling seed for every evaluation: policies are compared on the same random stream.
    return cfg["seed"] * 1000 + 777


def kl_controller_kwargs(cfg: dict) -> dict:
    k = cfg["loop"]["kl"]
    if k["controller"] == "adaptive":
        return {"init_beta": k["beta"], "target": k["target"], "horizon": k["horizon"],
                "min_beta": k["min_beta"], "max_beta": k["max_beta"]}
    return {"beta": k["beta"], "min_beta": 0.0, "max_beta": k["max_beta"]}


def rm_policy_kwargs(cfg: dict) -> dict:
    lp = cfg["loop"]
    never = lp["rm_update_every"] is None and lp["rm_update_kl_threshold"] is None
    return {"every": lp["rm_update_every"], "kl_threshold": lp["rm_update_kl_threshold"],
            "freeze": [tuple(w) for w in lp["rm_freeze"]], "never": never}


def eval_temperature(cfg: dict) -> float:
    t = cfg["loop"]["eval_temperature"]
    return cfg["stage"]["ppo"]["temperature"] if t is None else t


def task_gold(ctx, cfg: dict):
    """The task's gold reward as a function of the rendered prompts of this run (None: no gold)."""
    data = ctx.state["data"]
    tables = [pd.read_parquet(data[k]) for k in ("prompts_train", "prompts_gold_eval") if k in data]
    return gold_by_prompt(make_task(cfg["task"]), *tables)


def evaluate_into(ctx, cfg: dict, policy: str, rm: str | None, *, seed: int, baseline_samples: str | None = None,
                  fresh_pairs: str | None = None) -> tuple[dict, str]:
    """Evaluate `policy` on the frozen evaluation prompts; write eval.json and samples.parquet."""
    table = pd.read_parquet(ctx.state["data"]["prompts_gold_eval"])
    prompts = table["prompt"].tolist()
    gold = gold_by_prompt(make_task(cfg["task"]), table)
    record, samples = evaluate_policy(
        policy, ctx.state.get("ref") or policy, rm, prompts,
        samples_per_prompt=cfg["loop"]["eval_samples_per_prompt"],
        max_new_tokens=cfg["stage"]["ppo"]["response_length"], temperature=eval_temperature(cfg), seed=seed,
        baseline_samples=pd.read_parquet(baseline_samples) if baseline_samples else None,
        fresh_pairs=pd.read_parquet(fresh_pairs) if fresh_pairs else None,
        progress=cfg["progress"], trust_remote_code=cfg["model"]["trust_remote_code"], gold=gold,
    )
    if baseline_samples and rm:
        # Re-score the last good samples with the CURRENT reward model, so "proxy went up" compares
        # two policies under one RM rather than two RMs.
        base = pd.read_parquet(baseline_samples)
        model, tok = load_scorer(rm, cfg["model"]["trust_remote_code"])
        record["baseline_proxy"] = float(member_scores(model, tok, base["prompt"].tolist(),
                                                       base["completion"].tolist()).mean())
    record["iteration"] = ctx.iteration
    d = Path(ctx.stage_dir)
    samples_path = write_table(samples, d / "samples.parquet")
    write_json_atomic(d / "eval.json", record)
    return record, str(samples_path)


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())
