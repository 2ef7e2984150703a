"""rlhf_ops.tracking: secrets never reach wandb, disabled does nothing, offline needs no account,
and a wandb failure never stops a run.

    pytest tests/test_tracking.py
"""

from __future__ import annotations

import logging
import sys

import pytest

from rlhf_ops.tracking import Tracker, is_secret_key, numeric_metrics, scrub_secrets

CFG = {"name": "quickstart", "seed": 0, "tracking": {"wandb_mode": "offline", "project": "rlhf_ops", "group": ""},
       "model": {"path": "m", "hf_token": "hf_x", "max_new_tokens": 16},
       "task": {"tokenizer_corpus_size": 600},
       "launcher": [{"WANDB_API_KEY": "k", "accessToken": "t", "n": 1}],
       "db_password": "p", "client_secret": "s", "api-key": "a", "TOKEN": "t"}


def test_scrub_secrets_removes_credentials_and_keeps_counts():
    out = scrub_secrets(CFG)
    assert out == {"name": "quickstart", "seed": 0, "tracking": CFG["tracking"],
                   "model": {"path": "m", "max_new_tokens": 16}, "task": {"tokenizer_corpus_size": 600},
                   "launcher": [{"n": 1}]}
    assert CFG["model"]["hf_token"] == "hf_x"  # a copy: the run's own config is untouched
    assert is_secret_key("HF_TOKEN") and is_secret_key("wandb_api_key") and not is_secret_key("pad_tokens")


def test_numeric_metrics_skips_non_numbers():
    m = {"loss": 1, "ok": True, "name": "x", "none": None, "nested": {"a": 1}, "nan": float("nan")}
    out = numeric_metrics(m, prefix="sft/")
    assert set(out) == {"sft/loss", "sft/ok", "sft/nan"} and out["sft/ok"] == 1.0


def test_disabled_does_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing wandb would now fail: disabled must not try
    t = Tracker.open(tmp_path, CFG, "disabled")
    assert not t.active
    t.log(0, "evaluate", {"gold": 1.0})
    t.close("completed")
    assert list(tmp_path.iterdir()) == []


def test_init_failure_warns_once_and_run_goes_on(tmp_path, monkeypatch, caplog):
    import wandb

    def boom(**kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", boom)
    with caplog.at_level(logging.WARNING, logger="rlhf_ops.tracking"):
        t = Tracker.open(tmp_path, CFG, "online")
        t.log(0, "evaluate", {"gold": 1.0})
        t.close("failed")
    assert not t.active
    assert [r.message for r in caplog.records if "wandb" in r.message] == [
        "wandb tracking is off for this run (online mode could not start: RuntimeError: no network)"]


def test_log_failure_turns_tracking_off(tmp_path, caplog):
    class BrokenRun:
        finished = False

        def log(self, data, step=None):
            raise OSError("disk full")

        def finish(self, exit_code=0):
            self.finished = True

    run = BrokenRun()
    t = Tracker(run)
    with caplog.at_level(logging.WARNING, logger="rlhf_ops.tracking"):
        t.log(0, "evaluate", {"gold": 1.0})
        t.log(1, "evaluate", {"gold": 2.0})  # no second warning: tracking is already off
    assert not t.active and run.finished
    assert len([r for r in caplog.records if "disk full" in r.message]) == 1


def test_steps_increase_and_keys_are_prefixed(tmp_path):
    calls = []

    class FakeRun:
        summary: dict = {}

        def log(self, data, step=None):
            calls.append((step, data))

        def finish(self, exit_code=0):
            calls.append(("finish", exit_code))

    t = Tracker(FakeRun())
    t.log(-1, "sft", {"final_loss": 5.9, "note": "text only"})
    t.log(0, "evaluate", {"gold": -1.2, "kl": 0.1})
    t.log(0, "collect", {"model": "path"})  # nothing numeric: no step used
    t.log(0, "gate", {"accepted": 1.0})
    t.close("completed")
    assert [c[0] for c in calls] == [0, 1, 2, "finish"]
    assert calls[0][1] == {"sft/final_loss": 5.9, "iteration": -1.0}
    assert calls[1][1] == {"evaluate/gold": -1.2, "evaluate/kl": 0.1, "iteration": 0.0}
    assert calls[-1] == ("finish", 0)


def test_offline_writes_under_run_dir(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "runs" / "qs"
    t = Tracker.open(run_dir, CFG, "offline")
    assert t.active
    t.log(0, "evaluate", {"gold": -1.0})
    t.close("completed")
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (log_file,) = runs[0].glob("run-*.wandb")  # wandb's record of the run: config, history, summary
    data = log_file.read_bytes()
    assert b"evaluate/gold" in data and b"max_new_tokens" in data and b"hf_x" not in data


@pytest.mark.parametrize("other_run_open", [False, True])
def test_close_waits_for_wandbs_service_unless_another_run_is_open(monkeypatch, other_run_open):
    """run.finish() only tells wandb's service process the run is over; the service writes the rest of the
    offline .wandb file afterwards (CI once read a bare 7-byte header right after close). close() therefore
    tears the service down, which waits for it, unless a run that is not ours is still open in this process."""
    wandb = pytest.importorskip("wandb")
    calls = []

    class FakeRun:
        summary: dict = {}

        def finish(self, exit_code=0):
            calls.append("finish")

    monkeypatch.setattr(wandb, "run", object() if other_run_open else None)
    monkeypatch.setattr(wandb, "teardown", lambda *a, **k: calls.append("teardown"))
    Tracker(FakeRun()).close("completed")
    assert calls == (["finish"] if other_run_open else ["finish", "teardown"])


def test_a_failed_wandb_service_is_one_warning_not_an_exit(monkeypatch, caplog):
    """wandb.teardown() calls sys.exit when its service process exited non-zero; a run must go on."""
    wandb = pytest.importorskip("wandb")

    class FakeRun:
        summary: dict = {}

        def finish(self, exit_code=0):
            pass

    def teardown(*a, **k):
        sys.exit(3)

    monkeypatch.setattr(wandb, "run", None)
    monkeypatch.setattr(wandb, "teardown", teardown)
    with caplog.at_level(logging.WARNING):
        Tracker(FakeRun()).close("completed")
    assert "wandb finish failed (RuntimeError: wandb's service process exited with code 3)" in caplog.text
