"""What the loop's steps share: stage arguments, controller construction, the task's gold, evaluation."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from ..artifacts import write_json_atomic, write_table
from ..evaluation import evaluate_policy
from ..launcher import run_stage
from ..lora import stage_lora
from ..tasks import gold_by_prompt, make_task


def train_stage(ctx, stage: str, *, inputs: dict, output: Path, extra: dict | None = None) -> dict:
    """Run one TRL stage of the loop on `ctx.cfg.stage.<stage>` (metadata back, output published)."""
    cfg = ctx.cfg
    return run_stage(stage, cfg=asdict(getattr(cfg.stage, stage)), inputs=inputs, output=output, extra=extra,
                     seed=cfg.seed, launcher=asdict(cfg.launcher), overwrite=False, progress=cfg.progress,
                     trust_remote_code=cfg.model.trust_remote_code, lora=stage_lora(cfg.model.lora, stage),
                     generation=asdict(cfg.generation))


def eval_seed(cfg) -> int:
    # One fixed sampling seed for every evaluation: policies are compared on the same random stream.
    return cfg.seed * 1000 + 777


def rm_policy_kwargs(cfg) -> dict:
    lp = cfg.loop
    never = lp.rm_update_every is None and lp.rm_update_kl_threshold is None
    return {"every": lp.rm_update_every, "kl_threshold": lp.rm_update_kl_threshold,
            "freeze": [tuple(w) for w in lp.rm_freeze], "never": never}


def eval_temperature(cfg) -> float:
    t = cfg.loop.eval_temperature
    return cfg.stage.ppo.temperature if t is None else t


def task_gold(ctx):
    """The task's gold reward as a function of this run's rendered prompts (None: the task has none)."""
    data = ctx.state.data
    tables = [pd.read_parquet(data[k]) for k in ("prompts_train", "prompts_gold_eval") if k in data]
    return gold_by_prompt(make_task(ctx.cfg.task), *tables)


def evaluate_into(ctx, policy: str, rm: str | None, *, baseline_samples: str | None = None,
                  baseline_proxy: float | None = None, fresh_pairs: str | None = None) -> tuple[dict, str]:
    """Evaluate `policy` on the frozen evaluation prompts; write eval.json and samples.parquet.

    With `baseline_samples` and an RM, the record's `baseline_proxy` is those samples' mean score under
    this RM, so "proxy went up" compares two policies under one RM rather than two RMs: `baseline_proxy`
    when the caller already knows it (the RM has not changed since it scored them), else scored here with
    the RM the evaluation has loaded anyway."""
    cfg = ctx.cfg
    table = pd.read_parquet(ctx.state.data["prompts_gold_eval"])
    base = pd.read_parquet(baseline_samples) if baseline_samples else None
    record, samples = evaluate_policy(
        policy, ctx.state.ref or policy, rm, table["prompt"].tolist(),
        samples_per_prompt=cfg.loop.eval_samples_per_prompt, max_new_tokens=cfg.stage.ppo.response_length,
        temperature=eval_temperature(cfg), seed=eval_seed(cfg), baseline_samples=base,
        rescore_baseline=base is not None and rm is not None and baseline_proxy is None,
        fresh_pairs=pd.read_parquet(fresh_pairs) if fresh_pairs else None,
        progress=cfg.progress, trust_remote_code=cfg.model.trust_remote_code,
        gold=gold_by_prompt(make_task(cfg.task), table), generation=asdict(cfg.generation),
        anchors=pd.read_parquet(ctx.state.data["anchors"]) if "anchors" in ctx.state.data else None,
    )
    if base is not None and rm and baseline_proxy is not None:
        record["baseline_proxy"] = float(baseline_proxy)
    record["iteration"] = ctx.iteration
    samples_path = write_table(samples, ctx.dir / "samples.parquet")
    write_json_atomic(ctx.dir / "eval.json", record)
    return record, str(samples_path)


def scalars(metrics: dict) -> dict:
    """The numeric metrics of a record (its iteration is where it belongs, not a metric)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "iteration"}
