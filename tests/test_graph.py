"""The stage-graph runner, with fast fake stages: ordering, schedules, resume after a
crash at every boundary, StopLoop, failures and the rollback path."""

from collections import Counter

import pytest

from rlhf_ops.graph import Context, Graph, GraphConfigError, Node, Runner, Schedule, StopLoop
from rlhf_ops.ledger import Ledger


def noop(ctx):
    return None


def names(nodes):
    return [n.name for n in nodes]


# -- ordering --------------------------------------------------------------------


def test_orders_by_data_flow_with_declared_order_tie_break():
    graph = Graph([
        Node("label", noop, inputs=["rollouts"], outputs=["preferences"]),
        Node("report", noop),
        Node("collect", noop, inputs=["policy"], outputs=["rollouts"]),
        Node("rm_update", noop, inputs=["preferences"], outputs=["reward_model"]),
        Node("init", noop, outputs=["policy"], phase="setup"),
    ])
    assert names(graph.setup_nodes) == ["init"]
    assert names(graph.iteration_nodes) == ["report", "collect", "label", "rm_update"]


def test_loop_carried_keys_keep_declared_order():
    # The gate writes "policy", which collect and policy_update read: declared
    # before the gate, they see the value carried from the previous iteration, so
    # the gate waits for them. "score" exists only within an iteration, so evaluate
    # moves after its producer.
    init = Node("init", noop, outputs=["policy"], phase="setup")
    evaluate = Node("evaluate", noop, inputs=["candidate"], outputs=["score"])
    collect = Node("collect", noop, inputs=["policy"], outputs=["rollouts"])
    update = Node("policy_update", noop, inputs=["policy", "rollouts"], outputs=["candidate"])
    gate = Node("gate", noop, inputs=["score", "candidate"], outputs=["policy"])
    graph = Graph([init, evaluate, collect, update, gate])
    assert names(graph.iteration_nodes) == ["collect", "policy_update", "evaluate", "gate"]
    # Declared before policy_update, the gate's policy is what policy_update would
    # read, yet the gate needs policy_update's candidate: a cycle.
    with pytest.raises(GraphConfigError, match=r"cycle: .*'policy_update' -> 'gate'"):
        Graph([init, collect, gate, update, evaluate])


def test_missing_input_names_node_and_key():
    with pytest.raises(GraphConfigError, match=r"'rm_update' needs input 'preferences'"):
        Graph([Node("rm_update", noop, inputs=["preferences"], outputs=["reward_model"])])
    # external keys and setup outputs satisfy inputs
    Graph([Node("rm_update", noop, inputs=["preferences"])], external={"preferences"})


def test_cycle_names_the_nodes():
    with pytest.raises(GraphConfigError, match=r"cycle: 'a' -> 'b' -> 'a'"):
        Graph([Node("a", noop, inputs=["y"], outputs=["x"]), Node("b", noop, inputs=["x"], outputs=["y"])])


def test_duplicate_and_invalid_nodes():
    with pytest.raises(GraphConfigError, match="duplicate"):
        Graph([Node("a", noop), Node("a", noop)])
    with pytest.raises(GraphConfigError, match="reserved"):
        Node("a", noop, outputs=["iteration"])
    with pytest.raises(GraphConfigError, match="phase"):
        Node("a", noop, phase="teardown")


# -- schedules ---------------------------------------------------------------------


def due_list(schedule, n=8, triggers=()):
    return [i for i in range(n) if schedule.due(i, set(triggers))]


def test_every_n_with_offset_and_freeze_windows():
    assert due_list(Schedule("every", every=3, offset=1)) == [1, 4, 7]
    assert due_list(Schedule("always", freeze=[[2, 3], (6, 6)])) == [0, 1, 4, 5, 7]
    assert due_list(Schedule("every", every=2, trigger="t"), triggers={"t"}) == list(range(8))
    assert due_list(Schedule("on_trigger", trigger="t", offset=2, freeze=[(5, 9)]), triggers={"t"}) == [2, 3, 4]
    assert due_list(Schedule("on_trigger", trigger="t")) == []
    assert due_list(Schedule("never")) == []


