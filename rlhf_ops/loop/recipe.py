"""The loop as a recipe: an ordered list of setup steps run once, then an ordered list of steps run
every iteration (conf/loop/*.yaml: `setup:` and `steps:`), each step one function over the typed
`LoopState`. The runner skips what the ledger says is done, and commits each finished step (its
state, metrics, artifact hashes, rollbacks) in one ledger transaction; resuming is re-running.

    setup:  prepare -> sft -> rm_warmup -> baseline
    steps:  collect -> label -> rm_update -> policy_update -> evaluate -> gate -> prune

A step that cannot go on raises `AbandonIteration`: the runner records it, skips the steps up to the
gate, and the gate rolls the iteration back. `StopLoop` pauses the run (the step runs again on resume).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import gcpolicy, memory
from ..artifacts import InputError
from ..ledger import EXTERNAL_KIND, Ledger, hash_path, map_strings
from .errors import AbandonIteration, RecipeError, StopLoop
from .state import IterationWork, LoopState

log = logging.getLogger(__name__)
SETUP = -1  # the ledger's iteration index for setup steps
# Steps that run in an abandoned iteration: the gate rolls it back, prune keeps the disk in check.
RUN_WHEN_ABANDONED = ("gate", "prune")
# Observers called with (point, iteration, step) around every step: "before" it starts, "after" its
# work is done but before the commit (the fault-injection tests install one: rlhf_ops.testing.faults).
STEP_HOOKS: list = []


@dataclass
class StepContext:
    """What a step gets: the run's typed config, its own copy of the state to change, a fresh empty
    directory, and a place for metrics, artifacts and rollbacks that the runner commits with it."""

    cfg: Any                     # rlhf_ops.config.RunConfig
    state: LoopState
    iteration: int
    step: str
    run_dir: Path
    dir: Path                    # run_dir/setup/<step> or run_dir/iter_NNN/<step>
    metrics: dict = field(default_factory=dict)
    artifacts: list[tuple[str, str]] = field(default_factory=list)
    rollbacks: list[dict] = field(default_factory=list)
    iteration_status: dict | None = None
    memory: dict = field(default_factory=dict)  # the step's peak memory (rlhf_ops.memory), set by the runner

    def artifact(self, kind: str, path) -> str:
        self.artifacts.append((kind, str(path)))
        return str(path)


# The steps a recipe may name, known without importing them (their modules import torch): a config
# error is reported before torch loads. tests/test_recipe.py checks this equals steps()'s keys.
STEP_NAMES = ("prepare", "sft", "rm_warmup", "baseline", "ppo_once", "dpo_once", "collect", "label", "rm_update",
              "policy_update", "evaluate", "gate", "prune")


def steps() -> dict[str, Callable[[StepContext], None]]:
    from . import iteration, retention, setup

    return {"prepare": setup.prepare, "sft": setup.sft, "rm_warmup": setup.rm_warmup, "baseline": setup.baseline,
            "ppo_once": setup.ppo_once, "dpo_once": setup.dpo_once,
            "collect": iteration.collect, "label": iteration.label, "rm_update": iteration.rm_update,
            "policy_update": iteration.policy_update, "evaluate": iteration.evaluate, "gate": iteration.gate,
            "prune": retention.prune}


def check_recipe(setup: list[str], per_iteration: list[str], iterations: int, known: dict | None = None) -> None:
    known = STEP_NAMES if known is None else known
    for where, names in (("loop.setup", setup), ("loop.steps", per_iteration)):
        for name in names:
            if name not in known:
                raise RecipeError(f"{where}: unknown step '{name}' (known: {sorted(known)})")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise RecipeError(f"{where}: step(s) {dup} listed twice")
    if per_iteration and iterations < 1:
        raise RecipeError("loop.iterations=0 but the loop has per-iteration steps; set loop.iterations >= 1")


def external_checkpoints(value: Any, run_dir: Path) -> list[str]:
    """The checkpoint directories (holding a config.json) outside the run dir that a state names: a user's
    base model, a reward model given by path. Their content hash is recorded and checked on resume."""
    inside = os.path.realpath(run_dir)
    found: set[str] = set()

    def visit(v: str) -> str:
        if "/" in v and os.path.isfile(os.path.join(v, "config.json")):
            if os.path.commonpath([os.path.realpath(v), inside]) != inside:
                found.add(os.path.abspath(v))
        return v

    map_strings(value, visit)
    return sorted(found)


class StepRunner:
    """Runs (or resumes) setup once and `steps` for `iterations`; the ledger is the only record."""

    def __init__(self, cfg, run_dir: Path, ledger: Ledger, *, on_step_start: Callable | None = None,
                 on_step_end: Callable | None = None, hooks: list | None = None,
                 fns: dict[str, Callable] | None = None):
        lp = cfg.loop
        self.fns = steps() if fns is None else fns  # `fns`: fake steps in the runner's own tests
        check_recipe(list(lp.setup), list(lp.steps), lp.iterations, self.fns)
        self.cfg, self.run_dir, self.ledger = cfg, Path(run_dir), ledger
        self.plan = [(SETUP, s) for s in lp.setup] + [(i, s) for i in range(lp.iterations) for s in lp.steps]
        self.on_step_start, self.on_step_end = on_step_start, on_step_end
        self.hooks = STEP_HOOKS if hooks is None else hooks
        self._external: set[str] = set()  # checkpoints outside the run dir whose hash the ledger holds

    def run(self) -> tuple[LoopState, str | None]:
        """The final state, and the reason if a step paused the loop (StopLoop)."""
        self.ledger.mark_interrupted()  # 'running' rows can only be left by a crash
        last = self.ledger.last_completed()
        state = LoopState.from_json(last[2]) if last else LoopState()
        self._check_external()
        gcpolicy.release()  # start-up is over: what it left is long-lived
        resume_at = next((k for k, (i, s) in enumerate(self.plan) if last and (i, s) == last[:2]), -1)
        if last and resume_at < 0:
            raise RecipeError(f"the ledger's last finished step ({last[1]!r}, iteration {last[0]}) is not in this "
                              "recipe: the recipe changed since this run started; use a new run_dir")
        for k, (iteration, step) in enumerate(self.plan):
            if self.ledger.completed(iteration, step):
                continue
            if k < resume_at:
                raise RecipeError(f"step {step!r} never ran at iteration {iteration}, but later steps are done: the "
                                  "recipe changed since this run started; use a new run_dir")
            try:
                state = self._run_step(iteration, step, state)
            except StopLoop as stop:  # the run's last line says why (rlhf_ops.loop.runner)
                log.info("loop stopped by %s at iteration %d: %s", step, iteration, stop.reason)
                return state, stop.reason
        return state, None

    def _run_step(self, iteration: int, step: str, state: LoopState) -> LoopState:
        if iteration != SETUP and step == self.cfg.loop.steps[0]:
            state.work = IterationWork()  # a new iteration starts with nothing of the last one's
        if state.work.abandoned and iteration != SETUP and step not in RUN_WHEN_ABANDONED:
            with self.ledger.transaction():  # a 'skipped' row counts as done on resume
                self.ledger.finish_stage(self.ledger.begin_stage(iteration, step), "skipped", state.to_json(), 0.0)
            return state
        ctx = StepContext(self.cfg, state.copy(), iteration, step, self.run_dir, self._fresh_dir(iteration, step))
        stage_run_id = self.ledger.begin_stage(iteration, step)
        started = time.monotonic()
        memory.reset()
        try:
            if self.on_step_start:
                self.on_step_start(ctx)
            for hook in self.hooks:
                hook("before", iteration, step)
            try:
                self.fns[step](ctx)
            except AbandonIteration as abandon:
                log.error("iteration %d abandoned at %s: %s", iteration, step, abandon.reason)
                ctx.state = state.copy()  # nothing the step half-did is kept
                ctx.state.work.abandoned, ctx.state.work.abandon_remedies = f"{step}: {abandon.reason}", abandon.remedies
                ctx.metrics, ctx.artifacts = {**abandon.metrics, "abandoned": 1.0}, []
            ctx.memory = memory.step_peak()
            for hook in self.hooks:
                hook("after", iteration, step)
            self._commit(ctx, stage_run_id, time.monotonic() - started)
        except StopLoop:
            memory.step_peak()  # ends the step's watch
            self.ledger.discard_stage(stage_run_id)  # as if it never started
            raise
        except BaseException as exc:
            self.ledger.finish_stage(stage_run_id, "failed", state.to_json(), time.monotonic() - started,
                                     error=f"{type(exc).__name__}: {exc}", memory=memory.step_peak())
            raise
        if self.on_step_end:
            self.on_step_end(ctx)
        return ctx.state

    def _check_external(self) -> None:
        """Every checkpoint outside the run dir that this run used must be as it was when first used: a
        base model replaced in place would make the resumed run a different experiment without a word."""
        recorded = {row["path"]: row for row in self.ledger.artifacts(kind=EXTERNAL_KIND)}  # the last per path
        self._external = set(recorded)
        for path, row in recorded.items():
            try:
                now = hash_path(path)[0]
            except FileNotFoundError:
                now = None
            if now == row["sha256"]:
                continue
            what = "is gone" if now is None else f"changed (sha256 {row['sha256'][:12]}... -> {now[:12]}...)"
            if not getattr(self.cfg, "allow_config_change", False) or now is None:
                raise InputError(f"{path}: this checkpoint outside the run dir, used by the run since iteration "
                                 f"{row['iteration']} ({row['node']}), {what} since then; restore it to resume"
                                 + ("" if now is None else ", or pass allow_config_change=true to go on with it"))
            log.warning("resuming with a changed checkpoint (allow_config_change=true): %s %s", path, what)
            self._external.discard(path)  # recorded again, with its new hash, at the next commit

    def _commit(self, ctx: StepContext, stage_run_id: int, wall_s: float) -> None:
        # Hash first: hashing a checkpoint takes a while and should not hold the ledger's write lock.
        digests = [(kind, path, hash_path(path)) for kind, path in ctx.artifacts]
        new_external = [p for p in external_checkpoints(ctx.state.to_json(), self.run_dir)
                        if p not in self._external]
        digests += [(EXTERNAL_KIND, p, hash_path(p)) for p in new_external]
        with self.ledger.transaction():  # after a crash either all of this is recorded or none
            for kind, path, digest in digests:
                self.ledger.record_artifact(stage_run_id, ctx.iteration, ctx.step, kind, path, digest)
            self.ledger.log_metrics(ctx.iteration, ctx.step, ctx.metrics)
            for rollback in ctx.rollbacks:
                self.ledger.record_rollback(iteration=ctx.iteration, **rollback)
            if ctx.iteration_status:
                self.ledger.set_iteration(ctx.iteration, **ctx.iteration_status)
            self.ledger.finish_stage(stage_run_id, "done", ctx.state.to_json(), wall_s, memory=ctx.memory)
        self._external.update(new_external)

    def _fresh_dir(self, iteration: int, step: str) -> Path:
        d = self.run_dir / ("setup" if iteration == SETUP else f"iter_{iteration:03d}") / step
        # A leftover is from an attempt that never committed. Partial writes (*.tmp) are garbage;
        # anything else is moved aside, never deleted.
        leftovers = [d.with_name(step + ".tmp")] + (list(d.glob("*.tmp")) if d.is_dir() else [])
        for tmp in leftovers:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            elif tmp.exists():
                tmp.unlink()
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
        if d.exists():
            k = 1
            while d.with_name(f"{step}.interrupted-{k}").exists():
                k += 1
            aside = d.with_name(f"{step}.interrupted-{k}")
            log.warning("moving leftover %s of an interrupted attempt to %s", d, aside)
            d.rename(aside)
        d.mkdir(parents=True)
        return d
