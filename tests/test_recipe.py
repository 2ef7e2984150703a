"""The step runner with fast fake steps in pure Python: order, one commit per step, resume after a
crash at every boundary, StopLoop, a failing step, an abandoned iteration, a changed recipe."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pytest

from rlhf_ops.ledger import Ledger
from rlhf_ops.loop.errors import AbandonIteration, RecipeError, StopLoop
from rlhf_ops.loop.recipe import StepRunner, check_recipe


class FakeCrash(BaseException):
    """Stands in for the process being killed (not an Exception: nothing handles it)."""


class CrashInjector:
    """Counts crash opportunities and raises FakeCrash at the k-th (k=0: never)."""

    def __init__(self, crash_at=0):
        self.crash_at, self.seen, self.crashed_at = crash_at, 0, None

    def point(self, where):
        self.seen += 1
        if self.seen == self.crash_at:
            self.crashed_at = where
            raise FakeCrash(where)


class CrashingLedger(Ledger):
    """Crashes inside the completion transaction, after its rows were written."""

    def __init__(self, run_dir, injector):
        super().__init__(run_dir)
        self.injector = injector

    def finish_stage(self, stage_run_id, status, state, wall_s, error=None, memory=None):
        super().finish_stage(stage_run_id, status, state, wall_s, error, memory)
        if status in ("done", "skipped"):
            iteration, node = self._conn.execute("SELECT iteration, node FROM stage_runs WHERE id = ?",
                                                 (stage_run_id,)).fetchone()
            self.injector.point(("commit", status, iteration, node))


def fake_steps(calls: Counter, abandon_at: int | None = None):
    """Arithmetic on the typed state, a file per step; `collect` abandons iteration `abandon_at`."""

    def step(fn):
        def run(ctx):
            calls[(ctx.iteration, ctx.step)] += 1
            (ctx.dir / "out.txt").write_text(f"{ctx.step} {ctx.iteration}\n")
            fn(ctx, ctx.state)
        return run

    def init(ctx, s):
        s.cursor, s.policy = 1, "p0"

    def collect(ctx, s):
        value = s.cursor * 2 + ctx.iteration
        path = ctx.dir / "rollouts.txt"
        path.write_text(str(value))
        s.work.completions = ctx.artifact("rollouts", path)
        ctx.metrics["rollouts"] = value
        if ctx.iteration == abandon_at:
            s.cursor = -999  # half-done work that must not survive the abandonment
            raise AbandonIteration("non-finite reward", remedies=("refresh_rm",))

    def policy_update(ctx, s):
        s.work.candidate = f"p{ctx.iteration + 1}"
        s.cursor = s.cursor * 3 + int(open(s.work.completions).read()) % 7

    def gate(ctx, s):
        if s.work.abandoned:
            s.n_rollbacks += 1
            ctx.rollbacks.append({"detector": "abandoned", "reason": s.work.abandoned, "restored_iteration": -1})
        else:
            s.policy = s.work.candidate
        s.iterations_log.append({"iteration": ctx.iteration, "abandoned": s.work.abandoned})

    return {"init": step(init), "collect": step(collect), "policy_update": step(policy_update), "gate": step(gate)}


def cfg(iterations=3, steps=("collect", "policy_update", "gate")):
    return SimpleNamespace(loop=SimpleNamespace(setup=["init"], steps=list(steps), iterations=iterations))


def run_fake(run_dir, calls, injector=None, abandon_at=None, config=None):
    injector = injector or CrashInjector()
    with CrashingLedger(run_dir, injector) as ledger:
        runner = StepRunner(config or cfg(), run_dir, ledger, fns=fake_steps(calls, abandon_at), hooks=[],
                            on_step_start=lambda ctx: injector.point(("start", ctx.iteration, ctx.step)),
                            on_step_end=lambda ctx: injector.point(("end", ctx.iteration, ctx.step)))
        state, stopped = runner.run()
        return state.to_json(), stopped


def ledger_summary(run_dir):
    with Ledger(run_dir) as ledger:
        history = ledger.stage_history()
        completions = Counter((r["iteration"], r["node"]) for r in history if r["status"] in ("done", "skipped"))
        statuses = Counter(r["status"] for r in history)
        metrics = sorted((m["iteration"], m["node"], m["key"], m["value"]) for m in ledger.metrics())
        artifacts = ledger.artifacts()
        assert all(ledger.verify_artifact(a["path"]) for a in artifacts)
    return completions, statuses, metrics, [(a["iteration"], a["sha256"]) for a in artifacts]


def test_uninterrupted_fake_loop(tmp_path):
    calls = Counter()
    final, stopped = run_fake(tmp_path, calls)
    completions, statuses, metrics, artifacts = ledger_summary(tmp_path)
    assert stopped is None and final["policy"] == "p3" and final["cursor"] == 62
    assert statuses == {"done": 10} and set(completions.values()) == {1} and set(calls.values()) == {1}
    assert [m[3] for m in metrics] == [2, 11, 40] and len(artifacts) == 3
    # a finished run resumes to the same state without running anything
    assert run_fake(tmp_path, calls) == (final, None) and sum(calls.values()) == 10


def same_paths(state: dict, run_dir) -> str:
    return json.dumps(state, sort_keys=True).replace(str(run_dir), "RUN_DIR")


def test_resume_after_crash_at_every_boundary(tmp_path):
    clean_calls = Counter()
    clean_final, _ = run_fake(tmp_path / "clean", clean_calls)
    clean = ledger_summary(tmp_path / "clean")
    expected_boundaries = 3 * clean[1]["done"]  # before the step, after its commit, after the step
    tried, kinds = 0, Counter()
    for k in range(1, expected_boundaries + 5):
        run_dir, calls, injector = tmp_path / f"crash_{k}", Counter(), CrashInjector(crash_at=k)
        try:
            run_fake(run_dir, calls, injector)
        except FakeCrash:
            pass
        if injector.crashed_at is None:
            break  # k is past the last boundary: the run completed
        tried += 1
        where = injector.crashed_at
        kinds[where[0]] += 1
        final, _ = run_fake(run_dir, calls)  # a new runner and ledger resume
        completions, statuses, metrics, artifacts = ledger_summary(run_dir)
        assert same_paths(final, run_dir) == same_paths(clean_final, tmp_path / "clean"), where
        assert completions == clean[0] and metrics == clean[2] and artifacts == clean[3], where
        reran = Counter({(where[2], where[3]): 1}) if where[0] == "commit" else Counter()
        assert calls == clean_calls + reran, where  # no completed step ran twice
        assert statuses["failed"] == int(where[0] in ("start", "commit"))
        if reran:  # the uncommitted attempt's files were moved aside, not deleted
            parent = run_dir / ("setup" if where[2] == -1 else f"iter_{where[2]:03d}")
            assert (parent / f"{where[3]}.interrupted-1" / "out.txt").exists()
    assert tried == expected_boundaries == 30 and kinds == {"start": 10, "commit": 10, "end": 10}


def test_stop_loop_records_nothing_and_resumes(tmp_path):
    calls, ready = Counter(), {"labels": False}
    fns = fake_steps(calls)
    plain_policy_update = fns["policy_update"]

    def waiting(ctx):
        if ctx.iteration == 1 and not ready["labels"]:
            raise StopLoop("waiting for 5 human labels")
        plain_policy_update(ctx)

    fns["policy_update"] = waiting
    with Ledger(tmp_path) as ledger:
        state, stopped = StepRunner(cfg(), tmp_path, ledger, fns=fns, hooks=[]).run()
        assert stopped == "waiting for 5 human labels" and state.policy == "p1"
        assert not ledger.completed(1, "policy_update") and ledger.completed(1, "collect")
        assert not [r for r in ledger.stage_history() if r["node"] == "policy_update" and r["iteration"] == 1]
    ready["labels"] = True
    with Ledger(tmp_path) as ledger:
        state, stopped = StepRunner(cfg(), tmp_path, ledger, fns=fns, hooks=[]).run()
    assert stopped is None and state.policy == "p3" and calls[(1, "collect")] == 1


def test_failing_step_is_recorded_and_rerun_on_resume(tmp_path):
    calls, fail = Counter(), {"on": True}
    fns = fake_steps(calls)
    ok_gate = fns["gate"]

    def flaky_gate(ctx):
        if fail["on"] and ctx.iteration == 0:
            raise RuntimeError("disk trouble")
        ok_gate(ctx)

    fns["gate"] = flaky_gate
    with Ledger(tmp_path) as ledger, pytest.raises(RuntimeError, match="disk trouble"):
        StepRunner(cfg(), tmp_path, ledger, fns=fns, hooks=[]).run()
    fail["on"] = False
    with Ledger(tmp_path) as ledger:
        state, _ = StepRunner(cfg(), tmp_path, ledger, fns=fns, hooks=[]).run()
        failed = [r for r in ledger.stage_history() if r["status"] == "failed"]
    assert state.policy == "p3" and len(failed) == 1 and "disk trouble" in failed[0]["error"]


def test_abandoned_iteration_skips_to_the_gate_and_keeps_nothing_half_done(tmp_path):
    calls = Counter()
    final, _ = run_fake(tmp_path, calls, abandon_at=1)
    assert calls[(1, "policy_update")] == 0, "the steps after the abandoning one are skipped ..."
    assert calls[(1, "gate")] == 1, "... up to the gate, which rolls the iteration back"
    assert final["iterations_log"][1]["abandoned"] == "collect: non-finite reward"
    assert final["n_rollbacks"] == 1 and final["work"]["abandoned"] is None, "the next iteration starts clean"
    assert final["cursor"] != -999 and final["cursor"] == 5 * 3 + (5 * 2 + 2) % 7
    with Ledger(tmp_path) as ledger:
        rows = {(r["iteration"], r["node"]): r["status"] for r in ledger.stage_history()}
        assert rows[(1, "collect")] == "done" and rows[(1, "policy_update")] == "skipped"
        assert [m["value"] for m in ledger.metrics(1) if m["key"] == "abandoned"] == [1.0]
        assert ledger.artifacts(iteration=1) == [], "an abandoned step's artifacts are not recorded"


def test_step_names_known_without_import_are_the_steps():
    from rlhf_ops.loop.recipe import STEP_NAMES, steps

    assert sorted(STEP_NAMES) == sorted(steps())


def test_recipe_errors_name_the_step(tmp_path):
    with pytest.raises(RecipeError, match="loop.steps: unknown step 'colect'"):
        check_recipe(["prepare"], ["colect"], 1)
    with pytest.raises(RecipeError, match=r"listed twice"):
        check_recipe(["prepare", "prepare"], [], 0)
    with pytest.raises(RecipeError, match="loop.iterations=0"):
        check_recipe(["prepare"], ["collect"], 0)


def test_resume_extends_a_run_but_refuses_a_changed_recipe(tmp_path):
    calls = Counter()
    run_fake(tmp_path, calls, config=cfg(iterations=2))
    final, _ = run_fake(tmp_path, calls, config=cfg(iterations=3))  # more iterations: goes on
    assert final["policy"] == "p3" and sum(calls.values()) == 10
    with pytest.raises(RecipeError, match="recipe changed"):
        run_fake(tmp_path, calls, config=cfg(iterations=3, steps=("collect", "init", "policy_update", "gate")))
