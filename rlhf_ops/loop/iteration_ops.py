"""Iteration nodes of the online loop: collect -> label -> rm_update -> policy_update -> evaluate -> gate.

Each op reads the loop state (paths of the current policy / reward model, controller states, the
data cursor) and returns updates. The policy update writes a *candidate*; only the gate makes it
the current policy, or restores the last good state and applies a remedy.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import write_json_atomic, write_table
from ..control.detectors import build_detectors
from ..control.detectors import Verdict
from ..control.gate import Gate, GateDecision, apply_remedies
from ..control.kl_controller import BetaSchedule, KLController, LRSchedule
from ..control.rm_update_policy import RMUpdatePolicy, accept_new_rm, paired_accuracy_se
from ..generation import generate
from ..graph import StopLoop
from ..labelers import make_labeler
from ..labelers.reward_model import NonFiniteRewardError
from ..pairs import empty_pairs, with_gold
from ..tasks import make_task
from ..launcher import run_stage
from ..scoring import load_scorer, pair_correct
from .common import eval_seed, evaluate_into, stage_kwargs, task_gold
from .setup_ops import _scalars

log = logging.getLogger(__name__)
STORE = "preferences/store.parquet"


def collect(ctx, cfg: dict) -> dict:
    lp, ppo = cfg["loop"], cfg["stage"]["ppo"]
    if lp["max_rollbacks"] is not None and ctx.state["n_rollbacks"] >= lp["max_rollbacks"]:
        # Rollback after rollback means the remedies are not working: stop for a person to look.
        raise StopLoop(f"{ctx.state['n_rollbacks']} rollbacks reached loop.max_rollbacks={lp['max_rollbacks']}; "
                       "look at summary.json's iterations, change the config (allow_config_change=true) and re-run")
    pool = pd.read_parquet(ctx.state["data"]["prompts_train"])
    cursor, n = int(ctx.state.get("cursor", 0)), lp["prompts_per_iteration"]
    rows = pool.iloc[[(cursor + i) % len(pool) for i in range(n)]].reset_index(drop=True)
    s = generate(ctx.state["policy"], rows["prompt"].tolist(), lp["completions_per_prompt"],
                 max_new_tokens=ppo["response_length"], temperature=ppo["temperature"],
                 seed=cfg["seed"] * 100003 + ctx.iteration, progress=cfg["progress"],
                 trust_remote_code=cfg["model"]["trust_remote_code"])
    df = pd.DataFrame({"prompt": s.prompts, "prompt_id": rows["prompt_id"].iloc[s.prompt_index].tolist(),
                       "completion": s.completions, "n_tokens": s.n_tokens, "ended": s.ended,
                       "iteration": ctx.iteration, "policy_checkpoint": ctx.state["policy"]})
    df["empty"] = df["completion"].str.strip() == ""
    n_empty = int(df["empty"].sum())
    if n_empty:
        log.warning("iteration %d: %d of %d completions are empty (all padding or EOS); they are not labelled",
                    ctx.iteration, n_empty, len(df))
    d = Path(ctx.stage_dir)
    completions = write_table(df, d / "completions.parquet")
    prompts = write_table(rows, d / "prompts.parquet")
    return {"completions": str(completions), "iter_prompts": str(prompts), "cursor": (cursor + n) % len(pool),
            "poison": None,
            "_metrics": {"n_completions": len(df), "n_empty": n_empty, "eos_rate": float(df["ended"].mean()),
                         "mean_tokens": float(df["n_tokens"].mean())}}


def label(ctx, cfg: dict) -> dict:
    lp = cfg["loop"]
    df = pd.read_parquet(ctx.state["completions"])
    df = df[~df["empty"]]
    prompt_rows, candidates = [], []
    for pid, group in df.groupby("prompt_id", sort=False):
        prompt_rows.append({"prompt": group["prompt"].iloc[0], "prompt_id": pid})
        candidates.append(group["completion"].tolist())
    labeler = make_labeler(lp["labeler"], task=make_task(cfg["task"]), annotator=lp["annotator"], seed=cfg["seed"],
                           reward_model=ctx.state["rm"], trust_remote_code=cfg["model"]["trust_remote_code"])
    if lp["labeler"] == "human":
        labeler.on_error = lp["human_labels_on_error"]
    try:
        pairs = labeler.label(prompt_rows, candidates, iteration=ctx.iteration, checkpoint=ctx.state["policy"],
                              work_dir=Path(ctx.run_dir) / "human_queue" / f"iter_{ctx.iteration:03d}")
    except NonFiniteRewardError as e:
        # Never train on it: the rest of the iteration is skipped and the gate rolls it back.
        log.error("iteration %d: %s", ctx.iteration, e)
        empty = write_table(empty_pairs(), Path(ctx.stage_dir) / "pairs.parquet")
        return {"pairs": str(empty), "poison": f"labeler: {e}", "_metrics": {"n_pairs": 0, "nonfinite_rewards": 1.0}}
    gold = task_gold(ctx, cfg)
    pairs = with_gold(pairs, gold)
    path = write_table(pairs, Path(ctx.stage_dir) / "pairs.parquet")
    store = Path(ctx.run_dir) / STORE
    old = pd.read_parquet(store) if store.exists() else pairs.iloc[:0]
    # Dedupe by pair_id: a crash between this write and the ledger commit must not double the pairs.
    merged = pd.concat([old, pairs]).drop_duplicates("pair_id", keep="last").reset_index(drop=True)
    write_table(merged, store)
    metrics = {"n_pairs": len(pairs), "store_size": len(merged)}
    if gold is not None and len(pairs):
        metrics["label_gold_agreement"] = float(np.mean(pairs["gold_chosen"] > pairs["gold_rejected"]))
    return {"pairs": str(path), "store": str(store), "_metrics": metrics}


def rm_update(ctx, cfg: dict) -> dict:
    lp = cfg["loop"]
    policy = RMUpdatePolicy.from_state_dict(ctx.state["rm_policy_state"])
    kl_now = float(ctx.state["history"][-1].get("kl", 0.0))
    first = ctx.state["rm"] is None  # no warm-up: the first labels train the first reward model
    forced = bool(ctx.state.get("force_rm_refresh")) or first
    due, reason = policy.should_update(ctx.iteration, policy.kl_since_last(kl_now), forced=forced)
    if first:
        reason = "first reward model (no warm-up)"
    fresh = pd.read_parquet(ctx.state["pairs"])
    if ctx.state.get("poison"):
        return {"rm_update_reason": "skipped: iteration poisoned", "_metrics": {"rm_updated": 0.0}}
    if not due or len(fresh) < 4:
        why = reason if not due else f"due ({reason}) but too few fresh pairs ({len(fresh)})"
        return {"rm_update_reason": why, "_metrics": {"rm_updated": 0.0}}
    rng = np.random.default_rng(cfg["seed"] * 31 + ctx.iteration)
    idx = rng.permutation(len(fresh))
    n_val = max(2, int(round(len(fresh) * lp["rm_heldout_fraction"])))
    val, train = fresh.iloc[idx[:n_val]], fresh.iloc[idx[n_val:]]
    store = pd.read_parquet(ctx.state["store"])
    old = store[~store["pair_id"].isin(fresh["pair_id"])]
    ratio = lp["rm_replay_ratio"]
    n_replay = min(len(old), int(round(len(train) * ratio / max(1e-9, 1 - ratio)))) if ratio > 0 else 0
    replay = old.iloc[rng.choice(len(old), n_replay, replace=False)] if n_replay else old.iloc[:0]
    d = Path(ctx.stage_dir)
    mix = write_table(pd.concat([train, replay]).reset_index(drop=True), d / "train_mix.parquet")
    val_path = write_table(val.reset_index(drop=True), d / "fresh_val.parquet")
    trc = cfg["model"]["trust_remote_code"]

    def judged(rm_path: str) -> np.ndarray:  # per held-out pair: does this RM rank it like the labeler?
        model, tok = load_scorer(rm_path, trc)
        return pair_correct(model, tok, val["prompt"], val["chosen"], val["rejected"])

    init = (ctx.state.get("init_rm") or ctx.state["sft_policy"]) if first else ctx.state["rm"]
    out = d / "rm"
    meta = run_stage("reward", cfg=cfg["stage"]["reward"], inputs={"reward_model": init, "data": str(mix)},
                     output=out, extra={"heldout": str(val_path)}, **stage_kwargs(cfg))
    new_ok = judged(str(out))
    new_acc = float(np.mean(new_ok))
    if first:
        old_acc, se, keep_new, why = float("nan"), float("nan"), True, "no previous reward model to compare with"
    else:
        old_ok = judged(ctx.state["rm"])
        old_acc = float(np.mean(old_ok))
        se = paired_accuracy_se(old_ok, new_ok)
        keep_new, why = accept_new_rm(old_acc, new_acc, lp["rm_accuracy_tolerance"], se, lp["rm_accuracy_z"])
    policy.mark_updated(ctx.iteration, kl_now)
    return {"rm": str(out) if keep_new else ctx.state["rm"], "rm_policy_state": policy.state_dict(),
            "force_rm_refresh": False, "rm_update_reason": f"{reason}; {why}",
            "_metrics": {"rm_updated": 1.0, "rm_kept_new": float(keep_new), "rm_old_accuracy": old_acc,
                         "rm_new_accuracy": new_acc, "rm_accuracy_se": se, "rm_train_pairs": len(train), "rm_replay_pairs": n_replay},
            "_artifacts": [("reward_model", str(out))]}


def policy_update(ctx, cfg: dict) -> dict:
    lp, n_iter = cfg["loop"], max(1, cfg["loop"]["iterations"])
    kl = KLController.from_state_dict(ctx.state["kl_state"])
    beta = BetaSchedule(lp["kl"]["schedule"], lp["kl"]["start_mult"], lp["kl"]["end_mult"], n_iter) \
        .effective_beta(kl, ctx.iteration)
    lr_scale = ctx.state["lr_scale"] * LRSchedule(lp["lr_schedule"], 1.0, lp["lr_end_mult"], n_iter) \
        .lr_multiplier(ctx.iteration)
    out = Path(ctx.stage_dir) / "policy"
    extra = {"beta": beta, "lr_scale": lr_scale}
    if ctx.state.get("poison"):
        return {"candidate": None, "beta_used": beta, "lr_scale_used": lr_scale, "_metrics": {"skipped": 1.0}}
    if lp["policy_update"] == "ppo" and ctx.state["rm"] is None:
        why = f"no reward model yet: iteration {ctx.iteration} gave too few labelled pairs to train the first one"
        log.error("iteration %d: %s", ctx.iteration, why)
        return {"candidate": None, "beta_used": beta, "lr_scale_used": lr_scale, "poison": why,
                "_metrics": {"skipped": 1.0}}
    try:
        meta = _train_policy(ctx, cfg, out, extra)
    except FloatingPointError as e:
        log.error("iteration %d: policy update diverged: %s", ctx.iteration, e)
        return {"candidate": None, "beta_used": beta, "lr_scale_used": lr_scale, "poison": f"policy update: {e}",
                "_metrics": {"diverged": 1.0}}
    return {"candidate": str(out), "beta_used": beta, "lr_scale_used": lr_scale,
            "_metrics": {**_scalars(meta["metrics"]), "beta": beta, "lr_scale": lr_scale, "wall_s": meta["wall_s"]},
            "_artifacts": [("checkpoint", str(out))]}


def _train_policy(ctx, cfg: dict, out: Path, extra: dict) -> dict:
    lp = cfg["loop"]
    if lp["policy_update"] == "ppo":
        extra = {**extra, "ensemble_reduce": lp["ensemble_reduce"], "ensemble_lambda": lp["ensemble_lambda"]}
        return run_stage("ppo", cfg=cfg["stage"]["ppo"], inputs={"policy": ctx.state["policy"], "ref": ctx.state["ref"],
                         "reward_model": ctx.state["rm"], "data": ctx.state["iter_prompts"]}, output=out, extra=extra,
                         **stage_kwargs(cfg))
    else:
        data = ctx.state["data"]["offline_pairs"] if lp["dpo_data"] == "offline" else ctx.state["pairs"]
        meta = run_stage("dpo", cfg=cfg["stage"]["dpo"], inputs={"policy": ctx.state["policy"], "ref": ctx.state["ref"],
                         "data": data}, output=out, extra=extra, **stage_kwargs(cfg))
    return meta


def evaluate(ctx, cfg: dict) -> dict:
    if ctx.state.get("poison"):
        return {"eval": {"iteration": ctx.iteration, "poison": ctx.state["poison"]}, "eval_samples": None}
    record, samples = evaluate_into(ctx, cfg, ctx.state["candidate"], ctx.state["rm"], seed=eval_seed(cfg),
                                    baseline_samples=ctx.state["last_good"]["samples"],
                                    fresh_pairs=ctx.state.get("pairs"))
    return {"eval": record, "eval_samples": samples, "_metrics": _scalars(record)}


def gate(ctx, cfg: dict) -> dict:
    lp, st = cfg["loop"], ctx.state
    current, last_good = dict(st["eval"]), st["last_good"]
    baseline = dict(last_good["eval"])
    if "baseline_proxy" in current:
        baseline["proxy"] = current["baseline_proxy"]
    gate_ = Gate(build_detectors(list(lp["detectors"])), min_win_rate=lp["min_win_rate"], vote=_vote(lp["gate_vote"]))
    if st.get("poison"):
        remedies = ["refresh_rm", "lower_lr"] if st["poison"].startswith("labeler") else ["lower_lr"]
        decision = GateDecision(False, [f"non-finite input: {st['poison']}"],
                                [Verdict("non_finite_input", True, st["poison"], remedies[0])], remedies)
    else:
        decision = gate_.decide(current, baseline, st["history"])
    skipped = [f"{v.name} ({v.reason})" for v in decision.verdicts if v.skipped]
    if lp["min_win_rate"] is not None and current.get("win_rate") is None and not st.get("poison"):
        skipped.append("head-to-head (no win rate: the task has no gold to judge it)")
    previous = st["iterations_log"][-1].get("skipped_checks") if st["iterations_log"] else None
    if skipped and skipped != previous:
        log.warning("gate: skipped checks: %s", "; ".join(skipped))
    kl = KLController.from_state_dict(st["kl_state"])
    entry = {"iteration": ctx.iteration, "gold": current.get("gold"), "proxy": current.get("proxy"),
             "kl": current.get("kl"), "length": current.get("length"), "entropy": current.get("entropy"),
             "win_rate": current.get("win_rate"), "beta": st.get("beta_used"), "lr_scale": st.get("lr_scale_used"),
             "rm_update": st.get("rm_update_reason"), "policy": st["candidate"], "skipped_checks": skipped}
    if decision.accepted:
        if math.isfinite(current.get("kl", float("nan"))):
            kl.update(current["kl"], cfg["stage"]["ppo"]["total_episodes"])
        new_good = {"iteration": ctx.iteration, "policy": st["candidate"], "rm": st["rm"], "kl_state": kl.state_dict(),
                    "rm_policy_state": st["rm_policy_state"], "cursor": st["cursor"], "lr_scale": st["lr_scale"],
                    "eval": current, "samples": st["eval_samples"]}
        write_json_atomic(Path(ctx.run_dir) / "LATEST_GOOD", new_good)
        entry.update(status="accepted", reasons=decision.reasons)
        return {"policy": st["candidate"], "last_good": new_good, "kl_state": kl.state_dict(),
                "history": st["history"] + [current], "iterations_log": st["iterations_log"] + [entry],
                "poison": None, "_iteration_status": {"status": "accepted", "summary": entry},
                "_metrics": {"accepted": 1.0}}
    # Roll back: policy, RM, controller states and data cursor of the last good state, then remedy.
    kl = KLController.from_state_dict(last_good["kl_state"])
    lr_scale, force_rm, applied = apply_remedies(decision.remedies, kl, last_good["lr_scale"],
                                                 beta_factor=lp["beta_remedy_factor"], lr_factor=lp["lr_remedy_factor"])
    if "raise_beta" in decision.remedies and kl.beta < lp["kl"]["remedy_min_beta"]:
        floor = kl.state_dict()
        floor["beta"] = lp["kl"]["remedy_min_beta"]
        kl.load_state_dict(floor)
        applied = sorted(set(applied) | {"raise_beta"})
    fired = [v.name for v in decision.fired] or ["head_to_head"]
    entry.update(status="rolled_back", reasons=decision.reasons, remedies=applied,
                 restored_iteration=last_good["iteration"])
    rollback = {"detector": ",".join(fired), "reason": "; ".join(decision.reasons),
                "restored_iteration": last_good["iteration"], "remedy": ",".join(applied) or "none"}
    return {"policy": last_good["policy"], "rm": last_good["rm"], "kl_state": kl.state_dict(),
            "rm_policy_state": last_good["rm_policy_state"], "cursor": last_good["cursor"], "lr_scale": lr_scale,
            "force_rm_refresh": force_rm, "n_rollbacks": st["n_rollbacks"] + 1,
            "iterations_log": st["iterations_log"] + [entry], "_rollbacks": [rollback], "poison": None,
            "_iteration_status": {"status": "rolled_back", "summary": entry}, "_metrics": {"accepted": 0.0}}


def _vote(v: str):
    return int(v) if str(v).isdigit() else v
