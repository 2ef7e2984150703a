"""Kill the real tiny loop (the CLI, like kill -9) at chosen and random points, resume it with the same
command, and check the ledger, the leftovers and the final summary against one uninterrupted run.

The fast subset (CI) kills once at a node boundary inside iteration 0, once mid-write of a checkpoint,
once at a random time, and fills the disk once; it also runs the two-processes-on-one-run-dir and
changed-config cases. `-m slow` kills before and after every node. The full campaign (every node
boundary, every atomic write, random SIGKILLs, with a table of the results):
`OMP_NUM_THREADS=1 .venv/bin/python scripts/fault_injection.py --kills 20 --seed 0 --out /tmp/fi`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_ops.testing import faults

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import fault_injection as fi  # noqa: E402  (the campaign's runner and checks, shared with the tests)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> fi.Reference:
    """One uninterrupted run of the tiny loop (2 iterations), listing its atomic writes."""
    return fi.reference_run(tmp_path_factory.mktemp("reference") / "run")


def assert_resumed_like_reference(outcome: fi.Outcome) -> None:
    assert outcome.killed, outcome.problems
    assert outcome.resumed and outcome.consistent, outcome.problems
    assert outcome.equal, outcome.problems


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file's hash, and the ledger's rows (opening it may touch its WAL files, not its content).
    The lock file is left out: a stale one is taken over (and removed) before the config is checked."""
    snap = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if p.name.startswith("ledger.sqlite") or p.name == ".lock":
            continue
        snap[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    with contextlib.closing(sqlite3.connect(run_dir / "ledger.sqlite")) as c:
        snap["<ledger>"] = "\n".join(c.iterdump())
    return snap


# -- the fault hooks themselves ------------------------------------------------------------------------

def test_fault_specs_parse_and_typos_are_refused():
    assert faults.parse("-1:sft:before") == ("node", -1, "sft", "before", "")
    assert faults.parse("1:policy_update:after") == ("node", 1, "policy_update", "after", "")
    assert faults.parse("1:policy_update:after:SIGTERM") == ("node", 1, "policy_update", "after", "SIGTERM")
    assert faults.parse("write:3") == ("write", 3, "complete")
    assert faults.parse("write:3:mid") == ("write", 3, "mid")
    for bad in ("write:0", "write:x", "write:2:half", "1:sft", "one:sft:before", "1:sft:during",
                "1:sft:after:SIGKILL", "1:sft:after:sigterm"):
        with pytest.raises(faults.FaultSpecError, match="RLHF_OPS_FAULT"):
            faults.parse(bad)


WRITER = """
import pandas as pd
from rlhf_ops.artifacts import write_table, write_json_atomic
from rlhf_ops.testing import faults
faults.install()  # as rlhf_ops.run does at start-up when RLHF_OPS_FAULT is set
df = pd.DataFrame({"a": list(range(2000))})
write_table(df, "t1.parquet")
write_json_atomic("j2.json", {"x": list(range(2000))})
write_table(df, "t3.parquet")
print("survived")
"""


@pytest.mark.parametrize("spec, left", [
    ("write:2", {"t1.parquet", "j2.json.tmp"}),
    ("write:2:mid", {"t1.parquet", "j2.json.tmp"}),
    ("write:3", {"t1.parquet", "j2.json", "t3.parquet.tmp"}),
    ("write:3:mid", {"t1.parquet", "j2.json", "t3.parquet.tmp"}),
])
def test_write_fault_dies_in_the_nth_atomic_write_before_the_rename(tmp_path, spec, left):
    import pandas as pd

    log = tmp_path / "writes.log"
    p = subprocess.run([sys.executable, "-c", WRITER], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "RLHF_OPS_FAULT": spec, "RLHF_OPS_FAULT_LOG": str(log)})
    assert p.returncode == faults.EXIT_CODE and "survived" not in p.stdout, p.stderr
    assert {f.name for f in tmp_path.iterdir()} - {"writes.log"} == left
    assert len(log.read_text().splitlines()) == int(spec.split(":")[1]), "one log line per write, up to the fault"
    (tmp,) = tmp_path.glob("*.tmp")
    read = (lambda: json.loads(tmp.read_text())) if tmp.name.startswith("j") else (lambda: pd.read_parquet(tmp))
    if spec.endswith(":mid"):
        with pytest.raises(Exception):  # cut short: unreadable
            read()
    else:
        assert len(read()["x" if tmp.name.startswith("j") else "a"]) == 2000, "a complete temporary"


def test_write_hook_is_silent_without_the_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    monkeypatch.delenv(faults.LOG_ENV, raising=False)
    before = faults._writes
    from rlhf_ops.artifacts import write_json_atomic

    write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert faults._writes == before and json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


# -- the checks are not vacuous ------------------------------------------------------------------------