@pytest.mark.parametrize("schedule, problem", [
    (Schedule("evry"), "unknown schedule kind 'evry'"),
    (Schedule("every", every=0), "every must be an integer >= 1"),
    (Schedule(offset=-1), "offset must be"),
    (Schedule(freeze=[(3, 1)]), r"freeze window \(3, 1\)"),
    (Schedule(freeze=[5]), "freeze window 5"),
    (Schedule("on_trigger"), "needs a trigger"),
])
def test_invalid_schedules_name_the_node(schedule, problem):
    with pytest.raises(GraphConfigError, match=rf"node 'rm_update': .*{problem}"):
        Node("rm_update", noop, schedule=schedule)


def test_validate_rejects_schedules_that_can_never_fire():
    def graph_with(schedule):
        return Graph([Node("rm_update", noop, schedule=schedule)])

    for hopeless in [Schedule(offset=3), Schedule("every", every=2, freeze=[(0, 0), (2, 2)])]:
        with pytest.raises(GraphConfigError, match=r"'rm_update' can never run within 3 iterations"):
            graph_with(hopeless).validate(3)
    graph_with(Schedule("never")).validate(3)  # explicitly disabled is fine
    graph_with(Schedule("every", every=5)).validate(3)  # fires at iteration 0
    graph_with(Schedule("on_trigger", trigger="t")).validate(3)
    with pytest.raises(GraphConfigError, match="rm_update"):
        Runner(graph_with(Schedule(offset=3)), "unused", None, 3, {})


def test_trigger_set_by_earlier_node_fires_later_node_and_is_cleared(tmp_path):
    seen = []

    def detector(ctx):
        return {"_triggers": ["relabel"]} if ctx.iteration == 1 else None

    def relabel(ctx):
        seen.append((ctx.iteration, sorted(ctx.triggers)))
        return {"_clear_triggers": ["relabel"]}

    on_relabel = Schedule("on_trigger", trigger="relabel")
    graph = Graph([Node("detector", detector), Node("relabel", relabel, schedule=on_relabel)])
    with Ledger(tmp_path) as ledger:
        final = Runner(graph, tmp_path, ledger, 4, {}).run()
        statuses = [(r["iteration"], r["status"]) for r in ledger.stage_history() if r["node"] == "relabel"]
    assert seen == [(1, ["relabel"])]
    assert statuses == [(0, "skipped"), (1, "done"), (2, "skipped"), (3, "skipped")]
    assert final["triggers"] == [] and final["iteration"] == 3


# -- the fake loop used for resume tests -----------------------------------------------


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

    def finish_stage(self, stage_run_id, status, state, wall_s, error=None):
        super().finish_stage(stage_run_id, status, state, wall_s, error)
        if status in ("done", "skipped"):
            row = self._conn.execute("SELECT iteration, node FROM stage_runs WHERE id = ?", (stage_run_id,))
            iteration, node = row.fetchone()
            self.injector.point(("commit", status, iteration, node))


def fake_loop(calls: Counter) -> Graph:
    """setup + 4 iteration nodes doing arithmetic on the state and writing files."""

    def stage(fn):
        def run(ctx: Context):
            calls[(ctx.iteration, ctx.node)] += 1
            (ctx.stage_dir / "out.txt").write_text(f"{ctx.node} {ctx.iteration}\n")
            return fn(ctx, ctx.state)
        return run

    def init(ctx, s):
        return {"x": 1, "rm": 0, "policy": "p0"}

    def collect(ctx, s):
        rollouts = s["x"] * 2 + ctx.iteration
        path = ctx.stage_dir / "rollouts.txt"
        path.write_text(str(rollouts))
        return {"rollouts": rollouts, "rollouts_path": str(path.relative_to(ctx.run_dir)),
                "_artifacts": [("rollouts", path)], "_metrics": {"rollouts": rollouts}}

    def label(ctx, s):
        return {"labels": s["rollouts"] + 100, "_clear_triggers": ["relabel"]}

    def rm_update(ctx, s):
        return {"rm": s["rm"] + s["rollouts"], "_metrics": {"rm": s["rm"] + s["rollouts"]}}

    def policy_update(ctx, s):
        x = s["x"] * 3 + s["rm"] + s.get("labels", 0) % 7
        relabel_next = ["relabel"] if ctx.iteration % 2 == 0 else []
        return {"x": x, "policy": f"p{ctx.iteration + 1}", "_triggers": relabel_next}

    return Graph([
        Node("init", stage(init), outputs=["x", "rm", "policy"], phase="setup"),
        Node("collect", stage(collect), inputs=["x", "policy"], outputs=["rollouts", "rollouts_path"]),
        Node("label", stage(label), inputs=["rollouts"], outputs=["labels"],
             schedule=Schedule("on_trigger", trigger="relabel")),
        Node("rm_update", stage(rm_update), inputs=["rollouts", "rm"], outputs=["rm"],
             schedule=Schedule("every", every=2)),
        Node("policy_update", stage(policy_update), inputs=["x", "rm"], outputs=["x", "policy"]),
    ])


