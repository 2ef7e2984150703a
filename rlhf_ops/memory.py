"""Peak memory of one loop step, recorded with its metrics (ledger, metrics.jsonl, wandb as STEP/peak_*):

    peak_rss_mb         the loop process's peak resident set during the step (Linux VmHWM, reset at the
                        step's start by writing 5 to /proc/self/clear_refs); absent where that reset is not
                        possible, since the process's lifetime peak would be passed off as the step's
    peak_rss_worker_mb  a stage run under `accelerate launch` (launcher=zero2 / zero3 / multi_process): the
                        largest of its worker processes' peaks (each a fresh process, so its VmHWM is its own)
    peak_gpu_mb         where CUDA is in use: torch's peak allocation on the current device during the step
                        (and the workers' largest, in peak_gpu_worker_mb)

The step's own figure answers "which step needs the memory": with LoRA, for one, the policy update stops
being the largest (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

WORKER_PEAK_GLOB = "_peak_memory_rank*.json"
CLEAR_REFS = Path("/proc/self/clear_refs")  # writing 5 resets the process's peak RSS (VmHWM) to its current RSS

_reset_ok = False
_workers: dict[str, float] = {}


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cuda():
    """torch.cuda if this process already uses CUDA (never initialises it, never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def reset() -> None:
    """Start a step: the process's peak RSS and CUDA peak go back to what is in use now."""
    global _reset_ok
    _workers.clear()
    try:
        CLEAR_REFS.write_text("5")
        _reset_ok = _status_kb("VmHWM") is not None
    except OSError:
        _reset_ok = False
    cuda = _cuda()
    if cuda is not None:
        cuda.reset_peak_memory_stats()


def own_peak() -> dict:
    """This process's peaks since the last reset (or since it started), in MiB."""
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
        for k, v in peak.items():
            if isinstance(v, (int, float)):
                _workers[k] = max(_workers.get(k, 0.0), float(v))


def step_peak() -> dict:
    """The step's peaks, as metrics (see the module's docstring)."""
    own = own_peak()
    out = {}
    if _reset_ok and "rss_mb" in own:
        out["peak_rss_mb"] = own["rss_mb"]
    if "gpu_mb" in own:
        out["peak_gpu_mb"] = own["gpu_mb"]
    if "rss_mb" in _workers:
        out["peak_rss_worker_mb"] = _workers["rss_mb"]
    if "gpu_mb" in _workers:
        out["peak_gpu_worker_mb"] = _workers["gpu_mb"]
    return out


__all__ = ["reset", "own_peak", "step_peak", "write_worker_peak", "collect_worker_peaks"]
