"""Export a run's policy as one full model directory (a LoRA adapter merged into its base), to ship or serve:

    python -m rlhf_ops.export RUN_DIR                      # the last accepted policy -> RUN_DIR/export/policy
    python -m rlhf_ops.export RUN_DIR --which final --out /models/mine
    python -m rlhf_ops.export PATH/TO/CHECKPOINT --out DIR  # any policy checkpoint of a run (adapter or full)

`--which`: last_good (the policy the gate last accepted, default), current (the loop's current policy) or
sft. The output is written through the atomic writer (a temporary directory, then a rename) with the
tokenizer and a `stage_meta.json` saying what was merged; an existing output is refused unless
`--overwrite`. A full-weights checkpoint is copied as it is (loaded and saved again as safetensors).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .artifacts import InputError, atomic_dir, check_output, write_meta
from .ledger import LEDGER_FILENAME


def policy_of_run(run_dir: Path, which: str) -> Path:
    """The policy checkpoint a run's ledger names (its last committed state, paths as they are now)."""
    from .ledger import Ledger
    from .loop.state import LoopState

    if not (run_dir / LEDGER_FILENAME).is_file():
        raise InputError(f"{run_dir}: not a run directory (no {LEDGER_FILENAME}) and not a checkpoint directory")
    with Ledger(run_dir) as ledger:
        last = ledger.last_completed()
    if last is None:
        raise InputError(f"{run_dir}: the run has not finished a step yet; nothing to export")
    state = LoopState.from_json(last[2])
    path = {"last_good": state.last_good.policy if state.last_good else "", "current": state.policy,
            "sft": state.sft_policy}[which] or state.policy
    if not path:
        raise InputError(f"{run_dir}: the run has no policy yet (its setup has not trained one); nothing to export")
    return Path(path)


def export(source: Path, out: Path, *, which: str = "last_good", overwrite: bool = False,
           trust_remote_code: bool = False) -> dict:
    from .checkpoints import check_checkpoint_dir
    from .lora import adapter_base, is_adapter
    from .models import load_policy, load_tokenizer

    policy = source if (source / "config.json").is_file() or is_adapter(source) else policy_of_run(source, which)
    check_checkpoint_dir(policy, "policy", tokenizer=True)
    check_output(out, overwrite)
    model = load_policy(policy, trust_remote_code)  # an adapter comes back merged into its base
    tok = load_tokenizer(policy, trust_remote_code)
    meta = {"source": str(policy), "lora_base": str(adapter_base(policy)) if is_adapter(policy) else None,
            "merged": is_adapter(policy), "n_parameters": sum(p.numel() for p in model.parameters())}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        write_meta(tmp, {"stage": "export", **meta})
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlhf_ops.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="a run directory, or a policy checkpoint directory (adapter or full)")
    ap.add_argument("--out", help="output directory (default: RUN_DIR/export/policy, or SOURCE-merged)")
    ap.add_argument("--which", choices=("last_good", "current", "sft"), default="last_good")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--trust-remote-code", action="store_true")
    a = ap.parse_args(argv)
    source = Path(a.source)
    if not source.is_dir():
        print(f"rlhf_ops.export: error: {source}: no such directory", file=sys.stderr)
        return 1
    is_run = (source / LEDGER_FILENAME).is_file()
    out = Path(a.out) if a.out else (source / "export" / "policy" if is_run else source.with_name(source.name + "-merged"))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        meta = export(source, out, which=a.which, overwrite=a.overwrite, trust_remote_code=a.trust_remote_code)
    except (InputError, OSError, ValueError) as e:
        print(f"rlhf_ops.export: error: {str(e).replace('overwrite=true', '--overwrite')}", file=sys.stderr)
        return 1
    what = f"LoRA adapter {meta['source']} merged into {meta['lora_base']}" if meta["merged"] else meta["source"]
    print(f"rlhf_ops.export: {what} -> {out} ({meta['n_parameters']:,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
