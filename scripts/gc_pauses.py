"""The garbage collector's pauses over one whole `python -m rlhf_ops` command, per generation.

    python scripts/gc_pauses.py +experiment=quickstart loop.iterations=1 run_dir=COPY_OF_A_SET_UP_RUN

registers a `gc.callbacks` timer first, runs the CLI in this process, and prints on stderr at exit
(the CLI's fast exit runs the exit handlers) the total pause, the number of collections per
generation and the time per generation; each full (generation 2) collection is printed as it happens
with its time since start (while a step runs, the console sends stderr to the step's log).
"""

from __future__ import annotations

import atexit
import collections
import gc
import runpy
import sys
import time

T0 = time.perf_counter()
total = {"s": 0.0}
counts: collections.Counter = collections.Counter()
spent: collections.Counter = collections.Counter()
started = [0.0]


def _callback(phase: str, info: dict) -> None:
    if phase == "start":
        started[0] = time.perf_counter()
        return
    dt = time.perf_counter() - started[0]
    total["s"] += dt
    counts[info["generation"]] += 1
    spent[info["generation"]] += dt
    if info["generation"] == 2:
        sys.stderr.write(f"full collection at {time.perf_counter() - T0:.2f} s took {dt:.3f} s\n")


def _report() -> None:
    sys.stderr.write(f"GC pauses: {total['s']:.2f} s in all; collections per generation {dict(counts)}; seconds "
                     f"per generation { {k: round(v, 2) for k, v in spent.items()} }; wall "
                     f"{time.perf_counter() - T0:.1f} s\n")


gc.callbacks.append(_callback)
atexit.register(_report)
sys.argv = ["rlhf_ops", *sys.argv[1:]]
runpy.run_module("rlhf_ops", run_name="__main__")
