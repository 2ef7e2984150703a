"""A small stage-graph runner for the online RLHF loop.

Nodes (collect, label, reward-model update, policy update, evaluate, gate...)
read and write named keys of one JSON-serialisable loop state. ``Graph`` orders
them; ``Runner`` runs setup nodes once, then every iteration node of every
iteration, committing each node's completion (its resulting state, metrics and
artifact hashes) to the ledger in one transaction. Resuming is re-running: the
runner restores the state of the last completed node from the ledger and skips
every (iteration, node) the ledger says is done.

How ``Graph`` orders the nodes of a phase (think of the declared list as a
program): a node reads the value written by the nodes declared before it, so it
runs after them. A key that exists before the phase starts (from a setup node,
or ``external``) is loop-carried: a reader declared before its writer sees last
iteration's value, so the writer waits for it (the policy update reads the
current policy; the later gate replaces it). A key produced only inside the
phase must be produced before it is read, so a reader declared before its
producer is moved after it. Two writers of one key keep their declared order,
and independent nodes keep declared order too.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from rlhf_ops.ledger import Ledger, hash_path

log = logging.getLogger(__name__)

SCHEDULE_KINDS = ("always", "every", "on_trigger", "never")
PHASES = ("setup", "iteration")
SETUP_ITERATION = -1  # the ledger's iteration index for setup nodes
RUNNER_KEYS = ("iteration", "triggers")  # state keys the runner maintains
# Keys of a node's returned dict that are instructions to the runner, not state.
RESERVED_KEYS = ("_triggers", "_clear_triggers", "_metrics", "_artifacts", "_rollbacks",
                 "_iteration_status")


class GraphConfigError(ValueError):
    """The graph or a schedule is wired wrongly; the message names the node."""


class StopLoop(Exception):
    """Raised by a node to end the loop for now (e.g. labels are awaited); it reruns on resume."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Schedule:
    """When an iteration node runs. ``offset`` is the first iteration it may run;
    ``freeze`` lists inclusive (first, last) iteration windows where it never runs."""

    kind: str = "always"
    every: int = 1
    offset: int = 0
    freeze: list[tuple[int, int]] = field(default_factory=list)
    trigger: str | None = None  # "on_trigger": runs when set; "every": also runs when set

    def __post_init__(self):
        # Configs give windows as lists; anything malformed is left for problems().
        self.freeze = [tuple(w) if isinstance(w, (list, tuple)) else w for w in self.freeze or []]

    def problems(self) -> list[str]:
        found = []
        if self.kind not in SCHEDULE_KINDS:
            found.append(f"unknown schedule kind {self.kind!r} (expected one of {SCHEDULE_KINDS})")
        if not _is_int(self.every) or self.every < 1:
            found.append(f"every must be an integer >= 1, got {self.every!r}")
        if not _is_int(self.offset) or self.offset < 0:
            found.append(f"offset must be an integer >= 0, got {self.offset!r}")
        for window in self.freeze:
            ok = isinstance(window, tuple) and len(window) == 2 and all(map(_is_int, window))
            if not ok or not 0 <= window[0] <= window[1]:
                found.append(f"freeze window {window!r} must be (first, last) with 0 <= first <= last")
        if self.kind == "on_trigger" and not self.trigger:
            found.append("kind 'on_trigger' needs a trigger name")
        return found

    def frozen(self, iteration: int) -> bool:
        return any(first <= iteration <= last for first, last in self.freeze)

    def due(self, iteration: int, triggers: set[str]) -> bool:
        if self.kind == "never" or iteration < self.offset or self.frozen(iteration):
            return False
        triggered = self.trigger is not None and self.trigger in triggers
        if self.kind == "every":
            return (iteration - self.offset) % self.every == 0 or triggered
        return self.kind == "always" or triggered

    def can_fire(self, n_iterations: int) -> bool:
        """Whether any iteration in range(n_iterations) could run this node."""
        open_iterations = [i for i in range(n_iterations) if i >= self.offset and not self.frozen(i)]
        if self.kind == "never" or not open_iterations:
            return False
        if self.trigger is not None and self.kind != "always":
            return True  # a trigger may be set at any time
        return any(self.due(i, set()) for i in open_iterations)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Context:
    """What a node function gets. ``state`` is the node's own copy: only the
    returned dict changes the loop state."""

    iteration: int
    node: str
    state: dict
    triggers: set[str]
    run_dir: Path
    stage_dir: Path  # run_dir/iter_NNN/<node> or run_dir/setup/<node>, fresh and empty
    ledger: Ledger  # for reads; writes belong in the returned dict, to commit atomically
    stage_run_id: int


