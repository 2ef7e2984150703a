"""One iteration of the online loop, a step per function: collect -> label -> rm_update ->
policy_update -> evaluate -> gate (-> prune, in retention.py).

Each step reads and changes `ctx.state` (rlhf_ops.loop.state.LoopState). The policy update writes a
*candidate*; only the gate makes it the current policy, or restores the last good state and applies
a remedy. A step that cannot go on raises AbandonIteration, and the gate rolls the iteration back.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict

import numpy as np
import pandas as pd

from ..control.detectors import Verdict, build_detectors
from ..control.gate import Gate, GateDecision, apply_remedies
from ..control.kl_controller import BetaSchedule, KLController, LRSchedule, make_kl_controller
from ..control.rm_update_policy import RMUpdatePolicy, accept_new_rm, paired_accuracy_se, plateau
from ..artifacts import write_json_atomic, write_table
from ..generation import generate
from ..labelers import make_labeler
from ..labelers.judge import JudgeLabeler
from ..labelers.reward_model import NonFiniteRewardError
from ..pairs import with_gold
from ..scoring import best_per_prompt, load_scorer, pair_correct, reward_scores
from ..tasks import make_task
from .common import evaluate_into, scalars, task_gold, train_stage
from .judging import gate_oracle, judge_head_to_head
from .errors import AbandonIteration, StopLoop
from .state import LastGood

log = logging.getLogger(__name__)
STORE = "preferences/store.parquet"
# What a gold-blind gate does not see (loop.gate.oracle other than gold).
GOLD_KEYS = ("gold", "gold_win_rate", "rm_accuracy", "label_gold_agreement")
# What the iteration log keeps of a judged head-to-head.
JUDGE_FIELDS = ("h2h_decision", "win_rate_lo", "win_rate_hi", "win_rate_lc", "gold_win_rate", "judge_comparisons",
                "judge_calls")


def collect(ctx) -> None:
    """Prompts from the pool (a cursor that wraps), n completions each from the current policy."""
    cfg, s = ctx.cfg, ctx.state
    lp, ppo = cfg.loop, cfg.stage.ppo
    if lp.max_rollbacks is not None and s.n_rollbacks >= lp.max_rollbacks:
        # Rollback after rollback means the remedies are not working: stop for a person to look.
        raise StopLoop(f"{s.n_rollbacks} rollbacks reached loop.max_rollbacks={lp.max_rollbacks}; look at "
                       "summary.json's iterations, change the config (allow_config_change=true) and re-run")
    pool = pd.read_parquet(s.data["prompts_train"])
    n = lp.prompts_per_iteration
    rows = pool.iloc[[(s.cursor + i) % len(pool) for i in range(n)]].reset_index(drop=True)
    out = generate(s.policy, rows["prompt"].tolist(), lp.completions_per_prompt, max_new_tokens=ppo.response_length,
                   temperature=ppo.temperature, seed=cfg.seed * 100003 + ctx.iteration, progress=cfg.progress,
                   trust_remote_code=cfg.model.trust_remote_code, generation=asdict(cfg.generation))
    df = pd.DataFrame({"prompt": out.prompts, "prompt_id": rows["prompt_id"].iloc[out.prompt_index].tolist(),
                       "completion": out.completions, "n_tokens": out.n_tokens, "ended": out.ended,
                       "iteration": ctx.iteration, "policy_checkpoint": s.policy})
    df["empty"] = df["completion"].str.strip() == ""
    n_empty = int(df["empty"].sum())
    if n_empty:
        log.warning("iteration %d: %d of %d completions are empty (all padding or EOS); they are not labelled",
                    ctx.iteration, n_empty, len(df))
    s.work.completions = str(write_table(df, ctx.dir / "completions.parquet"))
    s.work.prompts = str(write_table(rows, ctx.dir / "prompts.parquet"))
    s.cursor = (s.cursor + n) % len(pool)
    ctx.metrics.update({"n_completions": len(df), "n_empty": n_empty, "eos_rate": float(df["ended"].mean()),
                        "mean_tokens": float(df["n_tokens"].mean())})


def loop_labeler(ctx, table_key: str):
    """loop.labeler, built for this step (the judge is shown the requests of `table_key`'s prompts)."""
    cfg, s, lp = ctx.cfg, ctx.state, ctx.cfg.loop
    if lp.labeler == "judge":
        from .judging import loop_judge, questions

        table = pd.read_parquet(s.data[table_key])
        return JudgeLabeler(loop_judge(ctx), dict(zip(table["prompt"], questions(table))))
    labeler = make_labeler(lp.labeler, task=make_task(cfg.task), annotator=lp.annotator, seed=cfg.seed,
                           reward_model=s.rm, trust_remote_code=cfg.model.trust_remote_code)
    if lp.labeler == "annotator":  # the task's annotators read the task's own prompts, not the rendered ones
        tables = [pd.read_parquet(s.data[k]) for k in ("prompts_train", "prompts_gold_eval") if k in s.data]
        return SourcePrompts(labeler, {p: q for t in tables if "prompt_source" in t.columns
                                       for p, q in zip(t["prompt"], t["prompt_source"])})
    return labeler


class SourcePrompts:
    """A task's labeler shown the task's own prompts (`prompt_source`: what the task wrote, before the chat
    template rendered it), its pairs given back with the prompts the models saw."""

    def __init__(self, inner, source: dict[str, str]):
        self.inner, self.source = inner, source

    def label(self, prompt_rows: list[dict], candidates: list[list[str]], **kw) -> pd.DataFrame:
        rows = [{**r, "prompt": self.source.get(r["prompt"], r["prompt"])} for r in prompt_rows]
        pairs = self.inner.label(rows, candidates, **kw)
        rendered = {r["prompt_id"]: r["prompt"] for r in prompt_rows}
        return pairs.assign(prompt=[rendered.get(pid, p) for pid, p in zip(pairs["prompt_id"], pairs["prompt"])])


def adversarial_pairs(ctx, candidate_samples: str, good_samples: str):
    """The rejected candidate's evaluation samples against the last good policy's, per prompt and slot,
    labelled by loop.labeler: what fooled the RM, for its next refresh."""
    cand, base = pd.read_parquet(candidate_samples), pd.read_parquet(good_samples)
    if len(cand) != len(base) or not (cand["prompt"].to_numpy() == base["prompt"].to_numpy()).all():
        return None
    table = pd.read_parquet(ctx.state.data["prompts_gold_eval"])
    rows, cands = [], []
    for k, (i, c, b) in enumerate(zip(cand["prompt_index"], cand["completion"], base["completion"])):
        if c != b and c.strip() and b.strip():
            rows.append({"prompt": table["prompt"].iloc[int(i)], "prompt_id": f"{table['prompt_id'].iloc[int(i)]}#{k}"})
            cands.append([c, b])
    if not rows:
        return None
    pairs = loop_labeler(ctx, "prompts_gold_eval").label(rows, cands, iteration=ctx.iteration,
                                                         checkpoint=ctx.state.work.candidate or "",
                                                         work_dir=ctx.dir / "adversarial_queue")
    pairs = with_gold(pairs, task_gold(ctx))
    return pairs.assign(source="adversarial", pair_id=["adv-" + p for p in pairs["pair_id"]])


def label(ctx) -> None:
    """The labeler turns the completions into preference pairs; they join the run's pair store."""
    cfg, s = ctx.cfg, ctx.state
    lp = cfg.loop
    df = pd.read_parquet(s.work.completions)
    df = df[~df["empty"]]
    prompt_rows, candidates = [], []
    for pid, group in df.groupby("prompt_id", sort=False):
        prompt_rows.append({"prompt": group["prompt"].iloc[0], "prompt_id": pid})
        candidates.append(group["completion"].tolist())
    labeler = loop_labeler(ctx, "prompts_train")
    if lp.labeler == "human":
        labeler.on_error, labeler.partial = lp.human_labels_on_error, lp.human_labels_partial
        if lp.human_labels_partial == "fallback" and s.rm:
            labeler.fallback = make_labeler("reward_model", reward_model=s.rm,
                                            trust_remote_code=cfg.model.trust_remote_code)
    try:
        pairs = labeler.label(prompt_rows, candidates, iteration=ctx.iteration, checkpoint=s.policy,
                              work_dir=ctx.run_dir / "human_queue" / f"iter_{ctx.iteration:03d}")
    except NonFiniteRewardError as e:  # never trained on: the gate rolls the iteration back
        raise AbandonIteration(f"labeler: {e}", remedies=("refresh_rm", "lower_lr"),
                               metrics={"n_pairs": 0, "nonfinite_rewards": 1.0}) from e
    equal = (pairs["chosen"] == pairs["rejected"]).astype(bool)
    if equal.any():
        log.warning("iteration %d: %d pair(s) from the %s labeler have the same text on both sides; dropped",
                    ctx.iteration, int(equal.sum()), lp.labeler)
        pairs = pairs[~equal].reset_index(drop=True)
    if len(pairs) < lp.min_pairs:  # a broken labeler must not pass as a quiet iteration
        raise AbandonIteration(
            f"labeler: {len(pairs)} usable pair(s) from {len(prompt_rows)} prompt(s), fewer than loop.min_pairs="
            f"{lp.min_pairs} (ties and identical sides are not usable); nothing is trained on them",
            remedies=("none",), metrics={"n_pairs": len(pairs), "n_equal_pairs": int(equal.sum())})
    gold = task_gold(ctx)
    pairs = with_gold(pairs, gold)
    s.work.pairs = str(write_table(pairs, ctx.dir / "pairs.parquet"))
    store = ctx.run_dir / STORE
    old = pd.read_parquet(store) if store.exists() else pairs.iloc[:0]
    # Dedupe by pair_id: a crash between this write and the ledger commit must not double the pairs.
    merged = pd.concat([old, pairs]).drop_duplicates("pair_id", keep="last").reset_index(drop=True)
    write_table(merged, store)
    ctx.metrics.update({"n_pairs": len(pairs), "store_size": len(merged)})
    if lp.labeler == "judge":
        ctx.metrics.update({"judge_calls": labeler.judge.calls, "judge_cached": labeler.judge.cached})
    if gold is not None and len(pairs):
        ctx.metrics["label_gold_agreement"] = float(np.mean(pairs["gold_chosen"] > pairs["gold_rejected"]))


def rm_update(ctx) -> None:
    """Refresh the RM when its schedule says so: continue from it on fresh + replayed pairs, and keep
    the old one unless the new one is at least as accurate on held-out fresh pairs (within noise)."""
    cfg, s = ctx.cfg, ctx.state
    lp = cfg.loop
    policy = RMUpdatePolicy.from_state_dict(s.rm_policy_state)
    kl_now = float(s.history[-1].get("kl", 0.0))
    first = s.rm is None  # no warm-up: the first labels train the first reward model
    fresh = pd.read_parquet(s.work.pairs)
    wrong = np.zeros(len(fresh), dtype=bool)  # fresh pairs the current RM ranks the other way
    disagree = None
    if lp.rm_update_disagreement is not None and not first and len(fresh) and lp.labeler != "reward_model":
        model, tok = load_scorer(s.rm, cfg.model.trust_remote_code)
        wrong = ~pair_correct(model, tok, fresh["prompt"], fresh["chosen"], fresh["rejected"])
        del model
        disagree = float(wrong.mean())
        ctx.metrics["rm_fresh_disagreement"] = disagree
    stalled = None if lp.rm_update_plateau is None or first else plateau(
        s.iterations_log, lp.rm_update_plateau, lp.rm_update_plateau_margin, policy.last_update_iteration)
    forced = (s.force_rm_refresh or first or (disagree is not None and disagree > lp.rm_update_disagreement)
              or stalled is not None)
    due, reason = policy.should_update(ctx.iteration, policy.kl_since_last(kl_now), forced=forced)
    if first:
        reason = "first reward model (no warm-up)"
    elif due and stalled and not s.force_rm_refresh and not (disagree is not None
                                                              and disagree > lp.rm_update_disagreement):
        reason = stalled
    elif due and disagree is not None and disagree > lp.rm_update_disagreement and not s.force_rm_refresh:
        reason = (f"adversarial: the RM ranks {disagree:.0%} of the fresh {lp.labeler} labels the other way "
                  f"(> loop.rm_update_disagreement={lp.rm_update_disagreement:g})")
    if not due or len(fresh) < 4:
        s.work.rm_update_reason = reason if not due else f"due ({reason}) but too few fresh pairs ({len(fresh)})"
        ctx.metrics["rm_updated"] = 0.0
        return
    rng = np.random.default_rng(cfg.seed * 31 + ctx.iteration)
    if lp.labeler == "reward_model":
        # The fresh labels are this RM's own rankings: held out, the old RM would score 1.0 on them by
        # construction. Judge old vs new on the independent held-out seed pairs instead, and train on all.
        val = pd.read_parquet(s.data["heldout_pairs"]) if "heldout_pairs" in s.data else fresh.iloc[:0]
        train = fresh
    else:
        idx = rng.permutation(len(fresh))
        n_val = max(2, int(round(len(fresh) * lp.rm_heldout_fraction)))
        val, train = fresh.iloc[idx[:n_val]], fresh.iloc[idx[n_val:]]
        hard = train[wrong[idx[n_val:]]]
        if lp.rm_hard_pair_repeat > 1 and len(hard):  # the pairs the old RM got wrong, seen more often
            train = pd.concat([train] + [hard] * (lp.rm_hard_pair_repeat - 1))
            ctx.metrics["rm_hard_pairs"] = len(hard)
    adv = pd.read_parquet(s.adversarial_pairs) if s.adversarial_pairs else None
    if adv is not None and len(adv):  # what fooled the last RM, seen rm_adversarial_repeat times
        model, tok = load_scorer(s.rm, cfg.model.trust_remote_code)
        ctx.metrics["rm_adversarial_accuracy_before"] = float(np.mean(pair_correct(
            model, tok, adv["prompt"], adv["chosen"], adv["rejected"])))
        del model
        train = pd.concat([train] + [adv] * lp.rm_adversarial_repeat)
        ctx.metrics["rm_adversarial_pairs"] = len(adv)
    store = pd.read_parquet(ctx.run_dir / STORE)
    old = store[~store["pair_id"].isin(fresh["pair_id"])]
    ratio = lp.rm_replay_ratio
    n_replay = min(len(old), int(round(len(train) * ratio / max(1e-9, 1 - ratio)))) if ratio > 0 else 0
    replay = old.iloc[rng.choice(len(old), n_replay, replace=False)] if n_replay else old.iloc[:0]
    mix = write_table(pd.concat([train, replay]).reset_index(drop=True), ctx.dir / "train_mix.parquet")
    val_path = write_table(val.reset_index(drop=True), ctx.dir / "fresh_val.parquet")

    def judged(rm_path: str) -> np.ndarray:  # per held-out pair: does this RM rank it like the labeler?
        model, tok = load_scorer(rm_path, cfg.model.trust_remote_code)
        return pair_correct(model, tok, val["prompt"], val["chosen"], val["rejected"])

    out = ctx.dir / "rm"
    init = (s.init_rm or s.sft_policy) if first else s.rm
    # The stage scores the held-out pairs with the new RM and, before training, with the one it continues
    # from (the old RM): the acceptance check below reads both verdicts instead of loading each RM again.
    meta = train_stage(ctx, "reward", inputs={"reward_model": init, "data": str(mix)}, output=out,
                       extra={"heldout": str(val_path) if len(val) else None, "score_init": not first})
    scored = meta["metrics"]
    new_ok = np.asarray(scored["heldout_correct"], dtype=bool) if len(val) else np.array([])
    new_acc = float(np.mean(new_ok)) if len(val) else float("nan")
    if first or not len(val):
        old_acc, se, keep_new = float("nan"), float("nan"), True
        why = ("no previous reward model to compare with" if first else
               "kept without a check: no independent held-out pairs (the fresh labels are this RM's own)")
    else:
        # Absent when the new RM has another number of members than the old one (ensemble size changed).
        old_ok = (np.asarray(scored["init_heldout_correct"], dtype=bool) if "init_heldout_correct" in scored
                  else judged(s.rm))
        old_acc, se = float(np.mean(old_ok)), paired_accuracy_se(old_ok, new_ok)
        keep_new, why = accept_new_rm(old_acc, new_acc, lp.rm_accuracy_tolerance, se, lp.rm_accuracy_z)
    if adv is not None and len(adv):
        model, tok = load_scorer(str(out), cfg.model.trust_remote_code)
        ctx.metrics["rm_adversarial_accuracy_after"] = float(np.mean(pair_correct(
            model, tok, adv["prompt"], adv["chosen"], adv["rejected"])))
        del model
    s.adversarial_pairs = ""
    policy.mark_updated(ctx.iteration, kl_now)
    s.rm = ctx.artifact("reward_model", out) if keep_new else s.rm
    s.rm_policy_state, s.force_rm_refresh = policy.state_dict(), False
    s.work.rm_update_reason = f"{reason}; {why}"
    ctx.metrics.update({"rm_updated": 1.0, "rm_kept_new": float(keep_new), "rm_old_accuracy": old_acc,
                        "rm_new_accuracy": new_acc, "rm_accuracy_se": se, "rm_train_pairs": len(train),
                        "rm_replay_pairs": n_replay})


def new_kl_controller(cfg) -> KLController:
    """The KL controller the loop starts with: loop.kl.beta is its beta (fixed) or initial beta (adaptive)."""
    k = cfg.loop.kl
    if k.controller == "adaptive":
        return make_kl_controller("adaptive", init_beta=k.beta, target=k.target, horizon=k.horizon,
                                  min_beta=k.min_beta, max_beta=k.max_beta)
    return make_kl_controller("fixed", beta=k.beta, min_beta=0.0, max_beta=k.max_beta)


def policy_update(ctx) -> None:
    """PPO, RLOO or GRPO against the RM with beta from the KL controller, or DPO on the pairs: a candidate policy."""
    cfg, s = ctx.cfg, ctx.state
    lp, n_iter = cfg.loop, max(1, cfg.loop.iterations)
    kl = KLController.from_state_dict(s.kl_state)
    # loop.kl.beta (through the controller and its schedule) is PPO's kl_coef and DPO's beta.
    beta = BetaSchedule(lp.kl.schedule, lp.kl.start_mult, lp.kl.end_mult, n_iter).effective_beta(kl, ctx.iteration)
    lr_scale = s.lr_scale * LRSchedule(lp.lr_schedule, 1.0, lp.lr_end_mult, n_iter).lr_multiplier(ctx.iteration)
    s.work.beta, s.work.lr_scale = beta, lr_scale
    out, extra = ctx.dir / "policy", {"beta": beta, "lr_scale": lr_scale}
    try:
        if lp.policy_update in ("ppo", "rloo", "grpo"):  # online RL against the reward model
            if s.rm is None:
                raise AbandonIteration(f"no reward model yet: iteration {ctx.iteration} gave too few labelled "
                                       "pairs to train the first one", metrics={"skipped": 1.0})
            extra.update(ensemble_reduce=lp.ensemble_reduce, ensemble_lambda=lp.ensemble_lambda)
            meta = train_stage(ctx, str(lp.policy_update), inputs={"policy": s.policy, "ref": s.ref,
                               "reward_model": s.rm, "data": s.work.prompts}, output=out, extra=extra)
        elif lp.policy_update == "rejection_sampling":  # SFT on the RM's best collected completion per prompt
            if s.rm is None:
                raise AbandonIteration(f"no reward model yet: iteration {ctx.iteration} gave too few labelled "
                                       "pairs to train the first one", metrics={"skipped": 1.0})
            best = best_of_n(pd.read_parquet(s.work.completions), s.rm, lp.ensemble_reduce, lp.ensemble_lambda,
                             cfg.model.trust_remote_code)
            data = write_table(best, ctx.dir / "best_of_n.parquet")
            ctx.metrics.update(best_of_n_score=float(best["rm_score"].mean()), best_of_n_ended=float(best["ended"].mean()),
                               best_of_n_prompts=len(best))
            meta = train_stage(ctx, "rejection_sampling", inputs={"policy": s.policy, "data": str(data)}, output=out,
                               extra=extra)
        else:
            data = s.data["offline_pairs"] if lp.dpo_data == "offline" else s.work.pairs
            ref = s.policy if lp.dpo_reference == "policy" else s.ref
            meta = train_stage(ctx, "dpo", inputs={"policy": s.policy, "ref": ref, "data": data}, output=out,
                               extra=extra)
    except FloatingPointError as e:
        raise AbandonIteration(f"policy update diverged: {e}", metrics={"diverged": 1.0}) from e
    s.work.candidate = ctx.artifact("checkpoint", out)
    ctx.metrics.update({**scalars(meta["metrics"]), "beta": beta, "lr_scale": lr_scale, "wall_s": meta["wall_s"]})


def best_of_n(completions: pd.DataFrame, rm, reduce: str, lam: float, trust_remote_code: bool = False) -> pd.DataFrame:
    """Per prompt, the collected completion the reward model (an ensemble reduced as in PPO) scores best;
    one that ended with EOS beats one cut off at the length limit whatever their scores (PPO penalises
    the latter; SFT on it would teach the policy not to stop), and an empty one never wins."""
    model, tok = load_scorer(rm, trust_remote_code)
    reward = reward_scores(model, tok, completions["prompt"].tolist(), completions["completion"].tolist(), reduce, lam)
    del model
    return best_per_prompt(completions.assign(rm_score=reward), "prompt_id")


def evaluate(ctx) -> None:
    """The candidate on the frozen evaluation prompts (the last good samples re-scored by the current RM)."""
    s, good = ctx.state, ctx.state.last_good
    # The RM unchanged since the last good policy was evaluated: its samples' score under it is known.
    known = good.eval.get("proxy") if s.rm is not None and s.rm == good.rm else None
    record, s.work.eval_samples = evaluate_into(ctx, s.work.candidate, s.rm, baseline_samples=good.samples,
                                                baseline_proxy=known, fresh_pairs=s.work.pairs or None)
    oracle = gate_oracle(ctx.cfg)
    if oracle != "gold" and "win_rate" in record:  # the gold head-to-head stays on record, for measuring the judge
        record["gold_win_rate"] = record.pop("win_rate")
    if oracle in ("judge", "heldout_rm") and ctx.cfg.loop.min_win_rate is not None and good.samples:
        record.update(judge_head_to_head(ctx, s.work.eval_samples, good.samples))
        write_json_atomic(ctx.dir / "eval.json", record)
    s.work.eval = record
    ctx.metrics.update(scalars(record))


def gate(ctx) -> None:
    """Detectors vote and the candidate must not lose head-to-head; accept it, or roll back and remedy."""
    cfg, s = ctx.cfg, ctx.state
    lp, w, last_good = cfg.loop, s.work, s.last_good
    if w.abandoned:
        current = {"iteration": ctx.iteration, "abandoned": w.abandoned}
        decision = GateDecision(False, [f"abandoned: {w.abandoned}"],
                                [Verdict("abandoned", True, w.abandoned, w.abandon_remedies[0])], w.abandon_remedies)
    else:
        current = dict(w.eval)
        baseline = dict(last_good.eval)
        if "baseline_proxy" in current:
            baseline["proxy"] = current["baseline_proxy"]
        gate_ = Gate(build_detectors([dict(d) for d in lp.detectors]), min_win_rate=lp.min_win_rate,
                     vote=_vote(lp.gate_vote))
        # A gate whose oracle is not gold is blind to gold, also on the testbed where it exists: the record
        # keeps it for reporting, the detectors do not see it.
        blind = (lambda r: {k: v for k, v in r.items() if k not in GOLD_KEYS}) if gate_oracle(cfg) != "gold" else dict
        decision = gate_.decide(blind(current), blind(baseline), [blind(h) for h in s.history])
    skipped = [f"{v.name} ({v.reason})" for v in decision.verdicts if v.skipped]
    if lp.min_win_rate is not None and current.get("h2h_decision") == "skipped" and not w.abandoned:
        skipped.append(current["h2h_reason"])
    elif lp.min_win_rate is not None and current.get("win_rate") is None and not w.abandoned:
        oracle = gate_oracle(cfg)
        skipped.append("head-to-head (loop.gate.oracle=none)" if oracle == "none" else
                       current.get("h2h_reason", "head-to-head") if oracle in ("judge", "heldout_rm") else
                       "head-to-head (no win rate: the task has no gold to judge it; set loop.judge.model or "
                       "loop.judge.url for an LLM judge)")
    previous = s.iterations_log[-1].get("skipped_checks") if s.iterations_log else None
    if skipped and skipped != previous:
        log.warning("gate: skipped checks: %s", "; ".join(skipped))
    entry = {"iteration": ctx.iteration, "gold": current.get("gold"), "proxy": current.get("proxy"),
             "kl": current.get("kl"), "length": current.get("length"), "entropy": current.get("entropy"),
             "win_rate": current.get("win_rate"), **{k: current[k] for k in JUDGE_FIELDS if k in current},
             "beta": w.beta, "lr_scale": w.lr_scale,
             "rm_update": w.rm_update_reason, "policy": w.candidate, "skipped_checks": skipped}
    if decision.accepted:
        kl = KLController.from_state_dict(s.kl_state)
        if math.isfinite(current.get("kl", float("nan"))):
            kl.update(current["kl"], cfg.stage.ppo.total_episodes)
        s.policy, s.kl_state = w.candidate, kl.state_dict()
        s.last_good = LastGood(iteration=ctx.iteration, policy=w.candidate, rm=s.rm, kl_state=s.kl_state,
                               rm_policy_state=s.rm_policy_state, cursor=s.cursor, lr_scale=s.lr_scale,
                               eval=current, samples=w.eval_samples)
        s.history.append(current)
        entry.update(status="accepted", reasons=decision.reasons)
        ctx.metrics["accepted"] = 1.0
    else:
        # Roll back: policy, RM, controller states and data cursor of the last good state, then remedy. The
        # remedies act on the settings the rejected candidate was trained with, so they compound over
        # consecutive rollbacks (beta 0.02 -> 0.04 -> ...): a retry with the same settings would train the
        # same candidate again (same prompts from the restored cursor, same seed).
        tried_kl, tried_lr = dict(s.kl_state), s.lr_scale
        s.restore(last_good)
        kl = KLController.from_state_dict(tried_kl)
        s.lr_scale, force_rm, applied = apply_remedies(decision.remedies, kl, tried_lr,
                                                       beta_factor=lp.beta_remedy_factor, lr_factor=lp.lr_remedy_factor)
        if "raise_beta" in decision.remedies and kl.beta < lp.kl.remedy_min_beta:
            floor = kl.state_dict()
            floor["beta"] = lp.kl.remedy_min_beta
            kl.load_state_dict(floor)
            applied = sorted(set(applied) | {"raise_beta"})
        s.kl_state, s.force_rm_refresh, s.n_rollbacks = kl.state_dict(), force_rm, s.n_rollbacks + 1
        if lp.rm_adversarial_repeat > 0 and not w.abandoned and w.eval_samples and last_good.samples:
            adv = adversarial_pairs(ctx, w.eval_samples, last_good.samples)
            if adv is not None and len(adv):
                s.adversarial_pairs = str(write_table(adv, ctx.dir / "adversarial_pairs.parquet"))
                s.force_rm_refresh = True  # the RM was fooled: refresh it on what fooled it
                entry["adversarial_pairs"] = len(adv)
                applied = sorted(set(applied) | {"refresh_rm"})
        fired = [v.name for v in decision.fired] or ["head_to_head"]
        entry.update(status="rolled_back", reasons=decision.reasons, remedies=applied,
                     restored_iteration=last_good.iteration)
        ctx.rollbacks.append({"detector": ",".join(fired), "reason": "; ".join(decision.reasons),
                              "restored_iteration": last_good.iteration, "remedy": ",".join(applied) or "none"})
        ctx.metrics["accepted"] = 0.0
    s.iterations_log.append(entry)
    ctx.iteration_status = {"status": entry["status"], "summary": entry}


def _vote(v: str):
    return int(v) if str(v).isdigit() else v