def run_fake_loop(run_dir, calls, injector=None, initial=None):
    injector = injector or CrashInjector()
    with CrashingLedger(run_dir, injector) as ledger:
        runner = Runner(fake_loop(calls), run_dir, ledger, 3, initial or {"seed": 0},
                        on_node_start=lambda ctx: injector.point(("start", ctx.iteration, ctx.node)),
                        on_node_end=lambda ctx, updates: injector.point(("end", ctx.iteration, ctx.node)))
        return runner.run()


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
    final = run_fake_loop(tmp_path, calls)
    completions, statuses, metrics, artifacts = ledger_summary(tmp_path)
    assert final["x"] == 125 and final["policy"] == "p3" and final["labels"] == 111
    assert final["triggers"] == ["relabel"] and final["iteration"] == 2 and final["seed"] == 0
    assert statuses == {"done": 10, "skipped": 3}
    assert set(completions.values()) == {1} and set(calls.values()) == {1}
    assert len(artifacts) == 3 and (tmp_path / final["rollouts_path"]).read_text() == "48"
    # a finished run resumes to the same state without running anything
    assert run_fake_loop(tmp_path, calls) == final and sum(calls.values()) == 10


def test_resume_after_crash_at_every_boundary(tmp_path):
    clean_calls = Counter()
    clean_final = run_fake_loop(tmp_path / "clean", clean_calls)
    clean_completions, clean_statuses, clean_metrics, clean_artifacts = ledger_summary(tmp_path / "clean")
    # Each node that runs has 3 boundaries (before fn, before commit, after commit);
    # a skipped node has one (its commit).
    expected_boundaries = 3 * clean_statuses["done"] + clean_statuses["skipped"]

    tried, kinds = 0, Counter()
    for k in range(1, expected_boundaries + 10):
        run_dir, calls, injector = tmp_path / f"crash_{k}", Counter(), CrashInjector(crash_at=k)
        try:
            run_fake_loop(run_dir, calls, injector)
        except FakeCrash:
            pass
        if injector.crashed_at is None:
            break  # k is past the last boundary: the run completed
        tried += 1
        kinds[injector.crashed_at[0:2] if injector.crashed_at[0] == "commit" else injector.crashed_at[0]] += 1

        final = run_fake_loop(run_dir, calls)  # a new Runner and Ledger resume
        completions, statuses, metrics, artifacts = ledger_summary(run_dir)
        assert final == clean_final, injector.crashed_at
        assert completions == clean_completions  # exactly one done/skipped row each
        assert metrics == clean_metrics and artifacts == clean_artifacts  # nothing duplicated
        where = injector.crashed_at
        reran = Counter({(where[2], where[3]): 1}) if where[:2] == ("commit", "done") else Counter()
        assert calls == clean_calls + reran, where  # no completed node ran twice
        interrupted = where[0] == "start" or where[:2] == ("commit", "done")
        assert statuses["failed"] == int(interrupted)
        if reran:  # the uncommitted attempt's files were moved aside, not deleted
            iteration, node = where[2], where[3]
            parent = run_dir / ("setup" if iteration == -1 else f"iter_{iteration:03d}")
            assert (parent / f"{node}.interrupted-1" / "out.txt").exists()

    assert tried == expected_boundaries == 33
    assert kinds == {"start": 10, ("commit", "done"): 10, ("commit", "skipped"): 3, "end": 10}


