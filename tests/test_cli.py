"""A config mistake fails at start-up in ONE line naming the key, before any model is built."""

from __future__ import annotations

import pytest

from conftest import run_cli
from rlhf_ops.cli import compose, precheck

@pytest.mark.parametrize("override, expected", [
    ("model.hiden_size=64", "unknown config key 'model.hiden_size'"),
    ("loop.kl.beta=abc", "bad value for 'loop.kl.beta'"),
    ("stage.ppo.total_episodez=3", "unknown config key 'stage.ppo.total_episodez'"),
    ("loop.labeler=oracle", "bad value for 'loop.labeler': Invalid value 'oracle', expected one of [annotator, "
                            "reward_model, human]"),
    ("loop.kl.beta=nan", "loop.kl.beta=nan must be a finite number >= 0"),
    ("loop.gate_vote=9", "loop.gate_vote=9 must be between 1 and the number of detectors (6"),
    ("loop.eval_temperature=0", "loop.eval_temperature=0.0 must be > 0"),
    ("loop.prompts_per_iteration=0", "loop.prompts_per_iteration=0 must be >= 1"),
    ("loop.completions_per_prompt=1", "loop.completions_per_prompt=1: a labeler compares completions"),
    ("stage.dpo.learning_rate=-1e-5", "stage.dpo.learning_rate=-1e-05 must be a finite number > 0"),
    ("seed=-3", "seed=-3 must be >= 0"),
    ("loop.min_win_rate=1.5", "loop.min_win_rate=1.5 must be in [0, 1] or null"),
    ("loop.kl.max_beta=0.01", "loop.kl.max_beta=0.01 must be >= loop.kl.beta (0.05)"),
    ("loop.steps=[collect,labl]", "loop.steps: unknown step 'labl'"),
    ("job=sftt", "bad value for 'job': Invalid value 'sftt'"),
    ("stage.ppo.num_mini_batches=3", "stage.ppo.num_mini_batches=3 must divide the batch"),
    ("loop.rm_freeze=[[0,2]]", "the reward model can never be updated within loop.iterations=3"),
    ("loop.rm_accuracy_z=-1", "loop.rm_accuracy_z=-1.0 must be >= 0"),
    ("launcher.deepspeed=deepspeed/zero9.json", "DeepSpeed config not found: deepspeed/zero9.json"),
])
def test_bad_override_is_one_line_naming_it(override, expected):
    err = precheck(["+experiment=quickstart", override])
    assert err is not None and expected in err
    assert "\n" not in err

def test_unknown_experiment_lists_the_options():
    err = precheck(["+experiment=quikstart"])
    assert "experiment/quikstart" in err and "quickstart" in err and "\n" not in err
    # the options and nothing else: Hydra's config search path used to leak into the list
    listed = err.split("(available: ", 1)[1].rstrip(")").split(", ")
    assert "tiny_online_ppo" in listed and all("=" not in o for o in listed), err

def test_unknown_group_option_lists_that_groups_options():
    err = precheck(["+experiment=quickstart", "launcher=zero9"])
    assert err.endswith("Could not find 'launcher/zero9' (available: local, multi_process, zero2, zero3)"), err

def test_sweep_values_are_checked_each():
    assert precheck(["-m", "+experiment=quickstart", "loop.kl.beta=0.01,0.1"]) is None
    err = precheck(["-m", "+experiment=quickstart", "loop.kl.beta=0.01,oops"])
    assert "loop.kl.beta" in err

def test_every_experiment_composes():

    from conftest import REPO

    names = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
    assert "quickstart" in names
    for name in names:
        assert precheck([f"+experiment={name}"]) is None, name
        assert compose([f"+experiment={name}"]).name == name

def test_cli_exits_2_with_one_line_before_any_work(tmp_path):
    p = run_cli("+experiment=quickstart", "model.hiden_size=64", f"run_dir={tmp_path / 'r'}", timeout=120)
    assert p.returncode == 2
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert lines == ["rlhf_ops: config error: unknown config key 'model.hiden_size' "
                     "(Key 'hiden_size' not in 'ModelConfig')"], p.stderr
    assert not (tmp_path / "r").exists(), "nothing may be created before the config is valid"


def test_stage_keys_pass_through_to_trl_by_name():
    """Any TRL field can be set through stage.<name>.trl; a name TRL's class lacks fails at start-up."""
    from rlhf_ops.stages.trl_args import trl_kwargs

    assert precheck(["+experiment=quickstart", "+stage.sft.trl.max_grad_norm=0.5"]) is None
    err = precheck(["+experiment=quickstart", "+stage.ppo.trl.max_grad_nrm=0.5"])
    assert err == "stage.ppo.trl.max_grad_nrm: PPOConfig (TRL 1.12.0) has no field 'max_grad_nrm'"
    err = precheck(["+experiment=quickstart", "stage.dpo.trl.max_grad_norm=0.5"])
    assert "add" in err and "+stage.dpo.trl.max_grad_norm=VALUE" in err
    kw = trl_kwargs("reward", {"learning_rate": 1e-3, "ensemble_size": 3, "trl": {"max_grad_norm": 0.5}},
                    learning_rate=5e-4)
    assert kw == {"learning_rate": 5e-4, "max_grad_norm": 0.5}, "ours stay ours; the orchestrator's values win"
