"""The gate's statistics on simulated judges (no models): the betting confidence sequence's coverage
over whole paths, its width, and how many comparisons the sequential test needs to decide.

    python scripts/gate_stats.py [--paths 200] [--alpha 0.05] [--threshold 0.4]

Prints one JSON line per setting. Outcomes are hard (Bernoulli win rate m, as loop.gate.outcome=hard).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from rlhf_ops.control.ab_test import BettingCS, sequential_decision


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paths", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--threshold", type=float, default=0.4)
    ap.add_argument("--horizon", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for m in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        miss, widths, stops, wrong = 0, [], [], 0
        for _ in range(args.paths):
            cs, bad, stop = BettingCS(alpha=args.alpha, grid_size=499), False, None
            for t in range(1, args.horizon + 1):
                cs.update(float(rng.random() < m))
                bad |= not (cs.lo <= m <= cs.hi)
                d = sequential_decision(cs, args.threshold)
                if d and stop is None:
                    stop = t
                    wrong += (d == "lost") != (m < args.threshold)
            miss += bad
            widths.append(cs.hi - cs.lo)
            stops.append(stop if stop is not None else np.nan)
        s = np.array(stops, dtype=float)
        print(json.dumps({"win_rate": m, "alpha": args.alpha, "paths": args.paths, "horizon": args.horizon,
                          "miscoverage": miss / args.paths, "width_at_horizon": round(float(np.mean(widths)), 3),
                          "decided": float(np.mean(np.isfinite(s))),
                          "median_comparisons_to_decide": float(np.nanmedian(s)) if np.isfinite(s).any() else None,
                          "wrong_decisions": wrong / args.paths}))


if __name__ == "__main__":
    main()
