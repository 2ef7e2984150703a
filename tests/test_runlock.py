"""One process per run dir: RunLock refuses a live owner and takes over a dead one."""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from rlhf_ops.runlock import RunLock, RunLockedError


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid no longer exists
    return child.pid


def _write_lock(run_dir, content: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".lock").write_text(content)


def test_lock_file_content_and_release(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        owner = json.loads((tmp_path / "run" / ".lock").read_text())
        assert owner["pid"] == os.getpid() and owner["hostname"] == socket.gethostname()
        assert owner["started_at"] and lock.held
    assert not (tmp_path / "run" / ".lock").exists() and not lock.held


def test_second_lock_on_same_dir_raises_naming_pid(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError) as caught:
            RunLock(tmp_path).acquire()
        message = str(caught.value)
        assert f"pid {os.getpid()}" in message and str(tmp_path) in message
        assert "delete" in message and ".lock" in message
    with RunLock(tmp_path):  # free again once released
        pass


def test_stale_lock_of_dead_process_is_taken_over(tmp_path):
    dead = _dead_pid()
    _write_lock(tmp_path, json.dumps({"pid": dead, "hostname": socket.gethostname(),
                                      "started_at": "2024-01-01T00:00:00+00:00"}))
    with RunLock(tmp_path) as lock:
        assert lock.read_owner()["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("content", ["", '{"pid": 12', "not json", '["a list"]', '{"pid": "x"}'])
def test_unparsable_lock_from_crash_mid_write_is_taken_over(tmp_path, content):
    _write_lock(tmp_path, content)
    with RunLock(tmp_path) as lock:
        assert lock.read_owner()["pid"] == os.getpid()


def test_lock_from_another_host_is_not_taken_over(tmp_path):
    # We cannot check a pid on another machine, so its lock is respected.
    _write_lock(tmp_path, json.dumps({"pid": _dead_pid(), "hostname": "other-host.invalid"}))
    with pytest.raises(RunLockedError, match="other-host.invalid"):
        RunLock(tmp_path).acquire()


def test_release_only_removes_own_lock(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    someone_else = {"pid": 1, "hostname": socket.gethostname(), "started_at": "x", "token": "t"}
    (tmp_path / ".lock").write_text(json.dumps(someone_else))
    lock.release()
    assert json.loads((tmp_path / ".lock").read_text()) == someone_else
    assert not lock.held


def test_racing_takeovers_of_a_stale_lock_have_one_winner(tmp_path):
    _write_lock(tmp_path, json.dumps({"pid": _dead_pid(), "hostname": socket.gethostname()}))
    start, winners, refused = threading.Barrier(8), [], []

    def contend():
        lock = RunLock(tmp_path)
        start.wait()
        try:
            lock.acquire()
            winners.append(lock)
        except RunLockedError:
            refused.append(lock)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and len(refused) == 7
    assert winners[0].read_owner() == winners[0]._mine
    winners[0].release()
    assert not (tmp_path / ".lock").exists()