def count_up(ctx):
    return {"n": ctx.state["n"] + 1}


def test_stop_loop_records_nothing_and_resumes(tmp_path):
    with Ledger(tmp_path / "clean") as ledger:
        clean = Runner(Graph([Node("a", count_up, ["n"], ["n"])], external={"n"}), tmp_path / "clean", ledger, 3,
                       {"n": 0}).run()
    waiting = {"labels_ready": False}

    def wait_for_labels(ctx):
        if ctx.iteration == 1 and not waiting["labels_ready"]:
            raise StopLoop("waiting for 5 human labels")
        return {"n": ctx.state["n"] + 1}

    graph = Graph([Node("a", wait_for_labels, ["n"], ["n"])], external={"n"})
    with Ledger(tmp_path / "run") as ledger:
        stopped = Runner(graph, tmp_path / "run", ledger, 3, {"n": 0}).run()
        assert stopped["_stopped"] == "waiting for 5 human labels" and stopped["n"] == 1
        assert [(r["iteration"], r["status"]) for r in ledger.stage_history()] == [(0, "done")]
    waiting["labels_ready"] = True
    with Ledger(tmp_path / "run") as ledger:
        assert Runner(graph, tmp_path / "run", ledger, 3, {"n": 0}).run() == clean


def test_failing_node_is_recorded_and_rerun_on_resume(tmp_path):
    attempts = Counter()

    def flaky(ctx):
        attempts[ctx.iteration] += 1
        (ctx.stage_dir / "partial.tmp").mkdir()
        (ctx.stage_dir / "log.txt").write_text("started")
        if ctx.iteration == 1 and attempts[1] == 1:
            raise ValueError("CUDA out of memory")
        return {"n": ctx.state["n"] + 1}

    graph = Graph([Node("train", flaky, ["n"], ["n"])], external={"n"})
    with Ledger(tmp_path) as ledger:
        with pytest.raises(ValueError):
            Runner(graph, tmp_path, ledger, 3, {"n": 0}).run()
        failed = [r for r in ledger.stage_history() if r["status"] == "failed"]
        assert [(r["iteration"], r["error"]) for r in failed] == [(1, "ValueError: CUDA out of memory")]
        assert Runner(graph, tmp_path, ledger, 3, {"n": 0}).run()["n"] == 3
    assert attempts == {0: 1, 1: 2, 2: 1}
    aside = tmp_path / "iter_001" / "train.interrupted-1"
    assert (aside / "log.txt").exists() and not (aside / "partial.tmp").exists()


def test_undeclared_output_and_missing_runtime_input_fail_clearly(tmp_path):
    sneaky = Graph([Node("sneaky", lambda ctx: {"surprise": 1}, outputs=["declared"])])
    with Ledger(tmp_path / "a") as ledger, pytest.raises(GraphConfigError, match=r"'sneaky'.*\['surprise'\]"):
        Runner(sneaky, tmp_path / "a", ledger, 1, {}).run()
    starved = Graph([
        Node("label", noop, outputs=["labels"], schedule=Schedule("on_trigger", trigger="t")),
        Node("rm_update", noop, inputs=["labels"]),
    ])
    with Ledger(tmp_path / "b") as ledger:
        with pytest.raises(GraphConfigError, match=r"'rm_update' \(iteration 0\) needs \['labels'\]"):
            Runner(starved, tmp_path / "b", ledger, 1, {}).run()


# -- rollback ------------------------------------------------------------------------


