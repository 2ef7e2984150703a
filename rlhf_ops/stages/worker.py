"""Entry point of one `accelerate launch` worker: runs a stage's `train(spec)` on this rank.

Started by rlhf_ops.launcher, never by hand:
    accelerate launch --num_processes 2 [--use_deepspeed ...] -m rlhf_ops.stages.worker SPEC.json
Rank 0 writes the metrics to `_result.json` in the stage's temporary directory; every rank its peak memory
(rlhf_ops.memory).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(spec_path: str) -> None:
    from .. import memory
    from ..launcher import RESULT_FILE, stage_module
    from .common import is_main_process

    from transformers import set_seed

    spec = json.loads(Path(spec_path).read_text())
    set_seed(spec["seed"])
    metrics = stage_module(spec["stage"]).train(spec)
    memory.write_worker_peak(spec["tmp_dir"])  # every rank: the launcher keeps the largest
    if is_main_process():
        out = Path(spec["tmp_dir"]) / RESULT_FILE
        out.write_text(json.dumps(metrics, default=float))


if __name__ == "__main__":
    main(sys.argv[1])
