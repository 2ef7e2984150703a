"""The real online loop on tiny models, end to end through the CLI: summary, ledger, resume after
a kill, the rollback path, the human label queue, and every stage once."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from conftest import REPO, TINY, run_cli

LOOP = ["+experiment=quickstart", *TINY, "loop.iterations=2"]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def ledger_rows(run_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(run_dir / "ledger.sqlite") as c:
        return c.execute(sql).fetchall()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("loop") / "run"
    p = run_cli(*LOOP, f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr[-3000:]
    return run_dir, p


def test_loop_end_to_end(full_run):
    run_dir, p = full_run
    s = summary(run_dir)
    assert s["status"] == "completed" and len(s["iterations"]) == 2
    for it in s["iterations"]:
        assert it["status"] in ("accepted", "rolled_back") and it["reasons"]
        for key in ("gold", "proxy", "kl", "length", "beta"):
            assert isinstance(it[key], float), key
    assert "ACCEPTED" in p.stdout or "ROLLED_BACK" in p.stdout, "one console line per iteration"
    done = ledger_rows(run_dir, "select iteration, node from stage_runs where status='done'")
    assert len(done) == len(set(done)) == 4 + 2 * 7, "setup + 2 x (collect..prune), each once"
    assert ledger_rows(run_dir, "select count(*) from artifacts where sha256 is not null")[0][0] > 5
    # every step's peak memory beside its wall time (rlhf_ops.memory), and in metrics.jsonl
    peaks = {(i, n): json.loads(m)["peak_rss_mb"] for i, n, m in
             ledger_rows(run_dir, "select iteration, node, memory_json from stage_runs where status='done'")}
    assert len(peaks) == len(done) and all(v > 100 for v in peaks.values()), peaks  # a process with torch: > 100 MB
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {(r["iteration"], r["node"]): r["peak_rss_mb"] for r in rows} == peaks
    good = json.loads((run_dir / "LATEST_GOOD").read_text())
    assert Path(good["policy"]).is_dir() and good["iteration"] == s["final"]["iteration"]
    store = run_dir / "preferences" / "store.parquet"
    import pandas as pd

    prefs = pd.read_parquet(store)
    assert set(prefs["iteration"]) == {0, 1} and prefs["pair_id"].is_unique
    assert {"labeler", "policy_checkpoint"} <= set(prefs.columns)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert any(json.loads(line)["node"] == "evaluate" for line in lines)
    # Each RM refresh judged old and new RM on the same held-out pairs; its verdict follows the
    # noise-aware rule (drop <= tolerance + z * paired SE keeps the new RM).
    from rlhf_ops.control.rm_update_policy import accept_new_rm

    for i in (0, 1):
        m = dict(ledger_rows(run_dir, f"select key, value from metrics where node='rm_update' and iteration={i}"))
        assert m["rm_updated"] == 1.0 and 0.0 <= m["rm_accuracy_se"] <= 1.0
        kept, _ = accept_new_rm(m["rm_old_accuracy"], m["rm_new_accuracy"], 0.02, m["rm_accuracy_se"], 1.645)
        assert m["rm_kept_new"] == float(kept)


def test_rerun_of_a_finished_run_does_nothing_twice(full_run):
    run_dir, _ = full_run
    before = ledger_rows(run_dir, "select count(*) from stage_runs")[0][0]
    p = run_cli(*LOOP, f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert ledger_rows(run_dir, "select count(*) from stage_runs")[0][0] == before


def test_resume_after_kill_matches_uninterrupted_run(full_run, tmp_path):
    """Killed (os._exit, like SIGKILL) after iteration 1's PPO finished but before the ledger
    commit; the same command resumes and ends with the same numbers as an uninterrupted run."""
    run_dir = tmp_path / "killed"
    p = run_cli(*LOOP, f"run_dir={run_dir}", env={"RLHF_OPS_FAULT": "1:policy_update:after"})
    assert p.returncode == 137
    assert summary(run_dir)["status"] == "running", "summary.json is derived after every step; the kill left it running"
    p = run_cli(*LOOP, f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (run_dir / "iter_001" / "policy_update.interrupted-1").is_dir(), "the uncommitted attempt is kept aside"
    a, b = summary(full_run[0]), summary(run_dir)
    exact = ("status", "gold", "length", "beta")
    assert [{k: it[k] for k in exact} for it in a["iterations"]] == [{k: it[k] for k in exact} for it in b["iterations"]]
    # Float sums over CPU threads are not bitwise reproducible across processes: the resumed PPO's
    # weights can differ in the last bits, which shows in the 7th digit of KL and proxy.
    for x, y in zip(a["iterations"], b["iterations"]):
        assert y["kl"] == pytest.approx(x["kl"], rel=1e-4, abs=1e-6)
        assert y["proxy"] == pytest.approx(x["proxy"], rel=1e-4, abs=1e-6)
    assert ledger_rows(run_dir, "select count(*) from stage_runs where status='done'")[0][0] == 18


def _same_iterations(a: dict, b: dict) -> None:
    exact = ("status", "gold", "length", "beta")
    assert [{k: it[k] for k in exact} for it in a["iterations"]] == [{k: it[k] for k in exact} for it in b["iterations"]]
    for x, y in zip(a["iterations"], b["iterations"]):  # see test_resume_after_kill_matches_uninterrupted_run
        assert y["kl"] == pytest.approx(x["kl"], rel=1e-4, abs=1e-6)
        assert y["proxy"] == pytest.approx(x["proxy"], rel=1e-4, abs=1e-6)


def _check_stopped_cleanly(proc, run_dir: Path, sig: str) -> None:
    import signal

    out, err = proc.communicate(timeout=300) if hasattr(proc, "communicate") else (proc.stdout, proc.stderr)
    assert proc.returncode == 128 + getattr(signal, sig), (proc.returncode, err[-2000:])
    last = err.strip().splitlines()[-1]
    assert f"interrupted by {sig}" in last and "resume with the same command" in last, last
    assert not ledger_rows(run_dir, "select * from stage_runs where status = 'running'")
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / ".lock").exists()
    assert ledger_rows(run_dir, "select status from runs")[-1] == ("failed",)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_inside_a_step_stops_cleanly_and_the_same_command_resumes(full_run, tmp_path, sig):
    """SIGTERM (a cluster's preemption) or SIGINT (Ctrl-C) arriving inside iteration 1's PPO step (its work
    done, not yet committed; sent by the fault hook, so the point is exact on any machine): one line saying
    how to resume, the step's row failed with Interrupted (not 'running'), no temporary output, the lock
    released; the same command then ends with the uninterrupted run's numbers."""
    run_dir = tmp_path / sig
    p = run_cli(*LOOP, f"run_dir={run_dir}", env={"RLHF_OPS_FAULT": f"1:policy_update:after:{sig}"})
    _check_stopped_cleanly(p, run_dir, sig)
    rows = ledger_rows(run_dir, "select iteration, node, error from stage_runs where status = 'failed'")
    assert [(i, n) for i, n, _ in rows] == [(1, "policy_update")], rows
    assert rows[0][2].startswith("Interrupted"), rows
    p = run_cli(*LOOP, f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr[-3000:]
    _same_iterations(summary(full_run[0]), summary(run_dir))


def test_sigterm_from_outside_while_ppo_trains_stops_cleanly_and_resumes(full_run, tmp_path):
    """The same from another process, as a scheduler sends it: SIGTERM as soon as iteration 0's PPO has
    started training (its temporary output exists; the run has a whole iteration left, so it cannot
    have finished). Whether the signal lands inside PPO or between steps depends on the machine's speed;
    either way nothing is left 'running' and any failed row is the interrupted one."""
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "outside"
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_ops", *LOOP, f"run_dir={run_dir}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "iter_000" / "policy_update" / "policy.tmp").is_dir():  # the PPO stage trains into it
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the signal could be sent"
    proc.send_signal(signal.SIGTERM)
    _check_stopped_cleanly(proc, run_dir, "SIGTERM")
    errors = [e for (e,) in ledger_rows(run_dir, "select error from stage_runs where status = 'failed'")]
    assert all(e.startswith("Interrupted") for e in errors), errors
    p = run_cli(*LOOP, f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr[-3000:]
    _same_iterations(summary(full_run[0]), summary(run_dir))


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("how", ["copy", "mv"])
def test_a_killed_run_dir_copied_or_moved_resumes_where_it_is(full_run, tmp_path, how):
    """Killed (like SIGKILL) before iteration 1's PPO; then copied elsewhere with the original deleted
    (cp -r, WAL file and all), or moved with `mv`; the same command with the new run_dir resumes there
    and ends with the uninterrupted run's numbers, and nothing it reads or writes names the old place."""
    import shutil
    import subprocess

    original = tmp_path / "first" / "run"
    p = run_cli(*LOOP, f"run_dir={original}", env={"RLHF_OPS_FAULT": "1:policy_update:before"})
    assert p.returncode == 137, p.stderr[-2000:]
    there = tmp_path / "elsewhere" / "run"
    there.parent.mkdir()
    if how == "copy":
        shutil.copytree(original, there, symlinks=True)
        shutil.rmtree(original)
    else:
        subprocess.run(["mv", str(original), str(there)], check=True)
    assert not original.exists()
    p = run_cli(*LOOP, f"run_dir={there}")
    assert p.returncode == 0, p.stderr[-3000:]
    _same_iterations(summary(full_run[0]), summary(there))
    done = ledger_rows(there, "select iteration, node from stage_runs where status = 'done'")
    assert len(done) == len(set(done)) == 4 + 2 * 7, "nothing ran twice: the setup and iteration 0 were kept"
    s = summary(there)
    assert Path(s["final"]["policy"]).is_dir() and str(s["final"]["policy"]).startswith(str(there))
    stale = [v for v in _strings(s) + _strings(json.loads((there / "LATEST_GOOD").read_text()))
             if str(tmp_path / "first") in v]
    assert not stale, stale[:3]


def test_changed_config_on_resume_is_refused(full_run):
    run_dir, _ = full_run
    p = run_cli(*LOOP, f"run_dir={run_dir}", "loop.kl.beta=0.5")
    assert p.returncode != 0
    assert "loop.kl.beta: 0.05 -> 0.5" in p.stderr and "allow_config_change=true" in p.stderr


def test_rollback_restores_last_good_and_applies_remedy(tmp_path):
    """A KL budget of 1e-9 makes every update 'over budget': each iteration is rolled back to the SFT
    policy and beta doubles (remedy raise_beta). An RM ensemble of 2 takes the min path."""
    run_dir = tmp_path / "rb"
    p = run_cli(*LOOP, f"run_dir={run_dir}", "loop.detectors=[{name: kl_budget, max_kl: 1.0e-9}]",
                "stage.reward.ensemble_size=2", "loop.ensemble_reduce=min", "loop.min_win_rate=0.0")
    assert p.returncode == 0, p.stderr[-3000:]
    s = summary(run_dir)
    assert [it["status"] for it in s["iterations"]] == ["rolled_back", "rolled_back"]
    assert all("kl_budget" in " ".join(it["reasons"]) for it in s["iterations"])
    assert s["iterations"][1]["beta"] == pytest.approx(2 * s["iterations"][0]["beta"])
    assert s["final"]["iteration"] == -1 and s["final"]["policy"].endswith("setup/sft/policy")
    assert s["n_rollbacks"] == 2
    rows = ledger_rows(run_dir, "select iteration, detector, restored_iteration, remedy from rollbacks")
    assert rows == [(0, "kl_budget", -1, "raise_beta"), (1, "kl_budget", -1, "raise_beta")]
    assert s["baseline"]["disagreement"] > 0, "ensemble disagreement is measured"


def test_human_label_queue_pauses_and_resumes(tmp_path):
    run_dir = tmp_path / "human"
    args = [*LOOP, f"run_dir={run_dir}", "loop.labeler=human", "loop.iterations=1"]
    p = run_cli(*args)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "waiting for human labels" in p.stdout
    queue = run_dir / "human_queue" / "iter_000"
    pending = [json.loads(line) for line in (queue / "to_label.jsonl").read_text().splitlines()]
    assert pending and {"pair_id", "prompt", "a", "b"} <= set(pending[0])
    assert summary(run_dir)["status"] == "stopped"
    # A malformed file is refused naming the line; nothing is trained on it.
    (queue / "labels.jsonl").write_text(json.dumps({"pair_id": pending[0]["pair_id"], "choice": "a"}) + "\n{oops\n")
    p = run_cli(*args)
    assert p.returncode == 1 and "labels.jsonl:2: not valid JSON" in p.stderr
    (queue / "labels.jsonl").write_text("".join(json.dumps({"pair_id": r["pair_id"], "choice": "b"}) + "\n"
                                                for r in pending))
    p = run_cli(*args)
    assert p.returncode == 0, p.stderr[-2000:]
    s = summary(run_dir)
    assert s["status"] == "completed" and len(s["iterations"]) == 1
    import pandas as pd

    pairs = pd.read_parquet(run_dir / "iter_000" / "label" / "pairs.parquet")
    assert set(pairs["labeler"]) == {"human"} and len(pairs) == len(pending)
    assert (pairs["chosen"] == [r["b"] for r in pending]).all()


def test_stages_once_chain(tmp_path):
    run_dir = tmp_path / "once"
    p = run_cli("+experiment=stages_once", *TINY, f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr[-3000:]
    s = summary(run_dir)
    assert set(s["stages"]) == {"sft", "rm_warmup", "ppo_once", "dpo_once"}
    for name, st in s["stages"].items():
        assert st["wall_s"] > 0 and Path(st["output"]).is_dir(), name
        assert st["final_loss"] is not None, name
    assert "summary" in p.stdout and str(run_dir / "summary.json") in p.stdout


def test_max_rollbacks_stops_the_run_for_a_person(tmp_path):
    """Every update is over a 1e-9 KL budget: after loop.max_rollbacks rollbacks the run stops
    instead of burning the remaining iterations, and a re-run stops again (it does not go on)."""
    run_dir = tmp_path / "mr"
    args = [*LOOP, f"run_dir={run_dir}", "loop.iterations=3", "loop.max_rollbacks=2",
            "loop.detectors=[{name: kl_budget, max_kl: 1.0e-9}]", "loop.min_win_rate=0.0"]
    p = run_cli(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    s = summary(run_dir)
    assert s["status"] == "stopped" and "loop.max_rollbacks=2" in s["stopped_reason"]
    assert [it["status"] for it in s["iterations"]] == ["rolled_back", "rolled_back"]
    assert "max_rollbacks" in p.stdout
    p = run_cli(*args)
    assert p.returncode == 0 and summary(run_dir)["status"] == "stopped"


# experiment -> (its policy-update stage, the steps configured by TINY, the data that stage trained on)
NON_PPO_LOOPS = {
    "tiny_iterative_dpo": ("dpo", 3, "iter_000/label/pairs.parquet"),
    "tiny_offline_dpo": ("dpo", 3, "setup/prepare/offline_pairs.parquet"),
    "tiny_online_rloo": ("rloo", 2, "iter_000/collect/prompts.parquet"),
    "tiny_online_grpo": ("grpo", 2, "iter_000/collect/prompts.parquet"),
    "tiny_rejection_sampling": ("rejection_sampling", 3, "iter_000/policy_update/best_of_n.parquet"),
}


@pytest.mark.trl_latest
@pytest.mark.parametrize("experiment", sorted(NON_PPO_LOOPS))
def test_each_loop_without_ppo_runs_an_iteration(experiment, tmp_path):
    """Every loop whose policy update is not PPO, one iteration through the CLI (on TRL 1.12 and on the newest
    TRL, `make test-trl-latest`): its own stage trained the policy from the SFT policy on its own data, against
    the RM the iteration refreshed where the loop has one, and the iteration was evaluated and gated."""
    import pandas as pd
    from safetensors.torch import load_file

    stage, steps, data = NON_PPO_LOOPS[experiment]
    run_dir = tmp_path / "run"
    p = run_cli(f"+experiment={experiment}", *TINY, "loop.iterations=1", f"run_dir={run_dir}")
    assert p.returncode == 0, p.stderr[-3000:]
    s = summary(run_dir)
    assert s["status"] == "completed" and len(s["iterations"]) == 1
    it = s["iterations"][0]
    assert it["status"] in ("accepted", "rolled_back")
    assert all(isinstance(it[k], float) for k in ("gold", "proxy", "kl")), it
    policy = run_dir / "iter_000" / "policy_update" / "policy"
    meta = json.loads((policy / "stage_meta.json").read_text())
    assert meta["stage"] == stage and meta["metrics"]["global_step"] == steps
    assert meta["inputs"]["data"] == str(run_dir / data)
    sft = run_dir / "setup" / "sft" / "policy"
    assert meta["inputs"]["policy"] == str(sft)
    rm = run_dir / "iter_000" / "rm_update" / "rm"
    assert rm.is_dir() == (experiment != "tiny_offline_dpo"), "every loop but offline DPO refreshes its RM"
    if stage in ("rloo", "grpo"):
        assert meta["inputs"]["ref"] == str(sft) and meta["inputs"]["reward_model"] == str(rm)
        assert "rewards/reward_model/mean" in meta["metrics"]
    elif stage == "dpo":
        assert meta["inputs"]["ref"] == str(sft) and meta["metrics"]["n_pairs"] == len(pd.read_parquet(run_dir / data))
    before, after = load_file(str(sft / "model.safetensors")), load_file(str(policy / "model.safetensors"))
    assert before.keys() == after.keys() and any(not before[k].equal(after[k]) for k in before), "the update trained"
