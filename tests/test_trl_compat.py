"""PPO needs TRL <= 1.12 (rlhf_ops/stages/trl_compat.py): on a TRL without it, a config that trains PPO stops at
start-up in one line naming the key and the TRL to install, and every config without PPO still passes."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import TINY, run_cli
from rlhf_ops.cli import precheck
from rlhf_ops.stages import trl_compat

pytestmark = pytest.mark.trl_latest

HAS_PPO = importlib.util.find_spec("trl.experimental.ppo") is not None  # the slow, sure way to ask


def test_the_cheap_check_agrees_with_importing():
    assert trl_compat.has_ppo() is HAS_PPO


PPO_USERS = [
    (["+experiment=quickstart"], "loop.policy_update=ppo", "use loop.policy_update=rloo|grpo"),
    (["+experiment=tiny_online_rloo", "loop.policy_update=ppo"], "loop.policy_update=ppo",
     "use loop.policy_update=rloo|grpo"),
    (["+experiment=stages_once"], "ppo_once in loop.setup", "leave ppo_once out of loop.setup"),
    (["job=ppo", "io.output=/tmp/unused"], "job=ppo", "use job=rloo|grpo"),
]


@pytest.mark.parametrize("args, key, instead", PPO_USERS)
def test_ppo_without_trl_ppo_is_one_line_at_start_up(monkeypatch, args, key, instead):
    """Runs on any TRL: the detection says 'no PPO', as it does on TRL >= 1.13."""
    monkeypatch.setattr(trl_compat, "has_ppo", lambda: False)
    err = precheck(args)
    assert err == (f"{key} needs TRL's PPOTrainer, which TRL 1.13 removed (installed: trl {trl_compat.trl_version()}); "
                   f"pip install trl==1.12.0, or {instead}")


@pytest.mark.parametrize("experiment", ["tiny_iterative_dpo", "tiny_online_rloo", "tiny_online_grpo",
                                        "tiny_rejection_sampling", "tiny_offline_dpo"])
def test_loops_without_ppo_pass_without_trl_ppo(monkeypatch, experiment):
    monkeypatch.setattr(trl_compat, "has_ppo", lambda: False)
    assert precheck([f"+experiment={experiment}"]) is None
    # stage.ppo's own keys are not checked against a PPOConfig that is not there: nothing trains PPO
    assert precheck([f"+experiment={experiment}", "+stage.ppo.trl.max_grad_norm=0.5"]) is None
    assert precheck(["job=dpo", "io.output=/tmp/unused"]) is None


@pytest.mark.parametrize("args, key, instead", [PPO_USERS[0], PPO_USERS[3]])
def test_the_cli_on_a_trl_without_ppo_stops_before_any_model(args, key, instead, tmp_path):
    """The real command on the installed TRL (skipped where it has PPO, TRL <= 1.12): exit 2, one line, nothing
    written."""
    if HAS_PPO:
        pytest.skip(f"trl {trl_compat.trl_version()} has PPO")
    run_dir = tmp_path / "run"
    p = run_cli(*args, *TINY, f"run_dir={run_dir}", timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert lines == [f"rlhf_ops: config error: {key} needs TRL's PPOTrainer, which TRL 1.13 removed (installed: trl "
                     f"{trl_compat.trl_version()}); pip install trl==1.12.0, or {instead}"], p.stderr
    assert not run_dir.exists(), "nothing may be created before the config is valid"


def test_the_ppo_stage_called_directly_names_the_trl_to_install(monkeypatch):
    from rlhf_ops.stages import ppo

    monkeypatch.setattr(trl_compat, "has_ppo", lambda: False)
    with pytest.raises(ImportError, match=r"the ppo stage needs TRL's PPOTrainer.*pip install trl==1\.12\.0"):
        ppo.train({"stage": "ppo", "cfg": {}, "inputs": {}})


def test_the_trl_latest_requirements_are_pyprojects_with_trl_replaced(tmp_path):
    """make setup-trl-latest installs pyproject.toml's dependencies from scripts/requirements_with.py: the same list,
    trl (and torch) replaced in place, and a name that is no dependency refused rather than added."""
    import subprocess
    import sys
    import tomllib

    from conftest import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    script = [sys.executable, str(REPO / "scripts" / "requirements_with.py")]
    p = subprocess.run([*script, "--extra", "dev", "trl==1.16.0", "torch==2.13.0"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    want = [{"trl": "trl==1.16.0", "torch": "torch==2.13.0"}.get(d.split("=")[0].split(">")[0], d)
            for d in project["dependencies"] + project["optional-dependencies"]["dev"]]
    assert p.stdout.splitlines() == want and "trl==1.16.0" in want and "pytest==9.2.0" in want
    p = subprocess.run([*script, "trll==1.16.0"], capture_output=True, text=True)
    assert p.returncode != 0 and "trll is not a dependency" in p.stderr and not p.stdout
