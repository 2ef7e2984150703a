"""The loop's LLM judge: building it from `loop.judge`, the requests it is shown, and the gate's
head-to-head test of a candidate against the last good policy without gold (docs/judge.md)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd

from ..control.ab_test import BettingCS, length_controlled_win_rate, sequential_decision
from ..labelers.judge import DEFAULT_RUBRIC, DEFAULT_TEMPLATE, make_judge, question_text

log = logging.getLogger(__name__)


def judge_configured(cfg) -> bool:
    return bool(cfg.loop.judge.model or cfg.loop.judge.url)


def gate_oracle(cfg) -> str:
    """gold | judge | none: who judges the head-to-head (`auto` resolved)."""
    o = str(cfg.loop.gate.oracle)
    if o == "auto":
        return "judge" if judge_configured(cfg) else "gold"
    return o


def judge_settings(jc) -> SimpleNamespace:
    """loop.judge (a dataclass or a DictConfig) with the built-in rubric and template filled in."""
    keys = ("model", "url", "model_name", "api_key_env", "rubric", "template", "tie_margin", "batch_size",
            "timeout_s", "retries", "concurrency")
    out = SimpleNamespace(**{k: getattr(jc, k) for k in keys})
    out.rubric, out.template = out.rubric or DEFAULT_RUBRIC, out.template or DEFAULT_TEMPLATE
    return out


def loop_judge(ctx, probe: bool = False):
    return make_judge(judge_settings(ctx.cfg.loop.judge), run_dir=ctx.run_dir, trust_remote_code=ctx.cfg.model.trust_remote_code,
                      probe=probe)


def questions(table: pd.DataFrame) -> list[str]:
    """The request the judge sees for each row of a rendered prompt table: the user's own prompt
    (`prompt_source`), not the chat-template rendering the policy was given."""
    src = table["prompt_source"] if "prompt_source" in table.columns else table["prompt"]
    return [question_text(str(s)) for s in src]


def head_to_head(judge, gate_cfg, threshold: float, cand: pd.DataFrame, base: pd.DataFrame, qs: list[str],
                 seed: int) -> dict:
    """The candidate's samples against the last good policy's, row by row (same prompt, same sample
    slot), in a seeded random order, in batches; the sequential test may stop after any batch once
    `min_comparisons` are in. Returns the record fields the gate reads (h2h_decision, h2h_reason)
    and the figures (win rate, its confidence sequence, LC win rate, judge calls, ties, position bias)."""
    if len(cand) != len(base) or not (cand["prompt"].to_numpy() == base["prompt"].to_numpy()).all():
        return {"h2h_decision": "skipped", "h2h_reason": "head-to-head skipped: the candidate's and the last good "
                "policy's evaluation samples are not on the same prompts"}
    order = np.random.default_rng(seed).permutation(len(cand))[:gate_cfg.max_comparisons]
    cs = BettingCS(alpha=gate_cfg.alpha)
    calls0, cached0 = judge.calls, judge.cached
    p, soft, dlen, ties, identical, bias, decision = [], [], [], 0, 0, [], None
    for start in range(0, len(order), gate_cfg.batch):
        rows = order[start:start + gate_cfg.batch]
        items = [(qs[int(cand["prompt_index"].iloc[i])], str(cand["completion"].iloc[i]), str(base["completion"].iloc[i]))
                 for i in rows]
        for i, (item, v) in zip(rows, zip(items, judge.compare(items))):
            same = item[1] == item[2]
            x = 0.5 if same else (v.p_a if gate_cfg.outcome == "soft" else v.outcome)  # the same text cannot win
            p.append(x)
            soft.append(0.5 if same else v.p_a)
            ties += int(v.tie and not same)  # the judge's ties; an identical pair is no verdict of the judge's
            identical += int(same)
            bias.append(v.position_bias)
            dlen.append(float(cand["words"].iloc[i]) - float(base["words"].iloc[i]))
            cs.update(x)
        judged = len(p) - identical
        if (gate_cfg.test == "sequential" and len(p) >= gate_cfg.min_comparisons
                and ties <= gate_cfg.max_tie_rate * judged):
            decision = sequential_decision(cs, threshold)
            if decision:
                break
    wr = float(np.mean(p))
    lc, slope = length_controlled_win_rate(np.array(p), np.array(dlen))  # on the scores the test used
    n = len(p)
    out = {"win_rate": wr, "win_rate_lo": cs.lo, "win_rate_hi": cs.hi, "win_rate_lc": lc, "judge_length_slope": slope,
           "win_rate_soft": float(np.mean(soft)),
           "judge_comparisons": n, "judge_calls": judge.calls - calls0, "judge_cached": judge.cached - cached0,
           "judge_tie_rate": ties / (n - identical) if n > identical else 0.0, "identical_pairs": identical, "judge_position_bias": float(np.mean(bias)),
           "length_delta": float(np.mean(dlen))}
    ci = f"[{cs.lo:.3f}, {cs.hi:.3f}]"
    who = "held-out RM" if str(getattr(judge, "id", "")).startswith("rm:") else "judge"
    if decision == "lost":
        out.update(h2h_decision="lost", h2h_reason=f"lost head-to-head ({who}): win rate {wr:.3f}, {1 - gate_cfg.alpha:.0%} "
                   f"confidence sequence {ci} below {threshold:.3g} after {n} comparisons (sequential, stopped early)")
    elif decision == "pass":
        out.update(h2h_decision="pass", h2h_reason=f"head-to-head ({who}): win rate {wr:.3f}, confidence sequence {ci} "
                   f"above {threshold:.3g} after {n} comparisons (sequential)")
    else:
        basis = "fixed test" if gate_cfg.test == "fixed" else "sequential test undecided at the comparison budget"
        lost = wr < threshold
        out.update(h2h_decision="lost" if lost else "pass",
                   h2h_reason=f"{'lost head-to-head' if lost else 'head-to-head'} ({who}): win rate {wr:.3f} "
                   f"{'<' if lost else '>='} {threshold:.3g} over {n} comparisons, confidence sequence {ci} ({basis}: "
                   "the point estimate decides)")
    if out["judge_tie_rate"] > gate_cfg.max_tie_rate:
        out.update(h2h_decision="skipped", h2h_reason=(
            f"head-to-head skipped: the {who} called {out['judge_tie_rate']:.0%} of {n} comparisons a tie (more than "
            f"loop.gate.max_tie_rate={gate_cfg.max_tie_rate:g}; position bias {out['judge_position_bias']:+.2f}): it "
            "cannot tell the two policies apart"))
        return out
    if (gate_cfg.length_controlled and out["h2h_decision"] == "pass" and np.isfinite(lc) and lc < threshold
            and out["length_delta"] > 0):
        out.update(h2h_decision="length", h2h_reason=(
            f"wins by length ({who}): win rate {wr:.3f} but length-controlled {lc:.3f} < {threshold:.3g}, the candidate "
            f"{out['length_delta']:+.1f} words longer on average (length slope {slope:.2f})"))
    return out


class RMJudge:
    """A reward model as the head-to-head's judge: P(a over b) = sigmoid(r(a) - r(b)) (Bradley-Terry), on
    the rendered prompt the RM was trained on. Deterministic, so the order does not matter."""

    def __init__(self, path: str, trust_remote_code: bool = False):
        from ..scoring import load_scorer

        self.model, self.tok = load_scorer(path, trust_remote_code)
        self.id, self.calls, self.cached = f"rm:{path}", 0, 0

    def compare(self, items):
        from ..labelers.judge import Comparison
        from ..scoring import member_scores

        prompts = [q for q, _, _ in items]
        sa = member_scores(self.model, self.tok, prompts, [a for _, a, _ in items]).mean(-1)
        sb = member_scores(self.model, self.tok, prompts, [b for _, _, b in items]).mean(-1)
        self.calls += 2 * len(items)
        p = 1 / (1 + np.exp(-(sa - sb)))
        return [Comparison(float(x), float(x), float(1 - x), tie=bool(a == b)) for x, a, b in zip(p, sa, sb)]


def judge_head_to_head(ctx, cand_samples: str, base_samples: str) -> dict:
    cfg = ctx.cfg
    table = pd.read_parquet(ctx.state.data["prompts_gold_eval"])
    if gate_oracle(cfg) == "heldout_rm":
        judge, qs = RMJudge(ctx.state.gate_rm, cfg.model.trust_remote_code), table["prompt"].tolist()
    else:
        judge, qs = loop_judge(ctx), questions(table)
    out = head_to_head(judge, cfg.loop.gate, cfg.loop.min_win_rate, pd.read_parquet(cand_samples),
                       pd.read_parquet(base_samples), qs, seed=cfg.seed * 7919 + ctx.iteration)
    if "judge_calls" in out:
        log.info("iteration %d: %s (%d judge calls, %d cached)", ctx.iteration, out["h2h_reason"],
                 out["judge_calls"], out["judge_cached"])
    return out