def test_checker_passes_the_reference_and_catches_each_inconsistency(reference, tmp_path):
    assert fi.check_run_dir(reference.run_dir, reference) == []
    assert fi.compare_summaries(reference.summary, fi.read_summary(reference.run_dir)) == []
    bad = tmp_path / "bad"
    shutil.copytree(reference.run_dir, bad)
    (bad / "iter_001" / "label" / "pairs.parquet.tmp").write_bytes(b"partial")
    (bad / "iter_000" / "stray").mkdir()
    with contextlib.closing(sqlite3.connect(bad / "ledger.sqlite")) as c, c:
        c.execute("insert into stage_runs (iteration, node, status, state_json, state_delta_json, state_base_id) "
                  "select iteration, node, 'done', state_json, state_delta_json, state_base_id from stage_runs "
                  "where node = 'collect' and iteration = 0")
        c.execute("insert into stage_runs (iteration, node, status) values (1, 'gate', 'running')")
    ckpt = bad / "iter_000" / "rm_update" / "rm" / "config.json"
    ckpt.write_text(ckpt.read_text() + " ")
    problems = "\n".join(fi.check_run_dir(bad, reference))
    assert "pairs.parquet.tmp" in problems
    assert "(0, collect) has 2 done/skipped rows" in problems
    assert "(1, gate) is still 'running'" in problems
    assert "does not verify" in problems and "iter_000/rm_update/rm" in problems
    assert "not under an .interrupted-k" in problems and "iter_000/stray" in problems
    changed = json.loads(json.dumps(reference.summary))
    changed["iterations"][1]["gold"] += 1e-9
    changed["iterations"][0]["kl"] *= 1.001
    diffs = fi.compare_summaries(reference.summary, changed)
    assert len(diffs) == 2 and {d.split(":")[0] for d in diffs} == {"summary.iterations[1].gold",
                                                                     "summary.iterations[0].kl"}


# -- kills (CI subset) -----------------------------------------------------------------------------------

def test_boundary_kill_inside_iteration_0(reference, tmp_path):
    """Dies after iteration 0's RM update renamed its checkpoint into place, before the ledger commit:
    the finished-looking checkpoint must be moved aside, never used, and the node rerun."""
    run_dir = tmp_path / "run"
    outcome = fi.fault_kill(reference, run_dir, "boundary", "0:rm_update:after")
    assert_resumed_like_reference(outcome)
    aside = run_dir / "iter_000" / "rm_update.interrupted-1"
    assert (aside / "rm" / "stage_meta.json").is_file(), "the uncommitted attempt is kept aside"
    with contextlib.closing(sqlite3.connect(run_dir / "ledger.sqlite")) as c:
        rows = c.execute("select status, error from stage_runs where iteration = 0 and node = 'rm_update' "
                         "order by id").fetchall()
    assert rows == [("failed", "interrupted"), ("done", None)]


def test_kill_before_the_reward_model_warmup(reference, tmp_path):
    """The resume trains rm_warmup in a fresh process: its new score head, dropout and shuffles must
    come from the seed, not from whatever the SFT stage left in the process's RNG (the campaign's
    first finding: before every stage was seeded this resume trained another reward model)."""
    assert_resumed_like_reference(fi.fault_kill(reference, tmp_path / "run", "boundary", "-1:rm_warmup:before"))


def test_write_kill_mid_checkpoint(reference, tmp_path):
    """Dies while iteration 0's PPO checkpoint is half written (its largest file cut short)."""
    (n,) = [n for n, path in reference.writes if path == "iter_000/policy_update/policy.tmp"]
    outcome = fi.fault_kill(reference, tmp_path / "run", "write", f"write:{n}:mid")
    assert outcome.landed == "in iteration node policy_update (a .tmp present)"
    assert_resumed_like_reference(outcome)


def test_random_time_sigkill(reference, tmp_path):
    rng, duration = random.Random(0), reference.wall_s
    for attempt in range(3):
        delay = rng.uniform(0.0, 0.9 * duration)
        outcome = fi.random_kill(reference, tmp_path / f"run{attempt}", delay)
        if not isinstance(outcome, float):
            break
        duration = outcome  # finished before the kill: the machine is faster now than for the reference
    print(f"SIGKILL after {delay:.1f}s landed: {outcome.landed}")
    assert_resumed_like_reference(outcome)


