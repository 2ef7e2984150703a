"""Fault injection for the resume tests: die like `kill -9` at a chosen point. Test support only:
nothing in the production path calls it. `install()` (called once at start-up when one of the
variables below is set, see rlhf_ops.run) adds its observers to the two generic hook lists,
`rlhf_ops.artifacts.PUBLISH_HOOKS` (every atomic write, just before its rename) and
`rlhf_ops.loop.recipe.STEP_HOOKS` (every loop step, before it starts and after its work).

    RLHF_OPS_FAULT="<iteration>:<node>:<point>"   e.g. "1:policy_update:after", "-1:sft:before"
    RLHF_OPS_FAULT="<iteration>:<node>:<point>:<SIGTERM|SIGINT>"
                                                  do not die: send this process that signal there (a
                                                  preemption or a Ctrl-C at a known point inside a step)
    RLHF_OPS_FAULT="write:<n>"                    die in the n-th atomic write of this process,
                                                  its temporary file or directory complete, before the rename
    RLHF_OPS_FAULT="write:<n>:mid"                the same, with the temporary cut short first (a kill
                                                  while the bytes were still being written)
    RLHF_OPS_FAULT="write:<n>:enospc"             do not die: the n-th atomic write raises
                                                  OSError(ENOSPC) where its rename would be (a full disk)
    RLHF_OPS_FAULT_LOG=<file>                     append one line per atomic write: "<n>\\t<temporary path>"
                                                  (to list a run's write points; the n to use above)

Node points: before (the step starts) | after (its work is done but not yet committed to the
ledger); setup steps have iteration -1. Atomic writes are `artifacts.write_table`,
`write_json_atomic` and `atomic_dir` (checkpoints); each calls its publish hooks once, between
"temporary complete" and the rename, inside the write's own error handling (so an injected ENOSPC is
cleaned up like a real failed rename; a checkpoint replacing a finished one has already moved that
one to `<name>.old` at this point). They are counted from 1 in every process, so "write:<n>" names
the same write as line n of a RLHF_OPS_FAULT_LOG of an identical run.

The process exits with os._exit(137): no cleanup, no finally blocks, no flushed buffers, exactly
what a SIGKILL or a preempted machine leaves behind.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

ENV = "RLHF_OPS_FAULT"
LOG_ENV = "RLHF_OPS_FAULT_LOG"
POINTS = ("before", "after")
SIGNALS = ("SIGTERM", "SIGINT")
WRITE_MODES = ("complete", "mid", "enospc")
EXIT_CODE = 137

_writes = 0  # atomic writes so far in this process


class FaultSpecError(ValueError):
    """RLHF_OPS_FAULT is malformed (a typo must not silently disable the fault)."""


def parse(spec: str) -> tuple:
    """("node", iteration, node, point) or ("write", n, mode); raises FaultSpecError naming the problem."""
    parts = spec.split(":")
    if parts[0] == "write":
        if len(parts) not in (2, 3) or not parts[1].isdigit() or int(parts[1]) < 1:
            raise FaultSpecError(f"{ENV}={spec!r}: expected 'write:<n>' or 'write:<n>:<mid|enospc>' with n >= 1")
        mode = parts[2] if len(parts) == 3 else "complete"
        if mode not in WRITE_MODES:
            raise FaultSpecError(f"{ENV}={spec!r}: write mode {mode!r} not in {WRITE_MODES}")
        return ("write", int(parts[1]), mode)
    if len(parts) not in (3, 4) or parts[2] not in POINTS or (len(parts) == 4 and parts[3] not in SIGNALS):
        raise FaultSpecError(f"{ENV}={spec!r}: expected '<iteration>:<node>:<before|after>[:SIGTERM|:SIGINT]' "
                             "or 'write:<n>[:mid|:enospc]'")
    try:
        iteration = int(parts[0])
    except ValueError:
        raise FaultSpecError(f"{ENV}={spec!r}: iteration {parts[0]!r} is not an integer") from None
    return ("node", iteration, parts[1], parts[2], parts[3] if len(parts) == 4 else "")


def die() -> None:
    os._exit(EXIT_CODE)


def install() -> bool:
    """Read the variables once and install the observers; False (nothing installed) when unset."""
    spec, log_to = os.environ.get(ENV), os.environ.get(LOG_ENV)
    if not spec and not log_to:
        return False
    from ..artifacts import PUBLISH_HOOKS
    from ..loop.recipe import STEP_HOOKS

    parsed = parse(spec) if spec else None  # a typo fails here, at start-up

    def on_step(point: str, iteration: int, node: str) -> None:
        if parsed and parsed[0] == "node" and parsed[1:4] == (iteration, node, point):
            if parsed[4]:  # the handler (rlhf_ops.run.stop_on_signals) raises at the next Python instruction
                os.kill(os.getpid(), getattr(signal, parsed[4]))
            else:
                die()

    PUBLISH_HOOKS.append(maybe_die_write)
    STEP_HOOKS.append(on_step)
    return True


def maybe_die_write(tmp: str | os.PathLike) -> None:
    """Called by every atomic write once `tmp` (file or directory) is complete, just before the rename."""
    spec, log_to = os.environ.get(ENV), os.environ.get(LOG_ENV)
    if not spec and not log_to:
        return
    global _writes
    _writes += 1
    if log_to:
        with open(log_to, "a", encoding="utf-8") as f:
            f.write(f"{_writes}\t{tmp}\n")
    if not spec:
        return
    parsed = parse(spec)
    if parsed[0] != "write" or parsed[1] != _writes:
        return
    if parsed[2] == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (injected by RLHF_OPS_FAULT)", str(tmp))
    if parsed[2] == "mid":
        _cut_short(Path(tmp))
    die()


def _cut_short(tmp: Path) -> None:
    """Truncate the temporary to half its size (a directory: its largest file), as a kill mid-write leaves it."""
    if tmp.is_dir():
        files = [p for p in tmp.rglob("*") if p.is_file()]
        if not files:
            return
        tmp = max(files, key=lambda p: p.stat().st_size)
    if tmp.is_file():
        with open(tmp, "r+b") as f:
            f.truncate(tmp.stat().st_size // 2)
