"""rlhf_ops.memory: a step's peak memory is its own (the process's peak is reset at the step's start), a
distributed stage's workers report theirs, and the runner records both beside the step's wall time.

    pytest tests/test_memory.py
"""

from __future__ import annotations

import resource
import threading
import time
from collections import Counter

import pytest

from rlhf_ops import memory
from rlhf_ops.ledger import Ledger
from rlhf_ops.loop.recipe import StepRunner

from test_recipe import cfg, fake_steps

MB = 2 ** 20
pytestmark = pytest.mark.skipif(memory._status_kb("VmHWM") is None, reason="needs Linux /proc/self/status")


def _allocate_and_free(mb: int, hold_s: float = 0.0) -> None:
    block = b"x" * (mb * MB)  # written, so resident (not lazily mapped zero pages)
    time.sleep(hold_s)  # a step holds its memory a while; the sampler looks every memory.SAMPLE_S
    del block  # a block this large is unmapped on free: the RSS drops, the process's high-water mark stays


def test_a_steps_peak_is_its_own():
    memory.reset()
    before = memory._rss_kb() / 1024
    _allocate_and_free(300, hold_s=0.35)  # exact (VmHWM) if a new high for this process, else sampled
    peak = memory.step_peak()["peak_rss_mb"]
    assert peak >= before + 280, (before, peak)
    assert memory.step_peak()["peak_rss_mb"] == peak  # ended: a second call reads the same
    memory.reset()  # the next step, below the process's high: sampled
    _allocate_and_free(100, hold_s=0.35)
    second = memory.step_peak()["peak_rss_mb"]
    assert before + 80 <= second < peak - 150, (before, second, peak)
    memory.reset()
    assert memory.step_peak()["peak_rss_mb"] < second - 80  # a step that allocates nothing
    assert not [t for t in threading.enumerate() if t.name == "rlhf_ops-memory"], "the sampler ends with its step"


def test_the_processs_own_high_water_mark_is_left_alone():
    """/usr/bin/time -v, getrusage and the benchmarks' wait4 read the process's VmHWM: watching a step must not
    reset it (writing 5 to /proc/self/clear_refs would, and they would report only the last step)."""
    memory.reset()
    _allocate_and_free(400)
    memory.step_peak()
    high = memory._status_kb("VmHWM")
    for _ in range(3):
        memory.reset()
        memory.step_peak()
    assert memory._status_kb("VmHWM") == high
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >= high


def test_the_largest_worker_is_kept_and_its_files_removed(tmp_path, monkeypatch):
    memory.reset()
    for rank, rss in ((0, 900.5), (1, 1200.0)):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setattr(memory, "own_peak", lambda rss=rss: {"rss_mb": rss})
        memory.write_worker_peak(tmp_path)
    (tmp_path / "_peak_memory_rank2.json").write_text("{trunc")  # a worker killed mid-write: ignored
    memory.collect_worker_peaks(tmp_path)
    monkeypatch.undo()
    assert memory.step_peak()["peak_rss_worker_mb"] == 1200.0
    assert not list(tmp_path.glob(memory.WORKER_PEAK_GLOB))
    memory.reset()
    assert "peak_rss_worker_mb" not in memory.step_peak()  # a step's workers are its own


def test_the_runner_records_each_steps_peak_beside_its_wall_time(tmp_path):
    steps = fake_steps(Counter())
    plain = steps["policy_update"]

    def hungry_update(ctx):
        _allocate_and_free(300, hold_s=0.35)
        plain(ctx)

    steps["policy_update"] = hungry_update
    with Ledger(tmp_path) as ledger:
        ledger.start_run({})
        StepRunner(cfg(iterations=2), tmp_path, ledger, fns=steps, hooks=[]).run()
        rows = [r for r in ledger.stage_history() if r["status"] == "done"]
        metric_keys = {m["key"] for m in ledger.metrics()}
    assert len(rows) == 7 and all(r["memory"]["peak_rss_mb"] > 0 for r in rows)
    by_step = {}
    for r in rows:
        by_step.setdefault(r["node"], []).append(r["memory"]["peak_rss_mb"])
    assert min(by_step["policy_update"]) >= max(by_step["gate"]) + 250, by_step
    assert not any(k.startswith("peak_") for k in metric_keys), "memory is no metric: a resume does not reproduce it"


@pytest.mark.gpu
def test_a_steps_gpu_peak_is_its_own():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.zeros(1, device="cuda")  # CUDA in use: memory never initialises it itself
    memory.reset()
    block = torch.empty(256 * MB, dtype=torch.uint8, device="cuda")
    del block
    peak = memory.step_peak()["peak_gpu_mb"]
    assert peak >= 256
    memory.reset()
    assert memory.step_peak()["peak_gpu_mb"] < 1
