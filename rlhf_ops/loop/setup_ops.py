"""Setup nodes of the loop: task data, tokenizer and initial models, SFT, reward-model warm-up,
the baseline evaluation; and `ppo_once` / `dpo_once` for the stages_once chain.

Each op takes the graph's Context and the run's config (a plain dict) and returns state updates.
Everything it writes lives in its fresh `ctx.stage_dir`; a crash mid-op leaves that directory to
be moved aside on resume, never read.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts import InputError, write_json_atomic, write_table
from ..labelers.annotator import panel_member
from ..launcher import run_stage
from ..models import build_tiny_policy, build_tiny_reward, check_checkpoint_dir, load_tokenizer, save_model, train_tokenizer
from ..testbed.builders import build_grammar_pairs, build_prompt_pool, build_sft_demos
from ..testbed.task import prompt_splits, tokenizer_corpus
from .common import eval_seed, evaluate_into, stage_kwargs


def prepare(ctx, cfg: dict) -> dict:
    t, m, seed = cfg["task"], cfg["model"], cfg["seed"]
    d = Path(ctx.stage_dir)
    splits = prompt_splits(t["seed"], t["n_train_prompts"], t["n_eval_prompts"], t["n_gold_eval_prompts"])
    data = {}
    for split, rows in splits.items():
        data[f"prompts_{split}"] = str(write_table(build_prompt_pool(rows), d / f"prompts_{split}.parquet"))
    demos = build_sft_demos(splits["train"], t["sft_demos_per_prompt"], t["seed"], t["sft_min_gold"])
    data["sft_demos"] = str(write_table(demos, d / "sft_demos.parquet"))
    annotator = panel_member(t["annotator"], t["seed"])
    data["offline_pairs"] = str(write_table(
        build_grammar_pairs(splits["train"], t["n_offline_pairs"], annotator, t["seed"]), d / "offline_pairs.parquet"))
    data["heldout_pairs"] = str(write_table(
        build_grammar_pairs(splits["eval"], max(64, t["n_eval_prompts"]), annotator, t["seed"] + 1),
        d / "heldout_pairs.parquet"))
    updates = {"data": data, "cursor": 0}
    if m["path"]:
        check_checkpoint_dir(m["path"], "model.path")
        tok = load_tokenizer(m["path"], m["trust_remote_code"])
        if tok.pad_token_id == tok.eos_token_id:
            raise InputError(f"model.path {m['path']}: pad token equals EOS; set a distinct pad token")
        updates["init_policy"] = m["path"]
    else:
        tok = train_tokenizer(tokenizer_corpus(t["seed"], t["tokenizer_corpus_size"]), m["vocab_size"])
        from omegaconf import OmegaConf

        mcfg = OmegaConf.create(m)
        save_model(build_tiny_policy(mcfg, tok, seed), tok, d / "init_policy")
        updates["init_policy"] = str(d / "init_policy")
        if m["reward_init"] == "scratch":
            save_model(build_tiny_reward(mcfg, tok, seed + 1), tok, d / "init_rm")
            updates["init_rm"] = str(d / "init_rm")
    # Every prompt must leave room for a response in the policy's context: fail here, naming the file
    # and row, not in the first policy update after an iteration of generation and labelling.
    from ..stages.ppo import _max_prompt_tokens, read_prompts

    limit = _max_prompt_tokens(updates["init_policy"], cfg["stage"]["ppo"])
    for split in splits:
        read_prompts(data[f"prompts_{split}"], tok, limit)
    updates["_metrics"] = {"n_sft_demos": len(demos), "sft_demo_gold": float(demos["gold"].mean())}
    updates["_artifacts"] = [("dataset", p) for p in data.values()]
    return updates


def sft(ctx, cfg: dict) -> dict:
    out = Path(ctx.stage_dir) / "policy"
    meta = run_stage("sft", cfg=cfg["stage"]["sft"], inputs={"policy": ctx.state["init_policy"],
                     "data": ctx.state["data"]["sft_demos"]}, output=out, **stage_kwargs(cfg))
    return {"sft_policy": str(out), "policy": str(out), "ref": str(out), "_metrics": _scalars(meta["metrics"]),
            "_artifacts": [("checkpoint", str(out))], "stage_meta": _stage_summary(ctx, meta)}


def rm_warmup(ctx, cfg: dict) -> dict:
    out = Path(ctx.stage_dir) / "rm"
    init = ctx.state.get("init_rm") or ctx.state["sft_policy"]
    meta = run_stage("reward", cfg=cfg["stage"]["reward"], inputs={"reward_model": init,
                     "data": ctx.state["data"]["offline_pairs"]}, output=out,
                     extra={"heldout": ctx.state["data"]["heldout_pairs"]}, **stage_kwargs(cfg))
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
