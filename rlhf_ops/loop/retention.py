"""Checkpoint retention: long runs must not fill the disk.

The `prune` node runs at the end of each iteration and deletes policy / reward-model checkpoints
that nothing can need again: it keeps the last `loop.keep_last` iterations, every checkpoint the
loop state still points to (current and last-good policy and RM, the reference, the SFT policy),
and, with `loop.keep_accepted`, the policies of accepted iterations. A directory is first renamed
to `<name>.pruning` and then removed, so a crash mid-delete never leaves a half-deleted
checkpoint under its real name; leftovers are finished on the next prune.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CANDIDATES = (("policy_update", "policy"), ("rm_update", "rm"))


def referenced(state) -> set[Path]:
    refs = {state.policy, state.rm, state.ref, state.sft_policy, state.work.candidate}
    if state.last_good:
        refs |= {state.last_good.policy, state.last_good.rm}
    return {Path(p).resolve() for p in refs if p}


def prune(ctx) -> None:
    lp, run_dir = ctx.cfg.loop, Path(ctx.run_dir)
    keep_last, keep_accepted = lp.keep_last, lp.keep_accepted
    if keep_last is None or keep_last < 0:
        ctx.metrics["pruned"] = 0.0
        return
    refs = referenced(ctx.state)
    accepted = {e["iteration"] for e in ctx.state.iterations_log if e.get("status") == "accepted"}
    for leftover in run_dir.glob("iter_*/*/*.pruning"):
        shutil.rmtree(leftover, ignore_errors=True)
    pruned, freed = 0, 0
    for it_dir in sorted(run_dir.glob("iter_[0-9][0-9][0-9]")):
        iteration = int(it_dir.name[5:])
        if iteration > ctx.iteration - keep_last:
            continue
        for node, sub in CANDIDATES:
            ckpt = it_dir / node / sub
            if not ckpt.is_dir() or ckpt.resolve() in refs:
                continue
            if keep_accepted and node == "policy_update" and iteration in accepted:
                continue
            size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
            doomed = ckpt.with_name(sub + ".pruning")
            ckpt.rename(doomed)
            shutil.rmtree(doomed)
            (it_dir / node / f"{sub}.PRUNED").write_text("pruned by retention (loop.keep_last)\n")
            pruned, freed = pruned + 1, freed + size
    ctx.metrics.update({"pruned": float(pruned), "pruned_mb": freed / 2**20})
