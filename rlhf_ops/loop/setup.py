"""Setup steps of the loop, run once: the task's data and the initial model (prepare), SFT, the
reward-model warm-up, the baseline evaluation; and `ppo_once` / `dpo_once` for the stages_once chain.

Each step changes `ctx.state` and writes only inside its fresh `ctx.dir`; a crash mid-step leaves
that directory to be moved aside on resume, never read.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from ..artifacts import write_table
from ..formats import has_chat_template, render_column
from ..models import (build_tiny_policy, build_tiny_reward, check_checkpoint_dir, copy_with_distinct_pad,
                      load_tokenizer, needs_distinct_pad, save_model, train_tokenizer)
from ..tasks import make_task
from .common import evaluate_into, rm_policy_kwargs, scalars, train_stage
from .judging import gate_oracle
from .state import LastGood

log = logging.getLogger(__name__)


def prepare(ctx) -> None:
    """The task's tables, rendered for the model (chat template), and the initial model checkpoint."""
    m, s = ctx.cfg.model, ctx.state
    task = make_task(ctx.cfg.task)
    task.check()
    td = task.load(ctx.cfg.seed)
    if m.path:
        check_checkpoint_dir(m.path, "model.path")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(m.path, trust_remote_code=m.trust_remote_code)
        s.init_policy = m.path
        if needs_distinct_pad(tok):
            log.warning("%s", copy_with_distinct_pad(m.path, ctx.dir / "init_policy", m.trust_remote_code))
            s.init_policy = str(ctx.dir / "init_policy")
            tok = load_tokenizer(s.init_policy, m.trust_remote_code)
    else:
        tok = train_tokenizer(td.corpus, m.vocab_size)
        save_model(build_tiny_policy(m, tok, ctx.cfg.seed), tok, ctx.dir / "init_policy")
        s.init_policy = str(ctx.dir / "init_policy")
        if m.reward_init == "scratch":
            save_model(build_tiny_reward(m, tok, ctx.cfg.seed + 1), tok, ctx.dir / "init_rm")
            s.init_rm = str(ctx.dir / "init_rm")
    wrap = m.apply_chat_template and has_chat_template(tok)
    if wrap:
        log.warning("prompts are rendered with the chat template of %s (model.apply_chat_template=false: verbatim)",
                    s.init_policy)
    src = td.sources.get("prompts", "prompts")
    tables = {"prompts_train": render_column(td.train_prompts, tok, wrap=wrap, path=src),
              "prompts_gold_eval": render_column(td.eval_prompts, tok, wrap=wrap,
                                                 path=td.sources.get("eval_prompts", src))}
    for key, df, source in (("sft_demos", td.sft, "sft"), ("offline_pairs", td.pairs, "pairs"),
                            ("heldout_pairs", td.heldout_pairs, "pairs"), ("anchors", td.anchors, "anchors")):
        if df is not None:
            tables[key] = render_column(df, tok, wrap=wrap, path=td.sources.get(source, source))
    s.data = {key: ctx.artifact("dataset", write_table(df, ctx.dir / f"{key}.parquet")) for key, df in tables.items()}
    s.cursor = 0
    # Every prompt must leave room for a response in the policy's context: fail here, naming the file
    # and row, not in the first policy update after an iteration of generation and labelling.
    from ..stages.ppo import _max_prompt_tokens, check_prompt_lengths

    limit = _max_prompt_tokens(s.init_policy, asdict(ctx.cfg.stage.ppo))
    for key, source in (("prompts_train", "prompts"), ("prompts_gold_eval", "eval_prompts")):
        t = tables[key]
        origin = [f"prompt_id {pid} of {td.sources.get(source, src)}" for pid in t["prompt_id"]]
        check_prompt_lengths(t["prompt"].tolist(), tok, limit, s.data[key], origin)
    if "offline_pairs" in tables and "rm_warmup" in ctx.cfg.loop.setup:  # all too long: the warm-up would train on none
        from ..stages.reward import check_pairs_fit

        check_pairs_fit(tables["offline_pairs"], tok, ctx.cfg.stage.reward.max_length,
                        f"{td.sources.get('pairs', 'the seed pairs')} (rendered for {s.init_policy})")
    ctx.metrics.update({"n_train_prompts": len(tables["prompts_train"]),
                        "n_eval_prompts": len(tables["prompts_gold_eval"]),
                        "n_sft_demos": len(td.sft) if td.sft is not None else 0,
                        "n_seed_pairs": len(td.pairs) if td.pairs is not None else 0})
    if td.sft is not None and "gold" in td.sft.columns:
        ctx.metrics["sft_demo_gold"] = float(td.sft["gold"].mean())


