"""Setup nodes of the loop: task data, tokenizer and initial models, SFT, reward-model warm-up,
the baseline evaluation; and `ppo_once` / `dpo_once` for the stages_once chain.

Each op takes the graph's Context and the run's config (a plain dict) and returns state updates.
Everything it writes lives in its fresh `ctx.stage_dir`; a crash mid-op leaves that directory to
be moved aside on resume, never read.
"""

from __future__ import annotations

from pathlib import Path

import logging

from ..artifacts import InputError, write_json_atomic, write_table
from ..formats import has_chat_template, render_column
from ..launcher import run_stage
from ..models import (build_tiny_policy, build_tiny_reward, check_checkpoint_dir, copy_with_distinct_pad,
                      load_tokenizer, needs_distinct_pad, save_model, train_tokenizer)
from ..tasks import make_task
from .common import eval_seed, evaluate_into, stage_kwargs

log = logging.getLogger(__name__)


def prepare(ctx, cfg: dict) -> dict:
    """The task's tables, rendered for the model (chat template), and the initial model checkpoint."""
    m, seed = cfg["model"], cfg["seed"]
    d = Path(ctx.stage_dir)
    task = make_task(cfg["task"])
    task.check()
    td = task.load(seed)
    updates: dict = {"cursor": 0}
    if m["path"]:
        check_checkpoint_dir(m["path"], "model.path")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(m["path"], trust_remote_code=m["trust_remote_code"])
        updates["init_policy"] = m["path"]
        if needs_distinct_pad(tok):
            note = copy_with_distinct_pad(m["path"], d / "init_policy", m["trust_remote_code"])
            log.warning("%s", note)
            updates["init_policy"] = str(d / "init_policy")
            tok = load_tokenizer(d / "init_policy", m["trust_remote_code"])
    else:
        from omegaconf import OmegaConf

        tok = train_tokenizer(td.corpus, m["vocab_size"])
        mcfg = OmegaConf.create(m)
        save_model(build_tiny_policy(mcfg, tok, seed), tok, d / "init_policy")
        updates["init_policy"] = str(d / "init_policy")
        if m["reward_init"] == "scratch":
            save_model(build_tiny_reward(mcfg, tok, seed + 1), tok, d / "init_rm")
            updates["init_rm"] = str(d / "init_rm")
    wrap = bool(m["apply_chat_template"]) and has_chat_template(tok)
    if wrap:
        log.warning("prompts are rendered with the chat template of %s (model.apply_chat_template=false: verbatim)",
                    updates["init_policy"])
    src = td.sources.get("prompts", "prompts")
    tables = {"prompts_train": render_column(td.train_prompts, tok, wrap=wrap, path=src),
              "prompts_gold_eval": render_column(td.eval_prompts, tok, wrap=wrap,
                                                 path=td.sources.get("eval_prompts", src))}
    for key, df, source in (("sft_demos", td.sft, "sft"), ("offline_pairs", td.pairs, "pairs"),
                            ("heldout_pairs", td.heldout_pairs, "pairs")):
        if df is not None:
            tables[key] = render_column(df, tok, wrap=wrap, path=td.sources.get(source, source))
    data = {key: str(write_table(df, d / f"{key}.parquet")) for key, df in tables.items()}
    updates["data"] = data
    # Every prompt must leave room for a response in the policy's context: fail here, naming the file
    # and row, not in the first policy update after an iteration of generation and labelling.
    from ..stages.ppo import _max_prompt_tokens, check_prompt_lengths

    limit = _max_prompt_tokens(updates["init_policy"], cfg["stage"]["ppo"])
    for key, source in (("prompts_train", "prompts"), ("prompts_gold_eval", "eval_prompts")):
        t = tables[key]
        origin = [f"prompt_id {pid} of {td.sources.get(source, td.sources.get('prompts', key))}" for pid in t["prompt_id"]]
        check_prompt_lengths(t["prompt"].tolist(), tok, limit, data[key], origin)
    metrics = {"n_train_prompts": len(tables["prompts_train"]), "n_eval_prompts": len(tables["prompts_gold_eval"]),
               "n_sft_demos": len(td.sft) if td.sft is not None else 0,
               "n_seed_pairs": len(td.pairs) if td.pairs is not None else 0}
    if td.sft is not None and "gold" in td.sft.columns:
        metrics["sft_demo_gold"] = float(td.sft["gold"].mean())
    updates["_metrics"] = metrics
    updates["_artifacts"] = [("dataset", p) for p in data.values()]
    return updates


