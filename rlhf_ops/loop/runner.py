"""Run (or resume) an experiment's loop: the graph declared in conf/loop/, the run lock, the
ledger, the console lines, metrics.jsonl and summary.json.

    python -m rlhf_ops +experiment=quickstart run_dir=runs/qs    # re-run the same to resume
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..artifacts import write_json_atomic
from ..faults import maybe_die
from ..graph import Graph, GraphConfigError, Node, Runner, Schedule
from ..ledger import Ledger
from ..runlock import RunLock
from ..tracking import Tracker, scrub_secrets
from . import iteration_ops, retention, setup_ops

log = logging.getLogger(__name__)

OPS = {
    "prepare": setup_ops.prepare, "sft": setup_ops.sft, "rm_warmup": setup_ops.rm_warmup,
    "baseline": setup_ops.baseline, "ppo_once": setup_ops.ppo_once, "dpo_once": setup_ops.dpo_once,
    "collect": iteration_ops.collect, "label": iteration_ops.label, "rm_update": iteration_ops.rm_update,
    "policy_update": iteration_ops.policy_update, "evaluate": iteration_ops.evaluate, "gate": iteration_ops.gate,
    "prune": retention.prune,
}


def plain_config(cfg: DictConfig) -> dict:
    """The resolved run config without Hydra's own node."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def build_graph(cfg: dict) -> Graph:
    nodes = []
    for phase, specs in (("setup", cfg["loop"]["setup"]), ("iteration", cfg["loop"]["nodes"])):
        for spec in specs:
            op = spec.get("op") or spec["name"]
            if op not in OPS:
                raise GraphConfigError(f"loop node '{spec['name']}': unknown op '{op}' (known: {sorted(OPS)})")
            sch = spec.get("schedule") or {}
            schedule = Schedule(kind=sch.get("kind", "always"), every=sch.get("every", 1), offset=sch.get("offset", 0),
                                freeze=[tuple(w) for w in sch.get("freeze", [])], trigger=sch.get("trigger"))
            nodes.append(Node(spec["name"], fn=_with_faults(OPS[op], cfg), inputs=list(spec.get("inputs", [])),
                              outputs=list(spec.get("outputs", [])), schedule=schedule, phase=phase))
    return Graph(nodes)


def _with_faults(op, cfg: dict):
    def fn(ctx):
        maybe_die(ctx.iteration, ctx.node, "before")
        updates = op(ctx, cfg)
        maybe_die(ctx.iteration, ctx.node, "after")
        return updates

    return fn


def _console(ctx, updates: dict) -> None:
    tag = "setup" if ctx.iteration < 0 else f"iter {ctx.iteration:03d}"
    if ctx.node == "gate" and "iterations_log" in updates:
        e = updates["iterations_log"][-1]
        why = "" if e["status"] == "accepted" else f" ({'; '.join(e['reasons'])}; remedy: {', '.join(e.get('remedies', [])) or 'none'})"
        print(f"[{tag}] {e['status'].upper():11s} gold={_f(e['gold'])} proxy={_f(e['proxy'])} kl={_f(e['kl'])} "
              f"len={_f(e['length'], 1)} beta={_f(e['beta'])} win={_f(e['win_rate'])}{why}", flush=True)
    else:
        m = updates.get("_metrics", {})
        keys = [k for k in ("gold", "proxy", "kl", "heldout_accuracy", "final_loss", "n_pairs", "rm_updated") if k in m]
        print(f"[{tag}] {ctx.node} done " + " ".join(f"{k}={_f(m[k])}" for k in keys), flush=True)


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _append_metrics(run_dir: Path, ctx, updates: dict) -> None:
    m = updates.get("_metrics") or {}
    if not m:
        return
    row = {"time": time.time(), "iteration": ctx.iteration, "node": ctx.node, **m}
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row, default=float) + "\n")


def write_summary(run_dir: Path, cfg: dict, state: dict, ledger: Ledger, status: str) -> dict:
    stage_rows = ledger.stage_history()
    last_good = state.get("last_good") or {}
    summary = {
        "name": cfg["name"], "loop": cfg["loop"]["name"], "status": status, "run_dir": str(run_dir),
        "seed": cfg["seed"], "stopped_reason": state.get("_stopped"),
        "baseline": state.get("baseline_eval"),
        "iterations": state.get("iterations_log", []),
        "n_rollbacks": state.get("n_rollbacks", 0),
        "rollbacks": ledger.rollbacks(),
        "final": {"iteration": last_good.get("iteration"), "policy": last_good.get("policy") or state.get("policy"),
                  "reward_model": last_good.get("rm") or state.get("rm"), "eval": last_good.get("eval"),
                  "kl_state": state.get("kl_state")},
        "stages": state.get("stage_meta", {}),
        "outputs": {k: state[k] for k in ("sft_policy", "rm", "ppo_policy", "dpo_policy", "policy") if k in state},
        "wall_s": round(sum(r.get("wall_s") or 0 for r in stage_rows if r.get("status") == "done"), 2),
    }
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def run_loop(cfg: DictConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plain = plain_config(cfg)
    graph = build_graph(plain)
    with RunLock(run_dir), Ledger(run_dir) as ledger:
        diffs = ledger.check_config(plain, allow_changed=cfg.allow_config_change)
        for d in diffs:
            log.warning("resuming with a changed config: %s", d)
        run_id = ledger.start_run(plain)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(scrub_secrets(plain))))
        tracker = Tracker.open(run_dir, plain, plain["tracking"]["wandb_mode"])
        runner = Runner(graph, run_dir, ledger, plain["loop"]["iterations"], initial_state={},
                        on_node_end=lambda ctx, up: (_append_metrics(run_dir, ctx, up), _console(ctx, up),
                                                     tracker.log(ctx.iteration, ctx.node, up.get("_metrics") or {})))
        try:
            state = runner.run()
        except BaseException:
            ledger.end_run(run_id, "failed")
            tracker.close("failed")
            raise
        status = "stopped" if state.get("_stopped") else "completed"
        summary = write_summary(run_dir, plain, state, ledger, status)
        ledger.end_run(run_id, status)
        tracker.close(status)
    if status == "stopped":
        print(f"rlhf_ops: paused: {state['_stopped']}", flush=True)
    print(f"rlhf_ops: {status}; summary: {run_dir / 'summary.json'}", flush=True)
    return summary
