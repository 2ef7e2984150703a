"""Fault injection for resume tests: die like `kill -9` at a chosen point of a chosen node.

    RLHF_OPS_FAULT="<iteration>:<node>:<point>"   e.g. "1:policy_update:after"

point = before (the node starts) | after (its work is done but not yet committed to the ledger).
The process exits with os._exit(137): no cleanup, no finally blocks, no flushed buffers, exactly
what a SIGKILL or a preempted machine leaves behind. Unset in normal runs: a no-op.
"""

from __future__ import annotations

import os

ENV = "RLHF_OPS_FAULT"
POINTS = ("before", "after")


def maybe_die(iteration: int, node: str, point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    it, name, where = spec.split(":")
    if int(it) == iteration and name == node and where == point:
        os._exit(137)
