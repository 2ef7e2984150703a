"""Print a markdown table of finished runs (for docs/results.md), one row per run dir.

    python scripts/summarize_runs.py runs/tiny_online_ppo runs/tiny_iterative_dpo ...

Columns: experiment, seed, SFT gold (the baseline), final gold (the last accepted policy, what
the run hands over), KL of that policy to the SFT reference, accepted / rolled back iterations,
and the per-iteration gold of every iteration (R = rolled back).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(run_dir: Path) -> str:
    s = json.loads((run_dir / "summary.json").read_text())
    base, final = s["baseline"], s["final"]["eval"] or {}
    its = s["iterations"]
    acc = sum(it["status"] == "accepted" for it in its)
    trace = " ".join(f"{it['gold']:+.2f}{'R' if it['status'] == 'rolled_back' else ''}"
                     if it.get("gold") is not None else "nan" for it in its)
    return (f"| {s['name']} | {s['seed']} | {base['gold']:+.3f} | {final.get('gold', float('nan')):+.3f} | "
            f"{final.get('kl', 0.0):.2f} | {final.get('length', float('nan')):.1f} | {acc} / {len(its) - acc} | "
            f"{trace} | {s['wall_s']:.0f} |")


def main(paths: list[str]) -> None:
    print("| experiment | seed | SFT gold | final gold | final KL | final length (words) | accepted / rolled back "
          "| gold per iteration (R = rolled back) | stage time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in paths:
        print(row(Path(p)))


if __name__ == "__main__":
    main(sys.argv[1:])
