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
                            "reward_model, human, judge]"),
    ("loop.kl.beta=nan", "loop.kl.beta=nan must be a finite number >= 0"),
    ("loop.gate_vote=9", "loop.gate_vote=9 must be between 1 and the number of detectors (8"),
    ("loop.eval_temperature=0", "loop.eval_temperature=0.0 must be > 0"),
    ("loop.prompts_per_iteration=0", "loop.prompts_per_iteration=0 must be >= 1"),
    ("loop.completions_per_prompt=1", "loop.completions_per_prompt=1: a labeler compares completions"),
    ("loop.min_pairs=99", "loop.min_pairs=99: a labeler gives at most one pair per prompt"),
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
    ("stage.rloo.num_generations=1", "stage.rloo.num_generations=1 must be >= 2"),
    ("stage.grpo.per_device_train_batch_size=30", "stage.grpo.num_generations=4 must divide the batch of completions"),
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
        err = precheck([f"+experiment={name}"])
        if name.startswith("smollm2_"):  # a real model the user converts first: the one thing to give
            assert err and err.startswith("model.path: model=local needs model.path=DIR"), (name, err)
        else:
            assert err is None, (name, err)
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


_TORCH_PROBE = """
import atexit, sys
atexit.register(lambda: print("torch imported:", "torch" in sys.modules, file=sys.stderr))
sys.argv = ["rlhf_ops", *sys.argv[1:]]
from rlhf_ops.cli import main
main()
"""


@pytest.mark.parametrize("args", [["--help"], ["+experiment=quickstart", "model.hiden_size=3"],
                                  ["+experiment=quickstart", "loop.gate_vote=9"],
                                  ["+experiment=quickstart", "launcher.deepspeed=nope.json"],
                                  ["+experiment=quickstart", "loop.steps=[collect,labl]"]])
def test_help_and_config_errors_do_not_import_torch(args):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _TORCH_PROBE, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 2), proc.stderr
    assert "torch imported: False" in proc.stderr, proc.stderr[-2000:]


def test_a_single_run_composes_its_config_once(tmp_path, monkeypatch):
    """The pre-check's composition is the one @hydra.main runs with, and it equals a fresh composition."""
    import sys

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from omegaconf import OmegaConf

    import rlhf_ops.cli as cli
    import rlhf_ops.run

    calls, seen = [], {}
    original = ConfigLoaderImpl.load_configuration

    def counting(self, *args, **kwargs):
        calls.append(args[:2])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", counting)
    from hydra.core.hydra_config import HydraConfig

    def run(cfg):
        seen["cfg"], seen["hydra"] = cfg, OmegaConf.to_container(HydraConfig.get())

    monkeypatch.setattr(rlhf_ops.run, "run", run)
    overrides = ["+experiment=quickstart", "loop.kl.beta=0.07", f"run_dir={tmp_path}/run",
                 f"hydra.run.dir={tmp_path}/hydra"]
    monkeypatch.setattr(sys, "argv", ["rlhf_ops", *overrides])
    cli.main()
    assert len(calls) == 1, calls
    got, hydra_node = seen["cfg"], seen["hydra"]
    fresh = cli.compose([*overrides, "hydra.mode=RUN"])  # what Hydra itself composes for the run
    assert got.loop.kl.beta == 0.07 and got.name == "quickstart"
    assert OmegaConf.to_container(got, resolve=False) == {k: v for k, v in OmegaConf.to_container(fresh).items()
                                                         if k != "hydra"}
    want = OmegaConf.to_container(fresh.hydra)
    for node in (hydra_node, want):  # filled in by run_job, after composition
        node.pop("runtime", None)
        node["job"].pop("id", None), node["job"].pop("num", None)
    assert hydra_node == want
    assert hydra_node["job"]["name"] == "cli" and hydra_node["mode"].name == "RUN"



def test_a_single_run_is_validated_once_but_its_run_dir_again(tmp_path, monkeypatch):
    """The pre-check's validation is not repeated when @hydra.main runs the same composition; the run dir,
    which only Hydra's run resolves, is checked again (a damaged ledger there still stops the run), and a
    second in-process run of the same config is validated in full."""
    import sys

    import rlhf_ops.cli as cli
    import rlhf_ops.run
    import rlhf_ops.validate as validate

    calls = []
    real = validate.validate_config
    monkeypatch.setattr(validate, "validate_config", lambda cfg: (calls.append("full"), real(cfg))[1])
    real_ledger = validate._run_dir_ledger
    monkeypatch.setattr(validate, "_run_dir_ledger", lambda cfg: (calls.append("ledger"), real_ledger(cfg))[1])
    seen = {}

    def run_stub(cfg):
        seen["cfg"] = cfg
        validate.validate_config_once(cfg)

    monkeypatch.setattr(rlhf_ops.run, "run", run_stub)
    (tmp_path / "run").mkdir()
    overrides = ["+experiment=quickstart", f"run_dir={tmp_path}/run", f"hydra.run.dir={tmp_path}/hydra"]
    monkeypatch.setattr(sys, "argv", ["rlhf_ops", *overrides])
    cli.main()
    assert calls[0] == "full" and calls[1:].count("full") == 0 and calls[-1] == "ledger", calls
    calls.clear()
    validate.validate_config_once(seen["cfg"])  # the same composition again: not pre-checked any more
    assert calls[0] == "full", calls
    (tmp_path / "run" / "ledger.sqlite").write_bytes(b"not a database")
    validate.mark_prechecked(seen["cfg"])
    with pytest.raises(ValueError, match="not an SQLite database"):
        validate.validate_config_once(seen["cfg"])


_FAST_EXIT_PROBE = """
import atexit, sys
atexit.register(lambda: print("exit handler ran", flush=True))
from rlhf_ops.cli import _exit_without_teardown
if sys.argv[1:] == ["profiled"]:
    sys.setprofile(lambda *a: None)
print("before")  # stdout is a pipe: buffered, so the exit must flush it
_exit_without_teardown()
sys.setprofile(None)
print("returned")
"""


@pytest.mark.parametrize("mode", ["plain", "profiled"])
def test_a_finished_run_exits_without_teardown_but_runs_exit_handlers_and_not_under_a_profiler(mode):
    """`python -m rlhf_ops` ends a finished run with os._exit after the exit handlers (about 1.3 s of
    interpreter teardown saved per process); under a profiler (python -m cProfile writes its stats after
    main returns) it returns normally instead."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _FAST_EXIT_PROBE, mode], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    if mode == "plain":
        assert proc.stdout == "before\nexit handler ran\n", proc.stdout  # exited inside, handlers and buffers done
    else:
        assert proc.stdout == "before\nreturned\nexit handler ran\n", proc.stdout
