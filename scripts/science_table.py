"""The science table: every policy update of the loop on the testbed at matched compute, over seeds, set
against Gao et al.'s best-of-n frontier from the same SFT policy.

    python scripts/science_table.py run  --root /tmp/science [--seeds 0 1 2] [--methods ppo rloo ...]
    python scripts/science_table.py bon  --root /tmp/science [--seed 0] [--n 64]
    python scripts/science_table.py table --root /tmp/science

`run` runs each (method, seed) into ROOT/METHOD_sSEED (a finished run, one with summary.json, is skipped,
so the command resumes; an unfinished one resumes from its ledger). Methods and how each is set (none tuned
more than the others; every one sees 64 fresh prompts and 64 careful-annotator labels per iteration, 6
iterations, the same SFT policy and RM warm-up per seed):

  ppo                 +experiment=tiny_online_ppo          (256 PPO episodes per iteration, 4 epochs)
  rloo / grpo         +experiment=tiny_online_rloo / _grpo (4 completions per prompt, 4 passes per batch)
  rejection_sampling  +experiment=tiny_rejection_sampling  (SFT on the RM's best of 4 per prompt)
  iterative_dpo       +experiment=tiny_iterative_dpo       (DPO on each iteration's 64 fresh pairs, 1 epoch)
  offline_dpo         tiny_iterative_dpo with 1 iteration of 384 prompts: the same 384 labelled pairs as
                      iterative DPO's 6 x 64, all sampled from the SFT policy, one DPO epoch over them
                      (the same number of gradient steps)

and the DPO variants (`--methods iterative_dpo_ref_policy ...`, DPO_VARIANTS below): the reference moved
to each iteration's starting policy, 3 epochs per DPO pass (both), 128 pairs x 3 iterations, beta 0.03 (both).

`bon` draws --n samples per gold-eval prompt from the SFT policy of ROOT/ppo_sSEED (the eval temperature),
scores them with that run's warm-up RM (the proxy) and with gold, and computes for every n in 1..N the
expected gold and proxy of the proxy-best of n samples (the unbiased estimator over all n-subsets of the N
samples, as in Gao et al. 2022), with KL_bon = log n - (n-1)/n; it fits gold gain = d (a - b d), d =
sqrt(KL_bon), by least squares and writes ROOT/bon.json.

`table` prints the markdown for docs/results.md: per method the mean and spread over seeds of the gold gain
over SFT, the final KL, the gain's ratio to the frontier's at the same KL, the per-iteration gold against
sqrt(KL), and the wall time per iteration.

Run end to end on 2026-12-06 (docs/results.md, "The science table"). `run` and `table` count only runs whose
summary says completed (summary.json is rewritten after every step); the wall time is the iterations' steps
from the ledger (setup, the same per seed, left out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

METHODS = {
    "ppo": ["+experiment=tiny_online_ppo"],
    "rloo": ["+experiment=tiny_online_rloo"],
    "grpo": ["+experiment=tiny_online_grpo"],
    "rejection_sampling": ["+experiment=tiny_rejection_sampling"],
    "iterative_dpo": ["+experiment=tiny_iterative_dpo"],
    "offline_dpo": ["+experiment=tiny_iterative_dpo", "name=science_offline_dpo", "loop.iterations=1",
                    "loop.prompts_per_iteration=384"],
}
OFFLINE = METHODS["offline_dpo"]
# Why iterative DPO does not beat offline DPO at matched compute: one change at a time, each to both where
# it applies to both (same pairs, same number of DPO steps between the two).
DPO_VARIANTS = {
    "iterative_dpo_ref_policy": ["+experiment=tiny_iterative_dpo", "loop.dpo_reference=policy"],
    "iterative_dpo_3ep": ["+experiment=tiny_iterative_dpo", "stage.dpo.num_train_epochs=3"],
    "offline_dpo_3ep": [*OFFLINE, "stage.dpo.num_train_epochs=3"],
    "iterative_dpo_128x3": ["+experiment=tiny_iterative_dpo", "loop.prompts_per_iteration=128", "loop.iterations=3"],
    "iterative_dpo_beta003": ["+experiment=tiny_iterative_dpo", "loop.kl.beta=0.03"],
    "offline_dpo_beta003": [*OFFLINE, "loop.kl.beta=0.03"],
}
METHODS.update(DPO_VARIANTS)


def run(root: Path, methods: list[str], seeds: list[int], extra: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), TRL_EXPERIMENTAL_SILENCE="1",
               TOKENIZERS_PARALLELISM="false")
    for seed in seeds:
        for m in methods:
            out = root / f"{m}_s{seed}"
            if _completed(out):
                print(f"{out}: done", flush=True)
                continue
            cmd = [sys.executable, "-m", "rlhf_ops", *METHODS[m], f"seed={seed}", f"run_dir={out}",
                   "tracking=disabled", *extra]
            print(" ".join(cmd[1:]), flush=True)
            rc = subprocess.call(cmd, env=env)
            if rc != 0:
                print(f"{out}: exit {rc}", flush=True)


def _completed(run_dir: Path) -> bool:
    """A finished run (summary.json is rewritten after every step, so its presence alone means nothing)."""
    f = run_dir / "summary.json"
    return f.exists() and json.loads(f.read_text()).get("status") == "completed"


def bon_expectations(proxy, gold, n_max: int):
    """Per n = 1..n_max the expected (gold, proxy) of the proxy-argmax of a uniformly random n-subset of the
    N samples of each prompt, averaged over prompts. With the N samples of a prompt sorted by proxy
    (ascending, rank i = 1..N), sample i is the subset's argmax with probability C(i-1, n-1) / C(N, n)."""
    import numpy as np

    out = []
    for n in range(1, n_max + 1):
        g_tot, p_tot = 0.0, 0.0
        for pr, go in zip(proxy, gold):
            order = np.argsort(pr, kind="stable")
            pr_s, go_s = np.asarray(pr)[order], np.asarray(go)[order]
            N = len(pr_s)
            i = np.arange(1, N + 1)
            # log C(i-1, n-1) - log C(N, n), zero weight where i-1 < n-1
            w = np.zeros(N)
            ok = i >= n
            lg = math.lgamma
            w[ok] = np.exp([lg(k) - lg(n) - lg(k - n + 1) - (lg(N + 1) - lg(n + 1) - lg(N - n + 1)) for k in i[ok]])
            g_tot += float((w * go_s).sum())
            p_tot += float((w * pr_s).sum())
        out.append({"n": n, "kl_bon": math.log(n) - (n - 1) / n, "gold": g_tot / len(gold),
                    "proxy": p_tot / len(proxy)})
    return out


