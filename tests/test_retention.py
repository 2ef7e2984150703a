"""Checkpoint retention keeps what the loop can still need and prunes the rest."""

from __future__ import annotations

from pathlib import Path

from conftest import step_ctx, typed_cfg
from rlhf_ops.loop.retention import prune
from rlhf_ops.loop.state import LastGood, LoopState


def ckpt(path: Path) -> str:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x" * 1000)
    return str(path)


def test_prune_keeps_last_k_referenced_and_accepted(tmp_path):
    pol = {i: ckpt(tmp_path / f"iter_{i:03d}" / "policy_update" / "policy") for i in range(5)}
    rms = {i: ckpt(tmp_path / f"iter_{i:03d}" / "rm_update" / "rm") for i in range(5)}
    (tmp_path / "iter_000" / "rm_update" / "stale.pruning").mkdir()  # a crash mid-delete last time
    state = LoopState(policy=pol[1], rm=rms[0], last_good=LastGood(1, pol[1], rms[0], {}, {}, 0, 1.0, {}, None),
                      iterations_log=[{"iteration": 1, "status": "accepted"}, {"iteration": 2, "status": "accepted"}]
                      + [{"iteration": i, "status": "rolled_back"} for i in (0, 3, 4)])
    ctx = step_ctx(typed_cfg("loop.keep_last=2", "loop.keep_accepted=true"), "prune", 4, tmp_path, state)
    prune(ctx)
    exists = {k: Path(p).is_dir() for k, p in {**{f"p{i}": p for i, p in pol.items()},
                                               **{f"r{i}": p for i, p in rms.items()}}.items()}
    assert exists == {"p0": False, "p1": True, "p2": True, "p3": True, "p4": True,   # p1 referenced, p2 accepted
                      "r0": True, "r1": False, "r2": False, "r3": True, "r4": True}  # r0 referenced; last 2 kept
    assert ctx.metrics["pruned"] == 3
    assert (tmp_path / "iter_000" / "policy_update" / "policy.PRUNED").is_file()
    assert not list(tmp_path.rglob("*.pruning"))


def test_prune_disabled_keeps_everything(tmp_path):
    p = ckpt(tmp_path / "iter_000" / "policy_update" / "policy")
    ctx = step_ctx(typed_cfg("loop.keep_last=null", "loop.keep_accepted=false"), "prune", 5, tmp_path)
    prune(ctx)
    assert ctx.metrics["pruned"] == 0
    assert Path(p).is_dir()
