"""The garbage collector during a command's start-up.

Importing torch, transformers, TRL and wandb allocates a few hundred thousand long-lived objects, and
Python's collector walks all of them again each time they have grown by a quarter: measured in one loop
iteration of the quickstart on the 2-core machine, 7 full collections during start-up took 0.72 s, for
nothing (module objects are not garbage). The CLI holds the collector off from its first line until the
work begins, then freezes what start-up left (a frozen object is never walked again; it is freed by
reference counting as usual) and turns the collector back on. What training allocates is handled as
before (rlhf_ops.stages.common.fit)."""

from __future__ import annotations

import gc

_held = False


def hold() -> None:
    """Start-up begins: no collections until `release()`."""
    global _held
    if gc.isenabled():
        gc.disable()
        _held = True


def release() -> None:
    """The work begins (a loop's first step, a stage's training): what is alive now is long-lived."""
    global _held
    if _held:
        _held = False
        gc.freeze()
        gc.enable()
