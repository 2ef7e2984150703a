"""Run (or resume) an experiment's loop: the recipe in conf/loop/, the run lock, the ledger, the
console lines; and the files derived from the ledger after every step (summary.json, metrics.jsonl,
LATEST_GOOD), so the ledger stays the one record.

    python -m rlhf_ops +experiment=quickstart run_dir=runs/qs    # re-run the same to resume
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .. import console
from ..artifacts import OutputExistsError, write_json_atomic, write_text_atomic
from ..ledger import LEDGER_FILENAME, Ledger
from ..runlock import RunLock
from ..tracking import Tracker, scrub_secrets
from .recipe import SETUP, StepRunner
from .state import LoopState

log = logging.getLogger(__name__)


def plain_config(cfg: DictConfig) -> dict:
    """The resolved run config without Hydra's own node."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def _tag(ctx) -> str:
    return "setup" if ctx.iteration == SETUP else f"iter {ctx.iteration:03d}"


def _console(ctx) -> None:
    tag = _tag(ctx)
    if ctx.step == "gate" and ctx.iteration_status:
        e = ctx.iteration_status["summary"]
        # a skipped head-to-head's win rate (a judge that called everything a tie: 0.5) is no figure
        win = "skipped" if e.get("h2h_decision") == "skipped" else _f(e["win_rate"])
        why = "" if e["status"] == "accepted" else f" ({'; '.join(e['reasons'])}; remedy: {', '.join(e.get('remedies', [])) or 'none'})"
        console.echo(f"[{tag}] {e['status'].upper():11s} gold={_f(e['gold'], none='n/a')} proxy={_f(e['proxy'])} "
                     f"kl={_f(e['kl'])} len={_f(e['length'], 1)} beta={_f(e['beta'])} win={win}{why}")
    else:
        m = ctx.metrics
        keys = [k for k in ("gold", "proxy", "kl", "heldout_accuracy", "final_loss", "n_pairs", "rm_updated",
                            "objective/scores", "objective/kl", "beta", "n_train_prompts", "n_completions", "eos_rate")
                if k in m]
        # the step's peak memory (rlhf_ops.memory): the loop process's, and the largest worker's under a launcher
        mem = [f"{k[:-3]}={ctx.memory[k] / 1024:.2f}GB" for k in ("peak_rss_mb", "peak_rss_worker_mb", "peak_gpu_mb",
                                                                  "peak_gpu_worker_mb") if k in ctx.memory]
        console.echo(" ".join([f"[{tag}] {ctx.step} done"] + [f"{k}={_f(m[k])}" for k in keys] + mem))


def step_log(run_dir: Path, ctx) -> Path:
    """RUN_DIR/logs/<setup|iter_NNN>_<step>.log: outside the step dirs, which are fresh per attempt;
    a retried step appends to its log."""
    return run_dir / "logs" / f"{'setup' if ctx.iteration == SETUP else f'iter_{ctx.iteration:03d}'}_{ctx.step}.log"


def _f(v, digits: int = 3, none: str = "-") -> str:
    return none if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def write_derived(run_dir: Path, cfg: dict, ledger: Ledger, status: str, stopped: str | None = None) -> dict:
    """summary.json, metrics.jsonl and LATEST_GOOD, all from the ledger (its last committed state,
    metrics and rollbacks): rewritten whole after every step, never appended to."""
    last = ledger.last_completed()
    state = LoopState.from_json(last[2]) if last else LoopState()
    stage_rows = ledger.stage_history()
    good = state.last_good
    summary = {
        "name": cfg["name"], "loop": cfg["loop"]["name"], "status": status, "run_dir": str(run_dir),
        "seed": cfg["seed"], "stopped_reason": stopped,
        "baseline": state.baseline_eval,
        "iterations": state.iterations_log,
        "n_rollbacks": state.n_rollbacks,
        "rollbacks": ledger.rollbacks(),
        "final": {"iteration": good.iteration if good else None, "policy": (good.policy if good else None) or state.policy or None,
                  "reward_model": (good.rm if good else None) or state.rm, "eval": good.eval if good else None,
                  "kl_state": state.kl_state or None},
        "stages": state.stage_meta,
        "outputs": {k: v for k, v in (("sft_policy", state.sft_policy), ("rm", state.rm), ("policy", state.policy),
                                      *state.outputs.items()) if v},
        "wall_s": round(sum(r.get("wall_s") or 0 for r in stage_rows if r.get("status") == "done"), 2),
    }
    write_json_atomic(run_dir / "summary.json", summary)
    rows: dict = defaultdict(dict)
    for m in ledger.metrics():
        rows[(m["iteration"], m["node"])].setdefault("time", m["created_at"])
        rows[(m["iteration"], m["node"])][m["key"]] = m["value"]
    for r in stage_rows:  # each finished step's peak memory (its last attempt's) beside its metrics
        if r.get("status") == "done" and r.get("memory"):
            row = rows[(r["iteration"], r["node"])]
            row.setdefault("time", r["ended_at"])
            row.update(r["memory"])
    write_text_atomic(run_dir / "metrics.jsonl", "".join(
        json.dumps({"time": r.pop("time"), "iteration": it, "node": node, **r}) + "\n" for (it, node), r in rows.items()))
    if good:
        write_json_atomic(run_dir / "LATEST_GOOD", asdict(good))
    return summary


