"""The SQLite run ledger: stage bookkeeping, artifact hashes, metrics, config fingerprint."""

import contextlib
import json
import random
import sqlite3
from pathlib import Path

import pytest

from rlhf_ops.ledger import ConfigChangedError, Ledger, hash_path


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "run") as ledger:
        yield ledger


def test_creates_wal_database_in_run_dir(ledger):
    assert ledger.path.name == "ledger.sqlite" and ledger.path.exists()
    assert ledger._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_stage_lifecycle_and_last_completed(ledger):
    assert ledger.last_completed() is None
    first = ledger.begin_stage(-1, "setup")
    assert not ledger.completed(-1, "setup")
    ledger.finish_stage(first, "done", {"x": 1}, wall_s=0.5)
    skipped = ledger.begin_stage(0, "label")
    ledger.finish_stage(skipped, "skipped", {"x": 1, "iteration": 0}, wall_s=0.0)
    failed = ledger.begin_stage(0, "collect")
    ledger.finish_stage(failed, "failed", {"x": 1}, wall_s=0.1, error="boom")

    assert ledger.completed(-1, "setup") and ledger.completed(0, "label")
    assert not ledger.completed(0, "collect")
    assert ledger.last_completed() == (0, "label", {"x": 1, "iteration": 0})
    history = ledger.stage_history()
    assert [(r["node"], r["status"]) for r in history] == [
        ("setup", "done"), ("label", "skipped"), ("collect", "failed")]
    assert history[2]["error"] == "boom" and history[0]["state"] == {"x": 1}
    with pytest.raises(ValueError, match="unknown stage status"):
        ledger.finish_stage(first, "finished", {}, 0.0)


def test_mark_interrupted_and_discard(ledger):
    crashed = ledger.begin_stage(0, "policy_update")
    stopped = ledger.begin_stage(0, "label")
    ledger.discard_stage(stopped)
    assert ledger.mark_interrupted() == 1
    (row,) = ledger.stage_history()
    assert row["id"] == crashed and row["status"] == "failed" and row["error"] == "interrupted"


def test_transaction_is_all_or_nothing(ledger):
    stage = ledger.begin_stage(0, "evaluate")
    with pytest.raises(RuntimeError):
        with ledger.transaction():
            ledger.log_metrics(0, "evaluate", {"reward": 1.0})
            ledger.finish_stage(stage, "done", {}, 1.0)
            raise RuntimeError("crash before commit")
    assert ledger.metrics() == [] and not ledger.completed(0, "evaluate")
    with ledger.transaction():  # the connection is usable afterwards
        ledger.log_metrics(0, "evaluate", {"reward": 2.0})
    assert [m["value"] for m in ledger.metrics()] == [2.0]


def test_file_artifact_hash_detects_modification(ledger, tmp_path):
    path = ledger.run_dir / "iter_000" / "collect" / "rollouts.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"prompt": "hi"}\n')
    ledger.record_artifact(3, 0, "collect", "rollouts", path)
    (row,) = ledger.artifacts()
    assert row["path"] == str(path) and row["bytes"] == path.stat().st_size
    assert row["sha256"] == hash_path(path)[0] and len(row["sha256"]) == 64
    assert ledger.verify_artifact(path)
    path.write_text('{"prompt": "ho"}\n')
    assert not ledger.verify_artifact(path)
    path.unlink()
    assert not ledger.verify_artifact(path)
    with pytest.raises(KeyError):
        ledger.verify_artifact(tmp_path / "never_recorded")


def _make_tree(root, files):
    for rel, text in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_directory_hash_covers_names_and_contents(ledger, tmp_path):
    files = [("config.json", "{}"), ("shards/a.bin", "aaaa"), ("shards/b.bin", "bb")]
    first, second = tmp_path / "first", tmp_path / "second"
    _make_tree(first, files)
    _make_tree(second, list(reversed(files)))  # creation order must not matter
    assert hash_path(first) == hash_path(second)
    assert hash_path(first)[1] == 8

    (second / "shards" / "b.bin").rename(second / "shards" / "c.bin")
    assert hash_path(first)[0] != hash_path(second)[0]

    ledger.record_artifact(1, 2, "policy_update", "policy", first)
    assert ledger.verify_artifact(first)
    (first / "shards" / "a.bin").write_text("aaab")
    assert not ledger.verify_artifact(first)
    with pytest.raises(FileNotFoundError):
        hash_path(tmp_path / "missing")


