"""Credentials in the environment never reach the run dir: a full CLI run (wandb offline, the
default tracking) with WANDB_API_KEY and HF_TOKEN set leaves no file under the run dir (Hydra's
.hydra/ and log, wandb's files, the ledger, metrics, summary, checkpoints) holding either value."""

from __future__ import annotations

from conftest import TINY, run_cli

SECRETS = {"WANDB_API_KEY": "local-3f9c2e7a1b8d4c6e0a5f9b2d7c1e8a4f6b3d0c9e",
           "HF_TOKEN": "hf_FakeTokenForTheLeakTestQz7Xv9Kp2Lm4Nw8Rt"}


def test_no_secret_from_the_environment_lands_in_the_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("tracking=")] + ["tracking=offline", "loop.iterations=1"]
    # No run_dir=: the run dir is Hydra's output dir, as in a plain `python -m rlhf_ops +experiment=...`.
    p = run_cli("+experiment=quickstart", *overrides, f"hydra.run.dir={run_dir}",
                env={**SECRETS, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert p.returncode == 0, p.stderr[-3000:]
    files = [f for f in run_dir.rglob("*") if f.is_file()]
    names = {f.relative_to(run_dir).as_posix() for f in files}
    assert {"ledger.sqlite", "summary.json", "config.yaml", "metrics.jsonl", ".hydra/config.yaml"} <= names
    assert any(n.startswith("wandb/") for n in names), "wandb's offline files are checked too"
    leaks = [(f.relative_to(run_dir).as_posix(), name) for f in files for name, value in SECRETS.items()
             if value.encode() in f.read_bytes()]
    assert not leaks, f"secrets found in the run dir: {leaks}"
    for name, value in SECRETS.items():
        assert value not in p.stdout + p.stderr, f"{name} printed to the console"