def fit_frontier(points):
    """Least squares of gain = d (a - b d) = a d - b d^2 (no intercept: gain 0 at d 0); R^2 on the gains."""
    import numpy as np

    d = np.array([math.sqrt(p["kl_bon"]) for p in points])
    y = np.array([p["gold_gain"] for p in points])
    X = np.stack([d, -d * d], 1)
    (a, b), *_ = np.linalg.lstsq(X, y, rcond=None)
    pred = X @ np.array([a, b])
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return float(a), float(b), 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def bon(root: Path, seed: int, n: int) -> None:
    import numpy as np
    from omegaconf import OmegaConf

    from rlhf_ops.artifacts import read_table
    from rlhf_ops.generation import generate
    from rlhf_ops.scoring import load_scorer, reward_scores
    from rlhf_ops.tasks import make_task

    run_dir = root / f"ppo_s{seed}"
    cfg = OmegaConf.load(run_dir / "config.yaml")
    summary = json.loads((run_dir / "summary.json").read_text())
    sft = summary["outputs"]["sft_policy"]
    sft = str(run_dir / sft) if not Path(sft).is_absolute() else sft  # the ledger keeps run-dir paths relative

    def one(pattern: str) -> Path:  # setup's artifacts: the warm-up RM and the rendered eval prompts
        hits = sorted(p for p in run_dir.glob(pattern) if "iter_" not in str(p.relative_to(run_dir)))
        if not hits:
            raise SystemExit(f"science_table bon: nothing matches {run_dir}/{pattern} outside iter_*")
        return hits[0]

    rm = str(one("**/rm"))
    task = make_task(cfg.task)
    prompts = read_table(one("**/prompts_gold_eval.parquet"))
    src = dict(zip(prompts["prompt"], prompts.get("prompt_source", prompts["prompt"])))
    temp = cfg.loop.eval_temperature or cfg.stage.ppo.temperature
    max_new = cfg.stage.ppo.response_length
    s = generate(sft, prompts["prompt"].tolist(), n, max_new_tokens=max_new, temperature=temp, seed=seed + 1000,
                 batch_size=64)
    model, tok = load_scorer(rm)
    proxy = reward_scores(model, tok, s.prompts, s.completions, "mean", 1.0, batch_size=64)
    gold = np.array([task.gold(src[p], c) for p, c in zip(s.prompts, s.completions)])
    idx = np.asarray(s.prompt_index)
    P = [proxy[idx == k] for k in range(len(prompts))]
    G = [gold[idx == k] for k in range(len(prompts))]
    pts = bon_expectations(P, G, n)
    base = pts[0]["gold"]
    for p in pts:
        p["gold_gain"] = p["gold"] - base
        p["proxy_gain"] = p["proxy"] - pts[0]["proxy"]
    a, b, r2 = fit_frontier(pts)
    out = {"seed": seed, "n": n, "sft": sft, "rm": rm, "temperature": temp, "max_new_tokens": max_new,
           "n_prompts": len(prompts), "sft_gold_bon": base, "fit": {"a": a, "b": b, "r2": r2}, "points": pts}
    (root / "bon.json").write_text(json.dumps(out, indent=1))
    print(f"best-of-n from {sft}: gold gain = d ({a:.3f} - {b:.3f} d), R^2 {r2:.3f}; n={n}: gold gain "
          f"{pts[-1]['gold_gain']:+.3f}, proxy gain {pts[-1]['proxy_gain']:+.3f} at KL_bon {pts[-1]['kl_bon']:.2f}")