def rollback_loop(scores):
    def policy_update(ctx):
        return {"policy": f"policy_{ctx.iteration}"}

    def evaluate(ctx):
        return {"score": scores[ctx.iteration], "_metrics": {"score": scores[ctx.iteration]}}

    def gate(ctx):
        s = ctx.state
        if s["score"] < s["best_score"] - 1.0:  # a bad drop: undo this iteration's update
            return {
                "policy": s["last_good_policy"],
                "_rollbacks": [{"detector": "score_drop", "reason": f"score fell to {s['score']}",
                                "restored_iteration": s["last_good_iteration"], "remedy": "halve lr"}],
                "_iteration_status": {"status": "rolled_back", "summary": {"score": s["score"]}},
            }
        return {"last_good_policy": s["policy"], "last_good_iteration": ctx.iteration,
                "best_score": max(s["best_score"], s["score"]),
                "_iteration_status": {"status": "accepted", "summary": {"score": s["score"]}}}

    def init(ctx):
        return {"policy": "sft", "last_good_policy": "sft", "last_good_iteration": -1, "best_score": 0.0}

    return Graph([
        Node("init", init, phase="setup",
             outputs=["policy", "last_good_policy", "last_good_iteration", "best_score"]),
        Node("policy_update", policy_update, inputs=["policy"], outputs=["policy"]),
        Node("evaluate", evaluate, inputs=["policy"], outputs=["score"]),
        Node("gate", gate, inputs=["score", "policy", "last_good_policy", "best_score"],
             outputs=["policy", "last_good_policy", "last_good_iteration", "best_score"]),
    ])


def test_gate_rolls_back_a_bad_iteration(tmp_path):
    with Ledger(tmp_path) as ledger:
        final = Runner(rollback_loop([1.0, 2.0, -5.0]), tmp_path, ledger, 3, {}).run()
        rollbacks, iterations = ledger.rollbacks(), ledger.iterations()
    assert final["policy"] == "policy_1" == final["last_good_policy"] and final["last_good_iteration"] == 1
    assert [(r["iteration"], r["detector"], r["restored_iteration"], r["remedy"]) for r in rollbacks] == [
        (2, "score_drop", 1, "halve lr")]
    assert [(i["iteration"], i["status"]) for i in iterations] == [
        (0, "accepted"), (1, "accepted"), (2, "rolled_back")]


def test_rollback_survives_a_crash_before_the_gate_commit(tmp_path):
    injector = CrashInjector()

    def crash_at_gate(ctx):
        if (ctx.iteration, ctx.node) == (1, "gate"):
            injector.crash_at = injector.seen + 1  # its completion transaction

    with CrashingLedger(tmp_path, injector) as ledger, pytest.raises(FakeCrash):
        Runner(rollback_loop([2.0, -5.0]), tmp_path, ledger, 2, {}, on_node_start=crash_at_gate).run()
    with Ledger(tmp_path) as ledger:
        assert ledger.rollbacks() == []  # rolled back together with the stage completion
        final = Runner(rollback_loop([2.0, -5.0]), tmp_path, ledger, 2, {}).run()
        assert final["policy"] == "policy_0" and len(ledger.rollbacks()) == 1


def test_resume_extends_a_run_but_refuses_a_changed_graph(tmp_path):
    with Ledger(tmp_path) as ledger:
        assert Runner(Graph([Node("a", count_up, ["n"], ["n"])], external={"n"}), tmp_path, ledger, 2,
                      {"n": 0}).run()["n"] == 2
        longer = Runner(Graph([Node("a", count_up, ["n"], ["n"])], external={"n"}), tmp_path, ledger, 3, {"n": 0})
        assert longer.run()["n"] == 3
        added = Graph([Node("a", count_up, ["n"], ["n"]), Node("b", noop)], external={"n"})
        with pytest.raises(GraphConfigError, match=r"'b' never ran at iteration 0.*graph changed"):
            Runner(added, tmp_path, ledger, 3, {"n": 0}).run()


def test_bad_ledger_instruction_fails_the_stage_without_partial_rows(tmp_path):
    def gate(ctx):
        return {"_metrics": {"score": 1.0}, "_rollbacks": [{"detector": "score_drop"}]}  # no reason

    with Ledger(tmp_path) as ledger:
        with pytest.raises(TypeError, match="reason"):
            Runner(Graph([Node("gate", gate)]), tmp_path, ledger, 1, {}).run()
        assert [r["status"] for r in ledger.stage_history()] == ["failed"]
        assert ledger.metrics() == [] and ledger.rollbacks() == []