@dataclass
class Node:
    name: str
    fn: Callable[[Context], dict | None]
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    schedule: Schedule = field(default_factory=Schedule)
    phase: str = "iteration"  # "setup" nodes run once, before iteration 0

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise GraphConfigError(f"node name {self.name!r} must be a plain directory name")
        if self.phase not in PHASES:
            raise GraphConfigError(f"node {self.name!r}: phase {self.phase!r} not in {PHASES}")
        problems = self.schedule.problems()
        if problems:
            raise GraphConfigError(f"node {self.name!r}: " + "; ".join(problems))
        reserved = [k for k in self.outputs if k in RUNNER_KEYS or k.startswith("_")]
        if reserved:
            raise GraphConfigError(f"node {self.name!r}: outputs {reserved} are reserved")


class Graph:
    """Nodes in run order: ``setup_nodes``, then ``iteration_nodes`` (see module docstring)."""

    def __init__(self, nodes: Iterable[Node], external: Iterable[str] = ()):
        self.nodes = list(nodes)
        self.external = set(external)
        names = [n.name for n in self.nodes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise GraphConfigError(f"duplicate node names: {duplicates}")
        setup = [n for n in self.nodes if n.phase == "setup"]
        self.setup_nodes = _order_phase(setup, carried=self.external)
        carried = self.external | {k for n in setup for k in n.outputs}
        self.iteration_nodes = _order_phase([n for n in self.nodes if n.phase == "iteration"], carried=carried)

    def validate(self, n_iterations: int) -> None:
        """Refuse schedules that can never fire in ``n_iterations`` (kind "never" is allowed)."""
        for node in self.iteration_nodes:
            if node.schedule.kind != "never" and not node.schedule.can_fire(n_iterations):
                raise GraphConfigError(
                    f"node {node.name!r} can never run within {n_iterations} iterations with {node.schedule}; "
                    "fix the schedule, or set kind='never' to disable it")


def _order_phase(nodes: list[Node], carried: set[str]) -> list[Node]:
    """Order one phase's nodes by the rule in the module docstring; ``carried`` keys exist beforehand."""
    run_after: dict[str, set[str]] = {n.name: set() for n in nodes}
    for i, node in enumerate(nodes):
        earlier, later = nodes[:i], nodes[i + 1 :]
        for key in node.inputs:
            earlier_writers = [w.name for w in earlier if key in w.outputs]
            later_writers = [w.name for w in later if key in w.outputs]
            if earlier_writers or key in carried:
                run_after[node.name].update(earlier_writers)
                for writer in later_writers:  # must not overwrite what we read first
                    run_after[writer].add(node.name)
            elif later_writers:  # produced only in this phase, but declared later: move the reader after it
                run_after[node.name].update(later_writers)
            else:
                raise GraphConfigError(
                    f"node {node.name!r} needs input {key!r}, but no other {node.phase} node produces it, "
                    "no setup node produces it, and it is not external")
        for key in node.outputs:  # two writers of one key keep their declared order
            run_after[node.name].update(w.name for w in earlier if key in w.outputs)

    ordered: list[Node] = []
    placed: set[str] = set()
    while len(ordered) < len(nodes):
        ready = [n for n in nodes if n.name not in placed and run_after[n.name] <= placed]
        if not ready:
            raise GraphConfigError(f"dependency cycle: {_find_cycle(run_after, placed)}")
        ordered.append(ready[0])  # declared order breaks ties
        placed.add(ready[0].name)
    return ordered


def _find_cycle(run_after: dict[str, set[str]], placed: set[str]) -> str:
    path = [min(n for n in run_after if n not in placed)]
    while path.count(path[-1]) < 2:
        path.append(min(run_after[path[-1]] - placed))
    cycle = path[path.index(path[-1]) :]
    return " -> ".join(repr(n) for n in cycle) + " (each must run after the next)"


def _json_copy(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from exc


class Runner:
    """Runs (or resumes) a graph for ``n_iterations``; the ledger is the only record of progress."""

    def __init__(self, graph: Graph, run_dir: str | Path, ledger: Ledger, n_iterations: int, initial_state: dict,
                 *, on_node_start: Callable[[Context], None] | None = None,
                 on_node_end: Callable[[Context, dict], None] | None = None):
        graph.validate(n_iterations)
        self.graph, self.ledger, self.n_iterations = graph, ledger, n_iterations
        self.run_dir = Path(run_dir)
        self.initial_state = _json_copy(initial_state, "initial_state")
        self.on_node_start, self.on_node_end = on_node_start, on_node_end

    def run(self) -> dict:
        """Run every not-yet-completed (iteration, node) and return the final state; if a node raises
        StopLoop, return early with ``state["_stopped"] = reason``."""
        self.ledger.mark_interrupted()  # 'running' rows can only be left by a crash
        last = self.ledger.last_completed()
        state = last[2] if last is not None else dict(self.initial_state)
        state.setdefault("triggers", [])
        plan = [(SETUP_ITERATION, node) for node in self.graph.setup_nodes]
        plan += [(i, node) for i in range(self.n_iterations) for node in self.graph.iteration_nodes]
        # The restored state is the state after the last completed stage, so every stage before it
        # in the plan must be complete too; one that is not was added or moved since the run began.
        resume_at = next((k for k, (i, node) in enumerate(plan) if last and (i, node.name) == last[:2]), -1)
        for k, (iteration, node) in enumerate(plan):
            if self.ledger.completed(iteration, node.name):
                continue
            if k < resume_at:
                raise GraphConfigError(
                    f"node {node.name!r} never ran at iteration {iteration}, but the ledger has later stages "
                    f"done (up to {last[1]!r} at iteration {last[0]}): the graph changed since this run "
                    "started; use a new run_dir")
            try:
                state = self._run_node(iteration, node, state)
            except StopLoop as stop:
                log.info("loop stopped by %s at iteration %d: %s", node.name, iteration, stop)
                return {**state, "_stopped": stop.reason}
        return state

    def _run_node(self, iteration: int, node: Node, state: dict) -> dict:
        state = {**state, "iteration": iteration}
        triggers = set(state["triggers"])
        if iteration == SETUP_ITERATION:
            due = node.schedule.kind != "never"
        else:
            due = node.schedule.due(iteration, triggers)
        if not due:
            # A 'skipped' row makes the node count as done for resume.
            with self.ledger.transaction():
                skipped_id = self.ledger.begin_stage(iteration, node.name)
                self.ledger.finish_stage(skipped_id, "skipped", state, 0.0)
            return state
        missing = [key for key in node.inputs if key not in state]
        if missing:
            raise GraphConfigError(
                f"node {node.name!r} (iteration {iteration}) needs {missing}, which are not in the "
                "state yet: their producer has not run (check its schedule or initial_state)"
            )

        stage_dir = self._fresh_stage_dir(iteration, node.name)
        stage_run_id = self.ledger.begin_stage(iteration, node.name)
        ctx = Context(iteration, node.name, _json_copy(state, "state"), triggers, self.run_dir,
                      stage_dir, self.ledger, stage_run_id)
        started = time.monotonic()
        try:
            if self.on_node_start:
                self.on_node_start(ctx)
            updates = node.fn(ctx) or {}
            new_state, extras = _merge_updates(node, state, updates)
            self._commit(ctx, new_state, extras, wall_s=time.monotonic() - started)
        except StopLoop:
            self.ledger.discard_stage(stage_run_id)  # as if it never started
            raise
        except Exception as exc:
            self.ledger.finish_stage(stage_run_id, "failed", state, time.monotonic() - started,
                                     error=f"{type(exc).__name__}: {exc}")
            raise
        if self.on_node_end:
            self.on_node_end(ctx, updates)
        return new_state

    def _commit(self, ctx: Context, new_state: dict, extras: dict, wall_s: float) -> None:
        # Hash first: hashing a checkpoint takes a while and should not hold the ledger's write lock.
        digests = [(kind, path, hash_path(path)) for kind, path in extras["_artifacts"]]
        # One transaction: after a crash either all of this is recorded or none.
        with self.ledger.transaction():
            for kind, path, digest in digests:
                self.ledger.record_artifact(ctx.stage_run_id, ctx.iteration, ctx.node, kind, path, digest)
            self.ledger.log_metrics(ctx.iteration, ctx.node, extras["_metrics"])
            for rollback in extras["_rollbacks"]:
                self.ledger.record_rollback(iteration=ctx.iteration, **rollback)
            if extras["_iteration_status"]:
                self.ledger.set_iteration(ctx.iteration, **extras["_iteration_status"])
            self.ledger.finish_stage(ctx.stage_run_id, "done", new_state, wall_s)

    def _fresh_stage_dir(self, iteration: int, name: str) -> Path:
        stage_dir = self.run_dir / ("setup" if iteration == SETUP_ITERATION else f"iter_{iteration:03d}") / name
        # A leftover is from an attempt that never committed. Partial writes (*.tmp) are garbage;
        # anything else is moved aside, never deleted.
        leftovers = [stage_dir.with_name(name + ".tmp")]
        if stage_dir.is_dir():
            leftovers += list(stage_dir.glob("*.tmp"))
        for tmp in leftovers:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            elif tmp.exists():
                tmp.unlink()
        if stage_dir.is_dir() and not any(stage_dir.iterdir()):
            stage_dir.rmdir()
        if stage_dir.exists():
            k = 1
            while stage_dir.with_name(f"{name}.interrupted-{k}").exists():
                k += 1
            aside = stage_dir.with_name(f"{name}.interrupted-{k}")
            log.warning("moving leftover %s of an interrupted attempt to %s", stage_dir, aside)
            stage_dir.rename(aside)
        stage_dir.mkdir(parents=True)
        return stage_dir


def _merge_updates(node: Node, state: dict, updates: dict) -> tuple[dict, dict]:
    """Split a node's returned dict into the new state and the runner instructions."""
    if not isinstance(updates, dict):
        raise TypeError(f"node {node.name!r} returned {type(updates).__name__}; expected dict or None")
    undeclared = [k for k in updates if k not in RESERVED_KEYS and k not in node.outputs]
    if undeclared:
        raise GraphConfigError(
            f"node {node.name!r} returned keys {undeclared} that are not among its outputs "
            f"{node.outputs} (keys starting with '_' must be one of {RESERVED_KEYS})"
        )
    extras = {
        "_triggers": _names(updates.get("_triggers")),
        "_clear_triggers": _names(updates.get("_clear_triggers")),
        "_metrics": dict(updates.get("_metrics") or {}),
        "_artifacts": [(str(kind), Path(path)) for kind, path in updates.get("_artifacts") or []],
        "_rollbacks": list(updates.get("_rollbacks") or []),
        "_iteration_status": updates.get("_iteration_status"),
    }
    new_state = {**state, **{k: v for k, v in updates.items() if k not in RESERVED_KEYS}}
    # Clearing goes first, so a node may clear all of a kind and set one again.
    triggers = (set(state["triggers"]) - extras["_clear_triggers"]) | extras["_triggers"]
    new_state["triggers"] = sorted(triggers)
    return _json_copy(new_state, f"state after node {node.name!r}"), extras


def _names(value: str | Iterable[str] | None) -> set[str]:
    if value is None:
        return set()
    return {value} if isinstance(value, str) else set(value)