def sft(ctx) -> None:
    s = ctx.state
    if "sft_demos" not in s.data:
        log.warning("no SFT data (task.sft): the model %s is taken as already fine-tuned", s.init_policy)
        s.sft_policy = s.policy = s.ref = s.init_policy
        ctx.metrics["skipped"] = 1.0
        return
    out = ctx.dir / "policy"
    meta = train_stage(ctx, "sft", inputs={"policy": s.init_policy, "data": s.data["sft_demos"]}, output=out)
    s.sft_policy = s.policy = s.ref = ctx.artifact("checkpoint", out)
    _record_stage(ctx, meta)


def rm_warmup(ctx) -> None:
    s = ctx.state
    if "offline_pairs" not in s.data:
        log.warning("no seed pairs (task.pairs): no reward-model warm-up; the first iteration's labels "
                    "train the first reward model")
        s.rm = None
        ctx.metrics["skipped"] = 1.0
        return
    out, data = ctx.dir / "rm", s.data["offline_pairs"]
    g = ctx.cfg.loop.gate
    if gate_oracle(ctx.cfg) == "heldout_rm" and not g.reward_model:
        # The gate's RM and the proxy RM learn from disjoint seed pairs, so the policy cannot have
        # learned the gate RM's quirks by optimizing the proxy's.
        import numpy as np
        import pandas as pd

        pairs = pd.read_parquet(data)
        idx = np.random.default_rng(ctx.cfg.seed + 17).permutation(len(pairs))
        n_gate = int(round(len(pairs) * g.rm_share))
        gate_data = write_table(pairs.iloc[np.sort(idx[:n_gate])].reset_index(drop=True), ctx.dir / "gate_rm_pairs.parquet")
        data = str(write_table(pairs.iloc[np.sort(idx[n_gate:])].reset_index(drop=True), ctx.dir / "proxy_rm_pairs.parquet"))
        train_stage(ctx, "reward", inputs={"reward_model": s.init_rm or s.sft_policy, "data": str(gate_data)},
                    output=ctx.dir / "gate_rm", extra={"heldout": s.data.get("heldout_pairs")})
        s.gate_rm = ctx.artifact("reward_model", ctx.dir / "gate_rm")
        ctx.metrics.update({"gate_rm_pairs": n_gate, "proxy_rm_pairs": len(pairs) - n_gate})
    elif gate_oracle(ctx.cfg) == "heldout_rm":
        s.gate_rm = g.reward_model
    meta = train_stage(ctx, "reward", inputs={"reward_model": s.init_rm or s.sft_policy, "data": data},
                       output=out, extra={"heldout": s.data.get("heldout_pairs")})
    s.rm = ctx.artifact("reward_model", out)
    _record_stage(ctx, meta)


def baseline(ctx) -> None:
    """Evaluate the SFT policy: the first 'last good' state every later iteration is judged against."""
    from ..control.rm_update_policy import RMUpdatePolicy
    from .iteration import new_kl_controller

    s = ctx.state
    record, samples = evaluate_into(ctx, s.sft_policy, s.rm)
    s.kl_state = new_kl_controller(ctx.cfg).state_dict()
    s.rm_policy_state = RMUpdatePolicy(**rm_policy_kwargs(ctx.cfg)).state_dict()
    s.lr_scale, s.force_rm_refresh, s.n_rollbacks = 1.0, False, 0
    s.last_good = LastGood(iteration=-1, policy=s.sft_policy, rm=s.rm, kl_state=s.kl_state,
                           rm_policy_state=s.rm_policy_state, cursor=0, lr_scale=1.0, eval=record, samples=samples)
    s.history, s.baseline_eval, s.iterations_log = [record], record, []
    ctx.metrics.update(scalars(record))


def ppo_once(ctx) -> None:
    s, lp = ctx.state, ctx.cfg.loop
    out = ctx.dir / "policy"
    meta = train_stage(ctx, "ppo", inputs={"policy": s.sft_policy, "reward_model": s.rm, "data": s.data["prompts_train"]},
                       output=out, extra={"ensemble_reduce": lp.ensemble_reduce, "ensemble_lambda": lp.ensemble_lambda})
    s.outputs["ppo_policy"] = ctx.artifact("checkpoint", out)
    _record_stage(ctx, meta)


def dpo_once(ctx) -> None:
    s = ctx.state
    out = ctx.dir / "policy"
    meta = train_stage(ctx, "dpo", inputs={"policy": s.sft_policy, "data": s.data["offline_pairs"]}, output=out)
    s.outputs["dpo_policy"] = ctx.artifact("checkpoint", out)
    _record_stage(ctx, meta)


def _record_stage(ctx, meta: dict) -> None:
    """The stage's metrics for the ledger, and its facts for summary.json."""
    m = meta["metrics"]
    ctx.metrics.update(scalars(m))
    ctx.state.stage_meta[ctx.step] = {
        "wall_s": meta["wall_s"], "output": meta["output"], "final_loss": m.get("final_loss", m.get("loss/policy_avg")),
        "metrics": {k: v for k, v in scalars(m).items() if "/" not in k or k.startswith(("objective", "loss"))}}