def test_disk_full_in_a_checkpoint_write_fails_cleanly_and_resumes(reference, tmp_path):
    """ENOSPC where iteration 1's PPO checkpoint is renamed into place: the run exits 1 naming the
    error, the node is recorded 'failed', earlier checkpoints still verify, and the same command
    (space freed) finishes with the reference's summary."""
    (n,) = [n for n, path in reference.writes if path == "iter_001/policy_update/policy.tmp"]
    run_dir = tmp_path / "run"
    p = fi.run_cli(run_dir, env={"RLHF_OPS_FAULT": f"write:{n}:enospc"})
    assert p.returncode == 1
    assert "No space left on device" in p.stderr and "iter_001/policy_update/policy.tmp" in p.stderr
    rows = fi.ledger_rows(run_dir, "select node, status from stage_runs where iteration = 1 order by id")
    assert rows[-1] == ("policy_update", "failed")
    assert not list(run_dir.rglob("*.tmp")), "the failed write cleaned up after itself"
    from rlhf_ops.ledger import Ledger

    with Ledger(run_dir) as ledger:
        recorded = [a["path"] for a in ledger.artifacts()]
        assert recorded and all(ledger.verify_artifact(a) for a in recorded)
    outcome = fi.Outcome("write", f"write:{n}:enospc", killed=True)
    assert_resumed_like_reference(fi.resume_and_check(reference, run_dir, outcome))


SETUP_NODES = ["prepare", "sft", "rm_warmup", "baseline"]
ITERATION_NODES = ["collect", "label", "rm_update", "policy_update", "evaluate", "gate", "prune"]
PLAN = [(-1, n) for n in SETUP_NODES] + [(i, n) for i in (0, 1) for n in ITERATION_NODES]


@pytest.mark.slow
@pytest.mark.parametrize("point", [f"{i}:{n}:{where}" for i, n in PLAN for where in ("before", "after")])
def test_every_boundary_kill_point(reference, tmp_path, point):
    """Before and after every node of the reference (setup nodes at iteration -1)."""
    assert reference.nodes == PLAN, "the loop's graph changed: update PLAN"
    assert_resumed_like_reference(fi.fault_kill(reference, tmp_path / "run", "boundary", point))


# -- two processes on one run dir --------------------------------------------------------------------------

def test_run_dir_held_by_a_live_process_is_refused_untouched(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference.run_dir, run_dir)
    lock = {"pid": os.getpid(), "hostname": socket.gethostname(), "started_at": "2026-01-01T00:00:00+00:00",
            "token": "pytest"}
    (run_dir / ".lock").write_text(json.dumps(lock))
    before = snapshot(run_dir)
    p = fi.run_cli(run_dir)
    assert p.returncode == 1
    assert f"Run dir {run_dir} is in use by pid {os.getpid()} on this host" in p.stderr
    assert snapshot(run_dir) == before, "a refused run changes nothing in the run dir"
    assert json.loads((run_dir / ".lock").read_text()) == lock, "nor the live owner's lock"


def test_stale_lock_of_a_finished_process_is_taken_over(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference.run_dir, run_dir)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    (run_dir / ".lock").write_text(json.dumps({"pid": child.pid, "hostname": socket.gethostname(),
                                               "started_at": "2026-01-01T00:00:00+00:00", "token": "dead"}))
    p = fi.run_cli(run_dir)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"taking over stale lock {run_dir / '.lock'} from pid {child.pid}" in p.stdout + p.stderr
    assert "rlhf_ops: completed" in p.stdout and not (run_dir / ".lock").exists()
    assert fi.read_summary(run_dir)["status"] == "completed"


# -- a resume with a changed config ------------------------------------------------------------------------

def test_changed_config_on_resume_is_refused_then_allowed(reference, tmp_path):
    """Killed before iteration 1; a resume with other settings is refused listing every difference and
    changes nothing; with allow_config_change=true it resumes (a retention knob that does not change
    the numbers: the summary still equals the reference's)."""
    run_dir = tmp_path / "run"
    p = fi.run_cli(run_dir, env={"RLHF_OPS_FAULT": "1:collect:before"})
    assert p.returncode == faults.EXIT_CODE
    before = snapshot(run_dir)
    p = fi.run_cli(run_dir, "loop.keep_last=5", "seed=1")
    assert p.returncode == 1
    assert f"The config differs from the one run dir {run_dir} was started with:" in p.stderr
    assert "loop.keep_last: 2 -> 5" in p.stderr and "seed: 0 -> 1" in p.stderr
    assert "allow_config_change=true" in p.stderr
    assert snapshot(run_dir) == before, "a refused resume changes nothing in the run dir"
    p = fi.run_cli(run_dir, "loop.keep_last=5", "allow_config_change=true")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming with a changed config: loop.keep_last: 2 -> 5" in p.stdout + p.stderr
    assert fi.check_run_dir(run_dir, reference) == []
    assert fi.compare_summaries(reference.summary, fi.read_summary(run_dir)) == []
    runs = fi.ledger_rows(run_dir, "select config_json from runs order by id")
    assert [json.loads(c)["loop"]["keep_last"] for (c,) in runs] == [2, 5], "the new config is a new run"