# What Hydra writes into its output dir before the job starts (the default run_dir is that dir).
HYDRA_OWN = {".hydra", "cli.log"}
# What only a run writes; found without a ledger, a run dir's progress record is gone.
RUN_OWN = ("setup", "iter_000", "summary.json", "LATEST_GOOD", "preferences")


def claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A run dir is ours when its ledger is there; anything else in it is a user's, or a run's whose
    ledger was lost: refused (nothing there is touched), or with overwrite=true moved aside, said on
    the console, never deleted. Hydra's own files (.hydra/, cli.log) do not count."""
    if not run_dir.is_dir() or (run_dir / LEDGER_FILENAME).exists():
        return
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in HYDRA_OWN and p.name != ".lock")
    if not foreign:
        return
    k = 1
    while run_dir.with_name(f"{run_dir.name}.moved-aside-{k}").exists():
        k += 1
    aside = run_dir.with_name(f"{run_dir.name}.moved-aside-{k}")
    shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
    if not overwrite:
        lost = (f"; {LEDGER_FILENAME} is missing although a run's results are here: restore the ledger file "
                "(with its -wal file, if it had one) to resume" if any(n in RUN_OWN for n in foreign) else "")
        raise OutputExistsError(f"run_dir {run_dir} holds files that no run ledger accounts for ({shown}){lost}; "
                                "choose another run_dir, or pass overwrite=true to move them aside (never deleted)")
    aside.mkdir()
    for name in foreign:
        (run_dir / name).rename(aside / name)
    console.echo(f"rlhf_ops: run_dir {run_dir} held files no run ledger accounts for ({shown}): moved to {aside}")


def check_ledger_matches_dir(run_dir: Path, ledger: Ledger) -> None:
    """A ledger with no step recorded beside step outputs lost its progress (e.g. copied without its
    WAL file, where the commits were): refused, never silently restarted over them."""
    if ledger.stage_history():
        return
    there = [n for n in RUN_OWN if (run_dir / n).is_file() or any(p.is_file() for p in (run_dir / n).rglob("*"))]
    if there:
        raise OutputExistsError(
            f"{run_dir / LEDGER_FILENAME} records no step, but the run dir holds a run's results ({', '.join(there)}): "
            f"the ledger lost its progress (was it copied without {LEDGER_FILENAME}-wal?); restore that file to "
            "resume, or use a new run_dir")


def schema_defaults() -> dict:
    """The typed schema's defaults as flat keys (rlhf_ops.config), the task's aside."""
    from ..config import RunConfig
    from ..ledger import flatten_config

    d = OmegaConf.to_container(OmegaConf.structured(RunConfig(run_dir="", task={})), resolve=False)
    return flatten_config(json.loads(json.dumps(d, default=str)))


def run_loop(cfg: DictConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    claim_run_dir(run_dir, bool(cfg.overwrite))
    run_dir.mkdir(parents=True, exist_ok=True)
    plain = plain_config(cfg)
    typed = OmegaConf.to_object(cfg)  # the one conversion: every step reads these dataclasses
    with RunLock(run_dir), Ledger(run_dir) as ledger:
        check_ledger_matches_dir(run_dir, ledger)
        diffs = ledger.check_config(plain, allow_changed=cfg.allow_config_change, new_key_defaults=schema_defaults())
        for d in diffs:
            log.warning("resuming with a changed config: %s", d)
        run_id = ledger.start_run(plain)
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(scrub_secrets(plain))))
        tracker = Tracker.open(run_dir, plain, plain["tracking"]["wandb_mode"])

        def step_start(ctx) -> None:
            # What the libraries print during a step goes to its log (rlhf_ops.console); the console gets
            # one line per step, written once the step's output is restored.
            console.begin(step_log(run_dir, ctx), f"{_tag(ctx)} {ctx.step}")

        def step_end(ctx) -> None:
            console.end()
            write_derived(run_dir, plain, ledger, "running")
            _console(ctx)
            tracker.log(ctx.iteration, ctx.step, {**ctx.metrics, **ctx.memory})

        runner = StepRunner(typed, run_dir, ledger, on_step_start=step_start, on_step_end=step_end)
        try:
            _, stopped = runner.run()
            console.end()  # a step that stopped the loop (StopLoop) is still open
        except BaseException:
            console.end(failed=True)  # restores fds 1 and 2 (Ctrl-C too); keeps the log's path for the error
            ledger.end_run(run_id, "failed")
            tracker.close("failed")
            raise
        status = "stopped" if stopped else "completed"
        summary = write_derived(run_dir, plain, ledger, status, stopped)
        ledger.end_run(run_id, status)
        tracker.close(status)
    why = f" ({stopped})" if stopped else ""  # a pause for labels, or too many rollbacks: re-run to go on
    print(f"rlhf_ops: {status}{why}; summary: {run_dir / 'summary.json'}", flush=True)
    return summary