def sft(ctx, cfg: dict) -> dict:
    init = ctx.state["init_policy"]
    if "sft_demos" not in ctx.state["data"]:
        log.warning("no SFT data (task.sft): the model %s is taken as already fine-tuned", init)
        return {"sft_policy": init, "policy": init, "ref": init, "_metrics": {"skipped": 1.0}}
    out = Path(ctx.stage_dir) / "policy"
    meta = run_stage("sft", cfg=cfg["stage"]["sft"], inputs={"policy": ctx.state["init_policy"],
                     "data": ctx.state["data"]["sft_demos"]}, output=out, **stage_kwargs(cfg))
    return {"sft_policy": str(out), "policy": str(out), "ref": str(out), "_metrics": _scalars(meta["metrics"]),
            "_artifacts": [("checkpoint", str(out))], "stage_meta": _stage_summary(ctx, meta)}


def rm_warmup(ctx, cfg: dict) -> dict:
    if "offline_pairs" not in ctx.state["data"]:
        log.warning("no seed pairs (task.pairs): no reward-model warm-up; the first iteration's labels "
                    "train the first reward model")
        return {"rm": None, "_metrics": {"skipped": 1.0}}
    out = Path(ctx.stage_dir) / "rm"
    init = ctx.state.get("init_rm") or ctx.state["sft_policy"]
    meta = run_stage("reward", cfg=cfg["stage"]["reward"], inputs={"reward_model": init,
                     "data": ctx.state["data"]["offline_pairs"]}, output=out,
                     extra={"heldout": ctx.state["data"].get("heldout_pairs")}, **stage_kwargs(cfg))
    return {"rm": str(out), "_metrics": _scalars(meta["metrics"]), "_artifacts": [("reward_model", str(out))],
            "stage_meta": _stage_summary(ctx, meta)}


def baseline(ctx, cfg: dict) -> dict:
    """Evaluate the SFT policy: the first 'last good' state every later iteration is judged against."""
    from ..control.kl_controller import make_kl_controller
    from ..control.rm_update_policy import RMUpdatePolicy
    from .common import kl_controller_kwargs, rm_policy_kwargs

    record, samples_path = evaluate_into(ctx, cfg, ctx.state["sft_policy"], ctx.state["rm"], seed=eval_seed(cfg))
    kl = make_kl_controller(cfg["loop"]["kl"]["controller"], **kl_controller_kwargs(cfg))
    rm_policy = RMUpdatePolicy(**rm_policy_kwargs(cfg))
    last_good = {"iteration": -1, "policy": ctx.state["sft_policy"], "rm": ctx.state["rm"],
                 "kl_state": kl.state_dict(), "rm_policy_state": rm_policy.state_dict(), "cursor": 0,
                 "lr_scale": 1.0, "eval": record, "samples": samples_path}
    write_json_atomic(Path(ctx.run_dir) / "LATEST_GOOD", last_good)
    return {"last_good": last_good, "history": [record], "baseline_eval": record, "kl_state": kl.state_dict(),
            "rm_policy_state": rm_policy.state_dict(), "lr_scale": 1.0, "force_rm_refresh": False,
            "iterations_log": [], "n_rollbacks": 0, "_metrics": _scalars(record)}


def ppo_once(ctx, cfg: dict) -> dict:
    out = Path(ctx.stage_dir) / "policy"
    meta = run_stage("ppo", cfg=cfg["stage"]["ppo"], inputs={"policy": ctx.state["sft_policy"],
                     "reward_model": ctx.state["rm"], "data": ctx.state["data"]["prompts_train"]}, output=out,
                     extra={"ensemble_reduce": cfg["loop"]["ensemble_reduce"],
                            "ensemble_lambda": cfg["loop"]["ensemble_lambda"]}, **stage_kwargs(cfg))
    return {"ppo_policy": str(out), "_metrics": _scalars(meta["metrics"]), "_artifacts": [("checkpoint", str(out))],
            "stage_meta": _stage_summary(ctx, meta)}


def dpo_once(ctx, cfg: dict) -> dict:
    out = Path(ctx.stage_dir) / "policy"
    meta = run_stage("dpo", cfg=cfg["stage"]["dpo"], inputs={"policy": ctx.state["sft_policy"],
                     "data": ctx.state["data"]["offline_pairs"]}, output=out, **stage_kwargs(cfg))
    return {"dpo_policy": str(out), "_metrics": _scalars(meta["metrics"]), "_artifacts": [("checkpoint", str(out))],
            "stage_meta": _stage_summary(ctx, meta)}


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _stage_summary(ctx, meta: dict) -> dict:
    """Per-stage facts for summary.json, accumulated in the state under the node's name."""
    m = meta["metrics"]
    entry = {"wall_s": meta["wall_s"], "output": meta["output"],
             "final_loss": m.get("final_loss", m.get("loss/policy_avg")),
             "metrics": {k: v for k, v in _scalars(m).items() if "/" not in k or k.startswith(("objective", "loss"))}}
    return {**ctx.state.get("stage_meta", {}), ctx.node: entry}
