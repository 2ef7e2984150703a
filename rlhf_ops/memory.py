"""Peak memory of one loop step, recorded beside its wall time (ledger, metrics.jsonl, wandb as STEP/peak_*,
the console's step line):

    peak_rss_mb         the loop process's peak resident set during the step
    peak_rss_worker_mb  a stage run under `accelerate launch` (launcher=zero2 / zero3 / multi_process): the
                        largest of its worker processes' peaks (each a fresh process: its VmHWM is its own)
    peak_gpu_mb         where CUDA is in use: torch's peak allocation on the current device during the step
                        (and the workers' largest, in peak_gpu_worker_mb)

How the step's RSS peak is found without touching the process's own high-water mark (VmHWM, which is what
`/usr/bin/time -v`, getrusage and the benchmarks' wait4 report; resetting it through /proc/self/clear_refs
would make all of them report only the last step): a step that raises VmHWM has that as its peak, exactly;
one that stays below the process's earlier high has the largest RSS a sampling thread saw (every
SAMPLE_S seconds, and at the step's start and end), so a spike shorter than that can be missed there.
The step's own figure answers "which step needs the memory": with LoRA, for one, the policy update stops
being the largest (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

WORKER_PEAK_GLOB = "_peak_memory_rank*.json"
SAMPLE_S = 0.1  # 0.2% of a core idle on the 2-core machine (0.02 s: 1.3%); a peak held this long is seen
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_kb(fd: int | None = None) -> int | None:
    """The resident set now; `fd`: /proc/self/statm kept open (the sampler reads it many times)."""
    try:
        if fd is not None:
            return int(os.pread(fd, 128, 0).split()[1]) * _PAGE_KB
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return None


def _cuda():
    """torch.cuda if this process already uses CUDA (never initialises it, never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


class _Sampler(threading.Thread):
    """The largest RSS seen every SAMPLE_S seconds until stopped."""

    def __init__(self):
        super().__init__(name="rlhf_ops-memory", daemon=True)
        self.stopped = threading.Event()
        self.peak_kb = _rss_kb() or 0

    def run(self) -> None:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            while not self.stopped.wait(SAMPLE_S):
                self.peak_kb = max(self.peak_kb, _rss_kb(fd) or 0)
        finally:
            os.close(fd)

    def stop(self) -> int:
        self.stopped.set()
        self.join()
        return max(self.peak_kb, _rss_kb() or 0)


class _Step:
    def __init__(self):
        self.hwm_start = _status_kb("VmHWM")
        self.sampler = _Sampler() if self.hwm_start is not None and _rss_kb() is not None else None
        if self.sampler is not None:
            self.sampler.start()
        self.workers: dict[str, float] = {}
        self.result: dict | None = None


_step: _Step | None = None


def reset() -> None:
    """Start a step: its RSS peak is watched from now, and the CUDA peak goes back to what is in use now."""
    global _step
    if _step is not None and _step.sampler is not None and _step.result is None:
        _step.sampler.stop()
    _step = _Step()
    cuda = _cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()


def own_peak() -> dict:
    """This process's peaks over its life (RSS: VmHWM) and since the last CUDA reset, in MiB."""
    out = {}
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        out["rss_mb"] = round(hwm / 1024, 1)
    cuda = _cuda()
    if cuda is not None:
        out["gpu_mb"] = round(cuda.max_memory_allocated() / 2 ** 20, 1)
    return out


def write_worker_peak(directory: str | Path) -> None:
    """In an `accelerate launch` worker, at its end: its own peaks, for the launcher to read."""
    rank = os.environ.get("RANK", "0")
    (Path(directory) / f"_peak_memory_rank{rank}.json").write_text(json.dumps(own_peak()))


def collect_worker_peaks(directory: str | Path) -> None:
    """In the launcher, after the workers ended: keep the largest worker's peaks, remove their files."""
    for f in sorted(Path(directory).glob(WORKER_PEAK_GLOB)):
        try:
            peak = json.loads(f.read_text())
        except (OSError, ValueError):
            peak = {}
        f.unlink(missing_ok=True)
        if _step is None:
            continue
        for k, v in peak.items():
            if isinstance(v, (int, float)):
                _step.workers[k] = max(_step.workers.get(k, 0.0), float(v))


def step_peak() -> dict:
    """End the step (a second call returns the same): its peaks, as metrics (see the module's docstring)."""
    step = _step
    if step is None:
        return {}
    if step.result is None:
        out = {}
        if step.sampler is not None:
            sampled = step.sampler.stop()
            hwm_end = _status_kb("VmHWM") or 0
            # Above the process's earlier high: VmHWM is this step's peak, exactly. Below it: what was sampled.
            out["peak_rss_mb"] = round((hwm_end if hwm_end > step.hwm_start else sampled) / 1024, 1)
        gpu = own_peak().get("gpu_mb")  # since reset() set CUDA's peak back
        if gpu is not None:
            out["peak_gpu_mb"] = gpu
        if "rss_mb" in step.workers:
            out["peak_rss_worker_mb"] = step.workers["rss_mb"]
        if "gpu_mb" in step.workers:
            out["peak_gpu_worker_mb"] = step.workers["gpu_mb"]
        step.result = out
    return dict(step.result)


__all__ = ["reset", "own_peak", "step_peak", "write_worker_peak", "collect_worker_peaks", "SAMPLE_S"]
