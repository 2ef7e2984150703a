"""A console a person can read: one line per step on the console, everything the libraries print
(TRL, transformers, datasets, wandb) in a log file per step, errors in one line naming that log."""

from __future__ import annotations

import logging
import re
import warnings

from conftest import TINY, run_cli

NOISE = ("{'loss'", "{'train_runtime'", "it/s", "Warning", "wandb:", "Loading weights", "%|")


def test_loop_console_is_one_line_per_step_and_library_output_is_in_the_step_logs(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if o not in ("progress=false", "tracking=disabled")]  # bars and wandb on
    p = run_cli("+experiment=quickstart", *overrides, "loop.iterations=1", "tracking=offline", f"run_dir={run_dir}",
                env={"WANDB_MODE": "offline"}, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()]
    # setup: prepare, sft, rm_warmup, baseline; iteration 0: 6 "done" lines + the gate's; the final line
    assert len(lines) <= 13, "\n".join(lines)
    assert all(re.match(r"\[(setup|iter \d{3})\] |rlhf_ops: ", line) for line in lines), "\n".join(lines)
    assert "[iter 000] collect done" in p.stdout and "rlhf_ops: completed" in p.stdout
    assert re.search(r"\[iter 000\] policy_update done .* peak_rss=\d+\.\d\dGB", p.stdout), p.stdout  # rlhf_ops.memory
    assert not [n for n in NOISE if n in p.stdout + p.stderr], p.stdout + p.stderr
    logs = run_dir / "logs"
    sft = (logs / "setup_sft.log").read_text()
    assert "{'train_runtime'" in sft and "it/s" in sft, "the trainer's dicts and progress bars"
    assert any("Warning" in f.read_text() for f in logs.glob("*.log")), "python warnings go to the logs too"
    assert "'objective/kl'" in (logs / "iter_000_policy_update.log").read_text(), "PPO's per-step dicts"
    assert "wandb: Run summary" in (logs / "wandb.log").read_text(), "wandb's end-of-run summary"


def test_a_failing_stage_job_prints_one_line_naming_its_log(tmp_path):
    out = tmp_path / "sft"
    p = run_cli("job=sft", f"io.policy={tmp_path / 'missing'}", f"io.data={tmp_path / 'none.jsonl'}",
                f"io.output={out}", timeout=120)
    assert p.returncode == 1
    lines = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rlhf_ops: error: InputError: "), lines
    assert lines[0].endswith(f"(log: {out}.log)"), lines
    assert "Traceback" in (tmp_path / "sft.log").read_text() and not out.exists()
    (tmp_path / "sft.log").unlink()
    p = run_cli("job=sft", f"io.policy={tmp_path / 'missing'}", f"io.data={tmp_path / 'none.jsonl'}",
                f"io.output={out}", "verbose=true", timeout=120)
    assert p.returncode == 1 and "(log:" not in p.stderr and not (tmp_path / "sft.log").exists(), p.stderr


def test_without_a_real_stdout_only_logging_and_warnings_are_routed(tmp_path, capsys):
    """Under capsys sys.stdout has no file descriptor: nothing is redirected, but library log
    records and warnings still reach the step log; our own warnings stay on the console."""
    from rlhf_ops import console

    console.configure(verbose=False)
    path = tmp_path / "logs" / "step.log"
    handlers = list(logging.getLogger().handlers)
    with console.captured(path, "step"):
        logging.getLogger("transformers.fake").warning("library says hi")
        logging.getLogger("rlhf_ops.test").warning("ours says hi")
        warnings.warn("deprecated thing", UserWarning)
        console.echo("[setup] step done")
    text = path.read_text()
    assert "library says hi" in text and "deprecated thing" in text and "ours says hi" in text
    out = capsys.readouterr()
    assert "[setup] step done" in out.out and "library says hi" not in out.out + out.err
    assert console.current_log() is None and logging.getLogger().handlers == handlers, "all restored"


def test_verbose_prints_everything_and_writes_no_log(tmp_path):
    from rlhf_ops import console

    console.configure(verbose=True)
    try:
        with console.captured(tmp_path / "step.log"):
            assert console.current_log() is None
    finally:
        console.configure(verbose=False)
    assert not (tmp_path / "step.log").exists()
