"""One markdown row per testbed run: how its gate treated the candidates, judged afterwards by gold.

    python scripts/gate_table.py RUN_DIR... [--drop 0.1]

A candidate is "worse" when its gold is below the last good policy's by more than --drop (the gate did
not see gold unless loop.gate.oracle=gold). Columns: gate oracle, seed, candidates, worse ones rejected
/ worse ones, better-or-equal ones rejected (false rejections), the first iteration a worse candidate
was rejected, final gold (last accepted policy) vs the SFT baseline, oracle calls per gate decision.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def row(run: Path, drop: float) -> str:
    s = json.loads((run / "summary.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    base = json.loads((run / "setup" / "baseline" / "eval.json").read_text())["gold"]
    oracle = cfg["loop"]["gate"]["oracle"]
    if oracle == "auto":
        oracle = "judge" if cfg["loop"]["judge"]["model"] or cfg["loop"]["judge"]["url"] else "gold"
    good, worse, caught, false_rej, first, calls = base, 0, 0, 0, None, []
    for it in s["iterations"]:
        g = it.get("gold")
        if g is None:  # abandoned before evaluation
            continue
        ev = run / f"iter_{it['iteration']:03d}" / "evaluate" / "eval.json"
        if ev.exists():
            c = json.loads(ev.read_text()).get("judge_calls")
            if c is not None:
                calls.append(c)
        bad = g < good - drop
        rejected = it["status"] == "rolled_back"
        worse += bad
        caught += bad and rejected
        false_rej += (not bad) and rejected
        if bad and rejected and first is None:
            first = it["iteration"]
        if not rejected:
            good = g
    n = sum(1 for it in s["iterations"] if it.get("gold") is not None)
    per = f"{sum(calls) / len(calls):.0f}" if calls else "-"
    return (f"| {oracle} | {cfg['seed']} | {n} | {caught}/{worse} | {false_rej} | {first if first is not None else '-'} | "
            f"{good:+.3f} vs {base:+.3f} | {per} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--drop", type=float, default=0.1)
    args = ap.parse_args()
    print("| gate oracle | seed | candidates | worse ones rejected | false rejections | first catch (iteration) "
          "| final gold vs SFT | oracle calls / decision |")
    print("|---|---|---|---|---|---|---|---|")
    for r in args.runs:
        print(row(Path(r), args.drop))


if __name__ == "__main__":
    main()
