"""Weights & Biases tracking for a run, which must never be what breaks the run.

    python -m rlhf_ops +experiment=quickstart tracking=offline    # wandb files under RUN_DIR/wandb, no account
    wandb sync RUN_DIR/wandb/offline-run-*                        # upload later
    python -m rlhf_ops +experiment=quickstart tracking=disabled   # no wandb at all

    tracker = Tracker.open(run_dir, cfg_dict, cfg_dict["tracking"]["wandb_mode"])
    tracker.log(iteration, node, metrics)    # once per completed node
    tracker.close("completed")

What wandb prints (its banner, the end-of-run summary) goes to RUN_DIR/logs/wandb.log, not the console,
unless verbose=true (rlhf_ops.console).
metrics.jsonl in the run dir is written by the runner whatever the mode; this only mirrors the
numbers to wandb. Every wandb call is wrapped: if wandb cannot start (not installed, not logged in,
no network) or fails later, one warning is logged and the run goes on untracked.
One `open` is one wandb run (named after the run dir, grouped by tracking.group or the experiment's
name, so a sweep's jobs share a group); resuming a run dir starts a new wandb run in the same group.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import re
from pathlib import Path
from typing import Any

from . import console

log = logging.getLogger(__name__)

# Key fragments of credentials. "token" must be a whole word of the key (hf_token, HF_TOKEN, accessToken)
# so that counts such as max_new_tokens or tokenizer_corpus_size stay in the logged config.
_SECRET = re.compile(r"api[_\-]?key|secret|passw(or)?d", re.IGNORECASE)
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def is_secret_key(key: Any) -> bool:
    k = str(key)
    return bool(_SECRET.search(k)) or any(w.lower() == "token" for w in _WORDS.findall(k))


def scrub_secrets(d: Any) -> Any:
    """A copy of `d` (dicts and lists, nested) without keys that name a credential."""
    if isinstance(d, dict):
        return {k: scrub_secrets(v) for k, v in d.items() if not is_secret_key(k)}
    if isinstance(d, (list, tuple)):
        return [scrub_secrets(v) for v in d]
    return d


def numeric_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The numeric entries of `metrics` as floats (bools as 0/1), keys prefixed; the rest is skipped."""
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, numbers.Real):  # includes bool and numpy scalars; skips str, None, lists, dicts
            out[f"{prefix}{k}"] = float(v)
    return out


class Tracker:
    """A wandb run, or nothing (disabled mode, or wandb failed): every method is safe to call."""

    def __init__(self, run=None, log_path: Path | None = None):
        self._run = run
        self._log_path = log_path  # where wandb's own printing goes
        self._step = 0  # wandb wants a monotonically increasing step; iterations repeat across nodes

    @property
    def active(self) -> bool:
        return self._run is not None

    @classmethod
    def open(cls, run_dir: str | Path, cfg_dict: dict, mode: str | None = None) -> "Tracker":
        tracking = (cfg_dict or {}).get("tracking") or {}
        mode = mode or tracking.get("wandb_mode", "disabled")
        if mode == "disabled":
            return cls(None)
        run_dir = Path(run_dir)
        try:
            if mode == "offline":
                # Offline needs no account; files go under RUN_DIR/wandb so the run dir holds everything.
                os.environ["WANDB_MODE"] = "offline"
                os.environ["WANDB_DIR"] = str(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            log_path = run_dir / "logs" / "wandb.log"
            with console.captured(log_path, "wandb"):
                import wandb

                run = wandb.init(
                    project=tracking.get("project") or "rlhf_ops",
                    group=tracking.get("group") or (cfg_dict or {}).get("name") or None,
                    name=run_dir.name, dir=str(run_dir), mode=mode, config=scrub_secrets(cfg_dict or {}),
                    reinit="create_new",  # jobs of one in-process sweep each get their own run
                    settings=wandb.Settings(console="off", init_timeout=60),  # keep our console and Hydra's log as is
                )
            return cls(run, log_path)
        except Exception as e:  # noqa: BLE001 - tracking must never stop a run
            log.warning("wandb tracking is off for this run (%s mode could not start: %s: %s)",
                        mode, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return cls(None)

    def log(self, iteration: int, node: str, metrics: dict) -> None:
        """Log a node's numeric metrics as NODE/KEY, with `iteration` alongside to plot against."""
        if self._run is None:
            return
        data = numeric_metrics(metrics, prefix=f"{node}/")
        if not data:
            return
        data["iteration"] = float(iteration)
        try:
            self._run.log(data, step=self._step)
            self._step += 1
        except Exception as e:  # noqa: BLE001
            self._disable("log", e)

    def close(self, status: str = "completed") -> None:
        if self._run is None:
            return
        try:
            with self._quiet():  # wandb's end-of-run summary goes to the log
                self._run.summary["status"] = status
                _finish(self._run, 0 if status in ("completed", "stopped") else 1)
        except Exception as e:  # noqa: BLE001
            log.warning("wandb finish failed (%s: %s); the run's own files are unaffected", type(e).__name__, e)
        self._run = None

    def _disable(self, what: str, e: Exception) -> None:
        log.warning("wandb %s failed (%s: %s); tracking is off for the rest of this run", what, type(e).__name__, e)
        run, self._run = self._run, None
        try:
            with self._quiet():
                _finish(run, 1)
        except Exception:  # noqa: BLE001 - already failing; nothing more to report
            pass

    def _quiet(self):
        return console.captured(self._log_path, "wandb") if self._log_path else contextlib.nullcontext()

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("failed" if exc_type else "completed")


def _finish(run, exit_code: int) -> None:
    """End a wandb run and wait until its files are written.

    run.finish() only tells wandb's service process the run is over (a publish, no wait): the service closes
    RUN_DIR/wandb/.../run-*.wandb later, and until then the file can hold nothing but its 7-byte header.
    teardown() waits for the service to exit, so the run's record is whole when this returns (a copy,
    `wandb sync`, or a kill right after loses nothing). Only when no other wandb run is open in this process:
    that one is not ours to end."""
    import wandb

    run.finish(exit_code=exit_code)
    if wandb.run is None:
        try:
            wandb.teardown()
        except SystemExit as e:  # wandb exits the process when its service process failed: not ours to end
            raise RuntimeError(f"wandb's service process exited with code {e.code}") from None


__all__ = ["Tracker", "scrub_secrets", "is_secret_key", "numeric_metrics"]