def _iteration_wall(run_dir: Path) -> float:
    """Seconds spent in the iterations' steps (setup, the same for every method of a seed, left out)."""
    from rlhf_ops.ledger import Ledger

    with Ledger(run_dir) as ledger:
        return sum(r.get("wall_s") or 0.0 for r in ledger.stage_history()
                   if r.get("status") == "done" and r["iteration"] >= 0)


def _summ(run_dir: Path):
    s = json.loads((run_dir / "summary.json").read_text())
    its = s["iterations"]
    final = s["final"]["eval"] or {}
    wall = _iteration_wall(run_dir)
    return {"sft_gold": s["baseline"]["gold"], "gold": final.get("gold"), "kl": final.get("kl", 0.0),
            "wall_per_it": wall / max(1, len(its)), "wall": wall, "n_it": len(its),
            "rolled_back": sum(it["status"] == "rolled_back" for it in its),
            "trace": [(it.get("gold"), it.get("kl"), it["status"]) for it in its]}


def table(root: Path) -> None:
    import numpy as np

    fr = json.loads((root / "bon.json").read_text()) if (root / "bon.json").exists() else None

    def frontier(kl):
        if fr is None:
            return float("nan")
        d = math.sqrt(max(kl, 0.0))
        return d * (fr["fit"]["a"] - fr["fit"]["b"] * d)

    print("| method | seeds | gold gain over SFT | final KL | gain / best-of-n gain at that KL | "
          "gain per sqrt(KL) | rolled back | wall of the iterations (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for m in METHODS:
        rows = [_summ(p) for p in sorted(root.glob(f"{m}_s*")) if _completed(p)]
        if not rows:
            continue
        gain = np.array([r["gold"] - r["sft_gold"] for r in rows])
        kl = np.array([r["kl"] for r in rows])
        ratio = np.array([g / frontier(k) if frontier(k) > 0 else float("nan") for g, k in zip(gain, kl)])
        slope = np.array([g / math.sqrt(k) if k > 0 else float("nan") for g, k in zip(gain, kl)])
        wall = np.array([r["wall"] for r in rows])

        def ms(x, f="{:+.3f}"):
            return (f.format(x.mean()) + (f" ± {x.std(ddof=1):.3f}" if len(x) > 1 else "")) if len(x) else "-"

        print(f"| {m} | {len(rows)} | {ms(gain)} | {ms(kl, '{:.2f}')} | {ms(ratio, '{:.2f}')} | "
              f"{ms(slope, '{:.3f}')} | {sum(r['rolled_back'] for r in rows)} / {sum(r['n_it'] for r in rows)} | "
              f"{ms(wall, '{:.0f}')} |")
    print()
    print("Per iteration (seed-mean gold gain over SFT @ sqrt(KL); R marks an iteration rolled back in any seed):")
    print()
    for m in METHODS:
        rows = [_summ(p) for p in sorted(root.glob(f"{m}_s*")) if _completed(p)]
        if not rows:
            continue
        n = min(len(r["trace"]) for r in rows)
        cells = []
        for i in range(n):
            g = [r["trace"][i][0] - r["sft_gold"] for r in rows if r["trace"][i][0] is not None]
            k = [r["trace"][i][1] for r in rows if r["trace"][i][1] is not None]
            rb = any(r["trace"][i][2] == "rolled_back" for r in rows)
            if g and k:
                cells.append(f"{np.mean(g):+.2f}@{math.sqrt(max(np.mean(k), 0)):.2f}{'R' if rb else ''}")
        print(f"- {m}: " + "  ".join(cells))
    if fr is not None:
        f = fr["fit"]
        print()
        print(f"Best-of-n from the seed-{fr['seed']} SFT policy ({fr['n_prompts']} gold-eval prompts x {fr['n']} "
              f"samples, temperature {fr['temperature']}): gold gain = d ({f['a']:.3f} - {f['b']:.3f} d), "
              f"d = sqrt(KL_bon), R^2 = {f['r2']:.3f}.")
        print()
        print("| n | KL_bon | sqrt(KL_bon) | gold gain | proxy gain | fit |")
        print("|---|---|---|---|---|---|")
        for p in fr["points"]:
            if p["n"] in (1, 2, 4, 8, 16, 32, 64) or p["n"] == fr["n"]:
                d = math.sqrt(p["kl_bon"])
                print(f"| {p['n']} | {p['kl_bon']:.2f} | {d:.2f} | {p['gold_gain']:+.3f} | {p['proxy_gain']:+.3f} | "
                      f"{d * (f['a'] - f['b'] * d):+.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["run", "bon", "table"])
    ap.add_argument("--root", default="/tmp/science")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--methods", nargs="+", default=[m for m in METHODS if m not in DPO_VARIANTS],
                    choices=list(METHODS))
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for `run`")
    a = ap.parse_args()
    root = Path(a.root)
    if a.what == "run":
        run(root, a.methods, a.seeds, a.overrides)
    elif a.what == "bon":
        bon(root, a.seed, a.n)
    else:
        table(root)


if __name__ == "__main__":
    main()