def test_artifacts_filter_and_outside_paths(ledger, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    inside = ledger.run_dir / "rm.txt"
    inside.write_text("y")
    ledger.record_artifact(1, 0, "collect", "rollouts", outside)
    ledger.record_artifact(2, 1, "rm_update", "reward_model", inside)
    assert [a["path"] for a in ledger.artifacts()] == [str(outside), str(inside)]
    assert [a["node"] for a in ledger.artifacts(iteration=1)] == ["rm_update"]
    assert [a["node"] for a in ledger.artifacts(kind="rollouts")] == ["collect"]
    # Paths inside the run dir are stored relative to it, so the dir can move.
    stored = ledger._conn.execute("SELECT path FROM artifacts ORDER BY id").fetchall()
    assert [r[0] for r in stored] == [str(outside), "rm.txt"]


def test_metrics_round_trip_skips_non_numeric(ledger):
    ledger.log_metrics(0, "evaluate", {"reward": 1.5, "kl": 2, "note": "hi", "none": None, "ok": True})
    ledger.log_metrics(1, "evaluate", {"reward": -0.25})
    assert [(m["iteration"], m["key"], m["value"]) for m in ledger.metrics()] == [
        (0, "reward", 1.5), (0, "kl", 2.0), (0, "ok", 1.0), (1, "reward", -0.25)]
    assert [m["value"] for m in ledger.metrics(iteration=1)] == [-0.25]


def test_rollbacks_and_iterations(ledger):
    ledger.set_iteration(0, "running", {})
    ledger.set_iteration(0, "accepted", {"reward": 1.0})
    ledger.set_iteration(1, "rolled_back", {"reward": -3.0})
    assert [(r["iteration"], r["status"], r["summary"]) for r in ledger.iterations()] == [
        (0, "accepted", {"reward": 1.0}), (1, "rolled_back", {"reward": -3.0})]
    with pytest.raises(ValueError):
        ledger.set_iteration(2, "great", {})
    ledger.record_rollback(1, "reward_drop", "reward fell by 4", restored_iteration=0, remedy="lower lr")
    (rollback,) = ledger.rollbacks()
    assert rollback["detector"] == "reward_drop" and rollback["restored_iteration"] == 0


CONFIG = {
    "run_dir": "/runs/a",
    "n_iterations": 3,
    "policy": {"lr": 1e-6, "model": "tiny"},
    "hydra": {"run": {"dir": "/x"}},
}


def test_check_config_without_previous_run(ledger):
    assert ledger.check_config(CONFIG) == []


def test_check_config_lists_differing_keys(ledger):
    run_id = ledger.start_run(CONFIG)
    with ledger.transaction():  # a step finished: the run dir now holds progress made with CONFIG
        ledger.finish_stage(ledger.begin_stage(-1, "prepare"), "done", {}, 0.0)
    ledger.end_run(run_id, "stopped")
    assert ledger.runs()[0]["status"] == "stopped"
    assert ledger.check_config(CONFIG) == []

    changed = {**CONFIG, "policy": {"lr": 2e-6, "model": "tiny"}, "seed": 7}
    del changed["n_iterations"]
    with pytest.raises(ConfigChangedError) as caught:
        ledger.check_config(changed)
    message = str(caught.value)
    assert "policy.lr: 1e-06 -> 2e-06" in message
    assert "seed: <absent> -> 7" in message and "n_iterations: 3 -> <absent>" in message
    assert "allow_config_change=true" in message and str(ledger.run_dir) in message
    assert isinstance(caught.value, ValueError)
    assert [d.key for d in caught.value.differences] == ["n_iterations", "policy.lr", "seed"]

    differences = ledger.check_config(changed, allow_changed=True)
    shown = [str(d) for d in differences]
    assert shown[:2] == ["n_iterations: 3 -> <absent>", "policy.lr: 1e-06 -> 2e-06"]
    assert shown[2].startswith("seed: <absent> -> 7  (a key this version of rlhf_ops has and the one that "
                               "started the run did not"), "a key added since the run started says so"
    # A key added by a newer rlhf_ops and left at its default is no change: a run resumes across an upgrade.
    assert ledger.check_config({**CONFIG, "lora": {"r": 0}}, new_key_defaults={"lora.r": 0}) == []
    with pytest.raises(ConfigChangedError, match="lora.r: <absent> -> 8"):
        ledger.check_config({**CONFIG, "lora": {"r": 8}}, new_key_defaults={"lora.r": 0})


def test_check_config_ignores_location_and_launcher_keys(ledger):
    ledger.start_run(CONFIG)
    moved = {**CONFIG, "run_dir": "/elsewhere", "overwrite": True, "allow_config_change": True,
             "hydra": {"run": {"dir": "/y"}, "job": {"name": "z"}}}
    assert ledger.check_config(moved) == []
    # The latest run is the reference: a resumed run with a new config becomes it.
    ledger.start_run({**CONFIG, "n_iterations": 5})
    assert ledger.check_config({**CONFIG, "n_iterations": 5}) == []


def test_reopen_sees_committed_rows(tmp_path):
    with Ledger(tmp_path) as ledger:
        ledger.finish_stage(ledger.begin_stage(0, "collect"), "done", {"a": 1}, 0.1)
    with Ledger(tmp_path) as reopened:
        assert reopened.last_completed() == (0, "collect", {"a": 1})
    with pytest.raises(sqlite3.ProgrammingError):  # closed by the context manager
        ledger.stage_history()


def test_a_run_dir_where_no_step_finished_takes_a_new_config(ledger):
    """The first attempt failed on bad input before any step finished: fixing the input and running
    again is not a config change to refuse (there is no progress to be consistent with)."""
    ledger.end_run(ledger.start_run(CONFIG), "failed")
    changed = {**CONFIG, "seed": 7}
    assert ledger.check_config(changed) == []
    with ledger.transaction():
        ledger.finish_stage(ledger.begin_stage(-1, "prepare"), "done", {}, 0.0)
    with pytest.raises(ConfigChangedError):
        ledger.check_config(changed)


# -- the loop state is stored as deltas ------------------------------------------------------------------

def _exact(state):
    # What the ledger used to return: the JSON round trip of the state, keys sorted. Comparing encodings
    # also tells 1 from 1.0 and True, and lets a NaN equal itself.
    return json.dumps(state, sort_keys=True)


def _check_last(ledger, expected):
    got = ledger.last_completed()
    if expected is None:
        assert got is None
        return
    assert got[:2] == expected[:2]
    assert json.dumps(got[2]) == _exact(expected[2])  # same values, same types, keys in sorted order


def _random_states(seed, n):
    """(iteration, node, status, state): growing lists, dict and type changes, None, NaN, removed keys,
    a truncated list (a rollback), failed rows in between."""
    rng = random.Random(seed)
    state = {"history": [], "log": [], "work": {}, "policy": "p0", "rm": None, "cursor": 0, "scale": 1}
    for k in range(n):
        state = json.loads(json.dumps(state))
        change = rng.random()
        if change < 0.3:
            state["history"].append({"reward": rng.random(), "kl": float("nan") if rng.random() < 0.2 else k})
        elif change < 0.4:
            state["history"] = state["history"][: len(state["history"]) // 2]
        elif change < 0.5:
            state["work"] = {}
        elif change < 0.6:
            state.pop("extra", None) if "extra" in state else state.update(extra={"k": k, "none": None})
        elif change < 0.7:
            state["rm"] = None if state["rm"] else f"rm{k}"
        elif change < 0.8:
            state["scale"] = {1: 1.0, 1.0: True, True: 1}[state["scale"]]  # equal in Python, not in JSON
        state["work"][rng.choice("abc")] = rng.choice([k, None, [k], {"x": k}])
        state["log"].append(k)
        state["cursor"] += rng.randint(0, 1)
        status = rng.choice(["done"] * 6 + ["skipped", "failed"])
        yield k // 5, f"node{k % 5}", status, state


def test_many_rows_round_trip_and_reopen(tmp_path):
    expected, rows = None, {}
    with Ledger(tmp_path) as ledger:
        for k, (iteration, node, status, state) in enumerate(_random_states(0, 300)):
            stage = ledger.begin_stage(iteration, node)
            with ledger.transaction():
                ledger.finish_stage(stage, status, state, 0.1, error="boom" if status == "failed" else None)
            if status != "failed":
                expected = (iteration, node, json.loads(json.dumps(state)))
                rows[stage] = expected[2]
            state["log"].append("changed by the caller afterwards")  # the ledger kept its own copy
            _check_last(ledger, expected)
            if k % 50 == 49:
                with Ledger(tmp_path) as reopened:
                    _check_last(reopened, expected)
        assert ledger.last_completed()[2] is not ledger.last_completed()[2]
    with Ledger(tmp_path) as reopened:
        _check_last(reopened, expected)
        history = reopened.stage_history(states=True)
        for row in history:
            if row["id"] in rows:
                assert _exact(row["state"]) == _exact(rows[row["id"]]), row["id"]
        first = next(k for k, row in enumerate(history) if row["status"] != "failed")
        assert all(row["state_delta"] is not None for row in history[first + 1:])  # only the first is whole


def test_a_rolled_back_finish_leaves_no_trace(ledger):
    ledger.finish_stage(ledger.begin_stage(0, "collect"), "done", {"log": [1], "p": "a"}, 0.1)
    stage = ledger.begin_stage(0, "label")
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.finish_stage(stage, "done", {"log": [1, 2], "p": "b"}, 0.1)
        _check_last(ledger, (0, "label", {"log": [1, 2], "p": "b"}))  # seen inside the transaction
        raise RuntimeError("crash before commit")
    _check_last(ledger, (0, "collect", {"log": [1], "p": "a"}))
    ledger.finish_stage(stage, "done", {"log": [1, 3], "p": "c"}, 0.1)
    with Ledger(ledger.run_dir) as reopened:
        _check_last(reopened, (0, "label", {"log": [1, 3], "p": "c"}))


def test_rows_finished_out_of_order(ledger):
    ledger.finish_stage(ledger.begin_stage(0, "a"), "done", {"n": [1]}, 0.1)
    older, newer = ledger.begin_stage(0, "b"), ledger.begin_stage(0, "c")
    ledger.finish_stage(newer, "done", {"n": [1, 3]}, 0.1)
    ledger.finish_stage(older, "done", {"n": [1, 2]}, 0.1)
    _check_last(ledger, (0, "c", {"n": [1, 3]}))  # the last row, as before
    with Ledger(ledger.run_dir) as reopened:
        assert [r["state"] for r in reopened.stage_history(states=True)] == [{"n": [1]}, {"n": [1, 2]}, {"n": [1, 3]}]
        reopened.finish_stage(reopened.begin_stage(0, "d"), "done", {"n": [1, 3, 4]}, 0.1)
        with pytest.raises(ValueError, match="later states build on it"):
            reopened.finish_stage(newer, "done", {"n": []}, 0.1)
        _check_last(reopened, (0, "d", {"n": [1, 3, 4]}))


LEGACY_STAGE_RUNS = """CREATE TABLE stage_runs (id INTEGER PRIMARY KEY, run_id INTEGER, iteration INTEGER, node TEXT,
    status TEXT, started_at TEXT, ended_at TEXT, wall_s REAL, state_json TEXT, error TEXT)"""


def test_a_ledger_with_full_states_still_reads_and_continues(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with contextlib.closing(sqlite3.connect(tmp_path / "ledger.sqlite")) as c, c:
        c.execute(LEGACY_STAGE_RUNS)
        for iteration, node, status, state in [(-1, "setup", "done", {"h": [0], "p": "a"}),
                                               (0, "collect", "done", {"h": [0, 1], "p": "a"}),
                                               (0, "label", "failed", {"h": [0, 1], "p": "x"}),
                                               (0, "label", "done", {"h": [0, 1], "p": "b"}),
                                               (0, "gate", "running", None)]:
            c.execute("INSERT INTO stage_runs (iteration, node, status, state_json) VALUES (?, ?, ?, ?)",
                      (iteration, node, status, None if state is None else json.dumps(state, sort_keys=True)))
    with Ledger(tmp_path) as ledger:
        _check_last(ledger, (0, "label", {"h": [0, 1], "p": "b"}))
        assert ledger.mark_interrupted() == 1
        ledger.finish_stage(ledger.begin_stage(0, "gate"), "done", {"h": [0, 1, 2], "p": "b"}, 0.1)
        (delta,) = ledger._conn.execute("SELECT state_delta_json FROM stage_runs WHERE node = 'gate' "
                                        "AND status = 'done'").fetchone()
        assert json.loads(delta) == {"append": {"h": [2]}}
    with Ledger(tmp_path) as reopened:
        _check_last(reopened, (0, "gate", {"h": [0, 1, 2], "p": "b"}))
        states = [(r["node"], r["state"]) for r in reopened.stage_history(states=True)]
        assert states[1:4] == [("collect", {"h": [0, 1], "p": "a"}), ("label", {"h": [0, 1], "p": "x"}),
                               ("label", {"h": [0, 1], "p": "b"})]


def test_stored_state_per_row_stays_bounded_as_the_run_grows(tmp_path):
    """Rows shaped like the loop's (LoopState, its history and log growing every iteration): the bytes a
    row stores do not grow with the iteration, so the ledger grows linearly."""
    from rlhf_ops.loop.state import IterationWork, LastGood, LoopState

    state = LoopState(data={"prompts": "/r/setup/prepare/prompts.parquet"}, policy="/r/setup/sft/policy",
                      stage_meta={"sft": {"loss": 1.0, "wall_s": 3.0}})
    per_row = []
    with Ledger(tmp_path) as ledger:
        ledger._conn.execute("PRAGMA synchronous=OFF")  # fewer fsyncs: this test is about sizes
        for iteration in range(60):
            d = f"/r/iter_{iteration:03d}"
            for node in ("collect", "label", "rm_update", "policy_update", "evaluate", "gate"):
                if node == "collect":
                    state.work = IterationWork(completions=f"{d}/collect/completions.parquet")
                elif node == "label":
                    state.work.pairs = f"{d}/label/pairs.parquet"
                elif node == "policy_update":
                    state.work.candidate, state.work.beta = f"{d}/policy_update/policy", 0.1 + iteration / 1000
                elif node == "evaluate":
                    state.work.eval = {"reward": iteration / 7, "kl": iteration / 11, "gold": 0.5}
                elif node == "gate":
                    state.history.append(state.work.eval)
                    state.iterations_log.append({"iteration": iteration, "status": "accepted", **state.work.eval})
                    state.policy, state.cursor = state.work.candidate, state.cursor + 64
                    state.kl_state = {"beta": state.work.beta}
                    state.last_good = LastGood(iteration, state.policy, None, state.kl_state, {}, state.cursor,
                                               1.0, state.work.eval, None)
                with ledger.transaction():
                    ledger.finish_stage(ledger.begin_stage(iteration, node), "done", state.to_json(), 1.0)
        per_row = [n for (n,) in ledger._conn.execute(
            "SELECT length(coalesce(state_json, '')) + length(coalesce(state_delta_json, '')) FROM stage_runs "
            "ORDER BY id")]
        assert ledger.last_completed()[2] == json.loads(json.dumps(state.to_json()))
    late, early = per_row[-6:], per_row[6:12]  # the 2nd iteration's rows against the 60th's
    assert max(late) <= max(early) + 16, (early, late)  # a few more digits in the paths and numbers
    assert sum(per_row) < 60 * 6 * 1000


def _ledger_with_pages(run_dir: Path) -> Path:
    with Ledger(run_dir) as ledger:
        ledger.start_run({"seed": 0})
        for i in range(200):
            ledger.finish_stage(ledger.begin_stage(i, "collect"), "done", {"i": i, "history": list(range(i))}, 0.1)
    path = run_dir / "ledger.sqlite"
    assert not path.with_name("ledger.sqlite-wal").exists() and path.stat().st_size > 3 * 4096
    return path


def test_a_damaged_ledger_page_is_refused_naming_the_file(tmp_path):
    """Header and length intact, a page inside scribbled over: PRAGMA quick_check finds it at the start-up
    check (which opens the file immutable: nothing beside it changes) and on the ledger's own open."""
    import os

    from omegaconf import OmegaConf

    from rlhf_ops.ledger import LedgerDamaged, damage
    from rlhf_ops.validate import _run_dir_ledger

    path = _ledger_with_pages(tmp_path)
    assert damage(path) is None
    _run_dir_ledger(OmegaConf.create({"run_dir": str(tmp_path)}))  # a sound ledger passes
    raw = bytearray(path.read_bytes())
    raw[4096:8192] = os.urandom(4096)
    path.write_bytes(bytes(raw))
    listing = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match=f"run_dir: {path}: the run ledger is damaged"):
        _run_dir_ledger(OmegaConf.create({"run_dir": str(tmp_path)}))
    assert sorted(p.name for p in tmp_path.iterdir()) == listing and path.read_bytes() == bytes(raw)
    with pytest.raises(LedgerDamaged, match=f"{path}: the run ledger is damaged .*restore it"):
        Ledger(tmp_path)


def test_states_are_stored_relative_to_the_run_dir_and_read_back_where_it_is(tmp_path):
    """A path under the run dir is stored as <run_dir>/...; the ledger opened at a new place gives it back
    there. Paths outside (a user's base model) and look-alike siblings stay as they are."""
    import shutil

    from rlhf_ops.ledger import RUN_DIR_MARK

    run_dir = tmp_path / "run"
    inside = str(run_dir / "iter_000" / "policy_update" / "policy")
    state = {"policy": inside, "base": "/models/base", "sibling": str(tmp_path / "run2" / "x"),
             "nested": {"paths": [inside, str(run_dir)]}, "history": [{"samples": inside}]}
    with Ledger(run_dir) as ledger:
        ledger.start_run({"seed": 0})
        ledger.finish_stage(ledger.begin_stage(0, "collect"), "done", state, 0.1)
        ledger.finish_stage(ledger.begin_stage(0, "label"), "done", {**state, "history": state["history"] * 2}, 0.1)
        ledger.set_iteration(0, "accepted", {"policy": inside})
        stored = ledger._conn.execute("SELECT state_json FROM stage_runs WHERE state_json IS NOT NULL").fetchone()[0]
    assert inside not in stored and f'"{RUN_DIR_MARK}/iter_000/policy_update/policy"' in stored
    assert '"/models/base"' in stored and str(tmp_path / "run2" / "x") in stored
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(run_dir), str(moved))
    with Ledger(moved) as ledger:
        _, _, got = ledger.last_completed()
        there = str(moved / "iter_000" / "policy_update" / "policy")
        assert got["policy"] == there and got["nested"]["paths"] == [there, str(moved)]
        assert got["history"] == [{"samples": there}] * 2 and got["base"] == "/models/base"
        assert got["sibling"] == str(tmp_path / "run2" / "x")
        assert ledger.iterations()[0]["summary"] == {"policy": there}
        assert [r["state"]["policy"] for r in ledger.stage_history(states=True)] == [there, there]
