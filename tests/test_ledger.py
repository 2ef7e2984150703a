"""The SQLite run ledger: stage bookkeeping, artifact hashes, metrics, config fingerprint."""

import sqlite3

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
    assert [str(d) for d in differences] == [
        "n_iterations: 3 -> <absent>", "policy.lr: 1e-06 -> 2e-06", "seed: <absent> -> 7"]


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
