#!/usr/bin/env python
"""rlhf_ops against plain TRL scripts that train exactly the same thing: wall time, peak RSS, weights.

For every stage (job=sft|reward|ppo|dpo) and for one iteration of the quickstart loop, "ours" is the
command line a user runs, timed as a subprocess from start to exit:

    python -m rlhf_ops job=sft    io.policy=INIT io.data=sft_demos.parquet     io.output=OUT
    python -m rlhf_ops job=reward io.reward_model=SFT io.data=offline_pairs.parquet io.output=OUT
    python -m rlhf_ops job=ppo    io.policy=SFT io.reward_model=RM io.data=prompts_train.parquet io.output=OUT
    python -m rlhf_ops job=dpo    io.policy=SFT io.data=offline_pairs.parquet  io.output=OUT
    python -m rlhf_ops +experiment=quickstart loop.iterations=1 run_dir=COPY allow_config_change=true
        (COPY: a fresh copy of a run dir whose setup is done: the process runs exactly one iteration)

and "raw" is the matching script in scripts/raw_trl/ (torch / transformers / trl / datasets / pandas
only, no rlhf_ops): the same model directories and data, the same TRL config fields, the same seeds,
saved with save_model + the tokenizer. The inputs are made once, untimed, by rlhf_ops' own loop setup
(`loop.iterations=0 loop.steps=[]`: prepare, SFT, reward-model warm-up, baseline evaluation).

Runs alternate (ours first on even pairs, raw first on odd ones). After every pair the saved
safetensors of both sides are compared tensor by tensor (torch.equal; the max abs diff if not);
the iteration also compares its RM and its collected completions. Per stage it prints the median
ours/raw wall-time ratio with its range over the pairs, the median walls, the peak RSS of each
side (ru_maxrss of the child from os.wait4), the ours/raw ratio of CPU time (user + sys of the child,
less sensitive than wall time to other work on the machine) and the 1-minute load average seen
before and after the runs.

    python scripts/bench_vs_trl.py --stages sft,reward,ppo,dpo,iteration --pairs 5 --work /tmp/bench --out bench.json
    python scripts/bench_vs_trl.py --fast --work /tmp/bench_fast   # CI: 1 pair, tiny sizes, weights only

`--fast` shrinks the task, the model and every stage to a few steps; it checks the weights and makes
no timing claim. The exit status is 1 when any pair's weights differ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RAW = HERE / "raw_trl"
STAGES = ("sft", "reward", "ppo", "dpo", "iteration")

# --fast: the review testbed, the model and every stage shrunk to seconds (as tests/conftest.py's TINY).
FAST_SETUP = [
    "task.n_train_prompts=48", "task.n_eval_prompts=16", "task.n_gold_eval_prompts=8",
    "task.sft_demos_per_prompt=2", "task.n_offline_pairs=64", "task.tokenizer_corpus_size=600",
    "model.hidden_size=32", "model.intermediate_size=64", "model.vocab_size=400",
    "loop.prompts_per_iteration=8", "loop.eval_samples_per_prompt=1", "tracking=disabled", "progress=false",
]
FAST_STAGE = {  # ours' override -> the raw script's flag
    "sft": {"stage.sft.max_steps=6": ["--max-steps", "6"]},
    "reward": {"stage.reward.max_steps=4": ["--max-steps", "4"]},
    "dpo": {"stage.dpo.max_steps=3": ["--max-steps", "3"]},
    "ppo": {"stage.ppo.total_episodes=16": ["--total-episodes", "16"],
            "stage.ppo.per_device_train_batch_size=8": ["--batch-size", "8"],
            "stage.ppo.num_ppo_epochs=1": ["--num-ppo-epochs", "1"],
            "stage.ppo.response_length=16": ["--response-length", "16"]},
}


def fast_ours(stages) -> list[str]:
    return [o for s in stages for o in FAST_STAGE[s]]


def fast_raw(stage: str) -> list[str]:
    return [f for flags in FAST_STAGE[stage].values() for f in flags]


class Bench:
    def __init__(self, a):
        self.a, self.py, self.repo = a, a.python, Path(a.repo).resolve()
        self.work = Path(a.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)

    # -- running one child ---------------------------------------------------------------------------
    def run(self, cmd: list[str], log: Path, cwd: Path | None = None) -> dict:
        """Run `cmd` to its end; wall seconds, the child's peak RSS and the load average before it."""
        log.parent.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=str(cwd or self.repo), stdout=f, stderr=subprocess.STDOUT)
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}\n(log {log})\n{tail}")
        return {"wall_s": round(wall, 3), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "load1": round(load[0], 2),
                "load1_after": round(os.getloadavg()[0], 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
                "user_s": round(ru.ru_utime, 2), "sys_s": round(ru.ru_stime, 2), "log": str(log)}

    def ours(self, *overrides: str) -> list[str]:
        return [self.py, "-m", "rlhf_ops", *overrides]

    # -- inputs, made once by rlhf_ops' own setup ----------------------------------------------------------
    def setup_overrides(self) -> list[str]:
        fast = [*FAST_SETUP, *fast_ours(FAST_STAGE)] if self.a.fast else []
        return ["+experiment=quickstart", f"seed={self.a.seed}", *fast]

    def prepare(self) -> dict:
        run_dir, marker = self.work / "setup_run", self.work / "setup_run" / "SETUP_DONE"
        if not marker.is_file() or json.loads(marker.read_text()).get("overrides") != self.setup_overrides():
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"inputs: rlhf_ops loop setup into {run_dir} (untimed)", flush=True)
            r = self.run(self.ours(*self.setup_overrides(), "loop.iterations=0", "loop.steps=[]", f"run_dir={run_dir}"),
                         self.work / "logs" / "setup.log")
            marker.write_text(json.dumps({**r, "overrides": self.setup_overrides()}))
            shutil.rmtree(self.work / "iteration_ref", ignore_errors=True)  # its labels came from the old setup
        p = run_dir / "setup" / "prepare"
        return {"run_dir": run_dir, "init": p / "init_policy", "sft_data": p / "sft_demos.parquet",
                "pairs": p / "offline_pairs.parquet", "prompts": p / "prompts_train.parquet",
                "eval_prompts": p / "prompts_gold_eval.parquet", "sft": run_dir / "setup" / "sft" / "policy",
                "rm": run_dir / "setup" / "rm_warmup" / "rm"}

    # -- the commands of one pair ----------------------------------------------------------------------
    def stage_cmds(self, stage: str, inp: dict, out_ours: Path, out_raw: Path, gc: str) -> tuple[list, list]:
        io = {"sft": [f"io.policy={inp['init']}", f"io.data={inp['sft_data']}"],
              "reward": [f"io.reward_model={inp['sft']}", f"io.data={inp['pairs']}"],
              "ppo": [f"io.policy={inp['sft']}", f"io.reward_model={inp['rm']}", f"io.data={inp['prompts']}"],
              "dpo": [f"io.policy={inp['sft']}", f"io.data={inp['pairs']}"]}[stage]
        raw_io = {"sft": ["--policy", inp["init"], "--data", inp["sft_data"]],
                  "reward": ["--init", inp["sft"], "--data", inp["pairs"]],
                  "ppo": ["--policy", inp["sft"], "--reward-model", inp["rm"], "--data", inp["prompts"]],
                  "dpo": ["--policy", inp["sft"], "--data", inp["pairs"]]}[stage]
        ours = self.ours(f"job={stage}", f"seed={self.a.seed}", *io, f"io.output={out_ours}",
                         *(fast_ours([stage]) if self.a.fast else []))
        raw = [self.py, str(RAW / f"{stage}.py"), *map(str, raw_io), "--output", str(out_raw), "--seed", str(self.a.seed),
               "--gradient-checkpointing", gc, *(fast_raw(stage) if self.a.fast else [])]
        return ours, raw

    def iteration_ref(self, inp: dict) -> Path:
        """One untimed iteration of ours: its labels (the simulated annotator's) are the raw script's --pairs."""
        ref = self.work / "iteration_ref"
        if not (ref / "ITERATION_DONE").is_file():
            shutil.rmtree(ref, ignore_errors=True)
            shutil.copytree(inp["run_dir"], ref)
            print(f"inputs: one rlhf_ops iteration into {ref} for its labels (untimed)", flush=True)
            r = self.run(self.iteration_ours(ref), self.work / "logs" / "iteration_ref.log")
            (ref / "ITERATION_DONE").write_text(json.dumps(r))
        return ref

    def iteration_ours(self, run_dir: Path) -> list[str]:
        # tracking=disabled with --no-tracking: the raw script logs nothing, while the quickstart's default
        # (tracking=offline) starts a wandb run; the loop's own records (ledger, metrics.jsonl) stay.
        off = ["tracking=disabled"] if self.a.no_tracking else []
        return self.ours(*self.setup_overrides(), "loop.iterations=1", f"run_dir={run_dir}", "allow_config_change=true",
                         *off)

    def iteration_raw(self, inp: dict, ref: Path, out: Path, gc: str) -> list[str]:
        meta = json.loads((ref / "iter_000" / "policy_update" / "policy" / "stage_meta.json").read_text())
        if abs(meta["extra"].get("lr_scale", 1.0) - 1.0) > 1e-12:
            raise RuntimeError(f"the iteration's lr_scale is {meta['extra']['lr_scale']}, raw_trl/iteration.py assumes 1")
        cmd = [self.py, str(RAW / "iteration.py"), "--policy", str(inp["sft"]), "--reward-model", str(inp["rm"]),
               "--prompts", str(inp["prompts"]), "--eval-prompts", str(inp["eval_prompts"]),
               "--pairs", str(ref / "iter_000" / "label" / "pairs.parquet"), "--output", str(out),
               "--seed", str(self.a.seed), "--gradient-checkpointing", gc, "--kl-coef", repr(meta["extra"]["beta"])]
        if self.a.fast:
            cmd += ["--prompts-per-iteration", "8", "--eval-samples-per-prompt", "1", "--reward-max-steps", "4",
                    *fast_raw("ppo")]
        return cmd

    # -- one stage, several pairs --------------------------------------------------------------------
    def bench(self, stage: str, inp: dict) -> dict:
        ref = self.iteration_ref(inp) if stage == "iteration" else None
        gc = self.a.raw_gradient_checkpointing
        if gc == "auto" and ref is not None:
            gc = gc_flag(ours_stage_config(ref / "iter_000" / "policy_update" / "policy"))
        pairs = []
        for i in range(self.a.pairs):
            d = self.work / "runs" / stage / f"pair_{i}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            out_ours, out_raw = d / "ours", d / "raw"
            if stage == "iteration":
                shutil.copytree(inp["run_dir"], out_ours)  # setup done: the child runs one iteration
            order = ("ours", "raw") if i % 2 == 0 else ("raw", "ours")
            res = {}
            for side in order:
                if side == "ours":
                    cmd = self.iteration_ours(out_ours) if stage == "iteration" else \
                        self.stage_cmds(stage, inp, out_ours, out_raw, "off")[0]
                else:
                    if gc == "auto":  # pair 0 runs ours first: the TRL config it used decides
                        gc = gc_flag(ours_stage_config(out_ours))
                    cmd = self.iteration_raw(inp, ref, out_raw, gc) if stage == "iteration" else \
                        self.stage_cmds(stage, inp, out_ours, out_raw, gc)[1]
                res[side] = self.run(cmd, d / f"{side}.log")
            res["order"] = list(order)
            res["ratio"] = round(res["ours"]["wall_s"] / res["raw"]["wall_s"], 4)
            res["raw_gradient_checkpointing"] = gc
            if stage == "iteration":
                it = out_ours / "iter_000"
                res["weights"] = compare_dirs(it / "policy_update" / "policy", out_raw / "policy")
                raw_eval = json.loads((out_raw / "eval.json").read_text())
                res["rm_weights"] = compare_dirs(it / "rm_update" / "rm", out_raw / "rm")
                res["rm_kept_new"] = raw_eval["rm_kept_new"]
                res["completions_identical"] = same_completions(it / "collect" / "completions.parquet",
                                                                out_raw / "completions.parquet")
                res["eval"] = {"ours": pick(json.loads((it / "evaluate" / "eval.json").read_text())), "raw": pick(raw_eval)}
                res["identical"] = (res["weights"]["identical"] and res["completions_identical"]
                                    and (res["rm_weights"]["identical"] or not raw_eval["rm_kept_new"]))
            else:
                res["weights"] = compare_dirs(out_ours, out_raw)
                res["identical"] = res["weights"]["identical"]
            pairs.append(res)
            print(f"  {stage} pair {i + 1}/{self.a.pairs} ({'->'.join(order)}): ours {res['ours']['wall_s']:.1f}s "
                  f"raw {res['raw']['wall_s']:.1f}s ratio {res['ratio']:.3f}  weights "
                  f"{'identical' if res['identical'] else 'DIFFER: ' + json.dumps(res['weights'])}", flush=True)
        return {"stage": stage, "pairs": pairs, **summarize(pairs)}


def ours_stage_config(out: Path) -> dict:
    return json.loads((Path(out) / "stage_meta.json").read_text())["config"]


def gc_flag(cfg: dict) -> str:
    """The raw scripts' --gradient-checkpointing matching what ours passed to TRL (absent: TRL's default)."""
    v = cfg.get("gradient_checkpointing", (cfg.get("trl") or {}).get("gradient_checkpointing"))
    return "trl-default" if v is None else ("on" if v else "off")


def pick(e: dict) -> dict:
    return {k: e.get(k) for k in ("proxy", "kl", "entropy", "eos_rate")}


def same_completions(a: Path, b: Path) -> bool:
    import pandas as pd

    return pd.read_parquet(a)["completion"].tolist() == pd.read_parquet(b)["completion"].tolist()


def compare_dirs(a: Path, b: Path) -> dict:
    """Every safetensors tensor of checkpoint dir `a` against `b`: torch.equal, or the max abs diff."""
    import torch
    from safetensors.torch import load_file

    fa, fb = sorted(p.name for p in Path(a).glob("*.safetensors")), sorted(p.name for p in Path(b).glob("*.safetensors"))
    if not fa or fa != fb:
        return {"identical": False, "error": f"safetensors files differ: {fa} vs {fb}"}
    n, differing, max_diff, keys_differ = 0, [], 0.0, []
    for name in fa:
        ta, tb = load_file(str(Path(a) / name)), load_file(str(Path(b) / name))
        if ta.keys() != tb.keys():
            keys_differ += sorted(ta.keys() ^ tb.keys())
        for k in sorted(ta.keys() & tb.keys()):
            n += 1
            x, y = ta[k], tb[k]
            if x.shape != y.shape or x.dtype != y.dtype:
                differing.append(f"{k} ({x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)})")
                continue
            if not torch.equal(x, y):
                differing.append(k)
                max_diff = max(max_diff, float((x.double() - y.double()).abs().max()))
    out = {"identical": not differing and not keys_differ, "n_tensors": n}
    if differing or keys_differ:
        out.update(differing=differing[:8], n_differing=len(differing), max_abs_diff=max_diff, keys_differ=keys_differ[:8])
    return out


def summarize(pairs: list[dict]) -> dict:
    med = statistics.median
    ratios = [p["ratio"] for p in pairs]
    loads = [p[s][k] for p in pairs for s in ("ours", "raw") for k in ("load1", "load1_after") if k in p[s]]
    def cpu_s(r):
        return r.get("cpu_s", r.get("user_s", 0.0) + r.get("sys_s", 0.0))

    cpu = [cpu_s(p["ours"]) / cpu_s(p["raw"]) for p in pairs if cpu_s(p["raw"]) > 0]
    return {"ratio_median": round(med(ratios), 3), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "cpu_ratio_median": round(med(cpu), 3) if cpu else None,
            "ours_wall_median": round(med(p["ours"]["wall_s"] for p in pairs), 2),
            "raw_wall_median": round(med(p["raw"]["wall_s"] for p in pairs), 2),
            "ours_rss_mb": max(p["ours"]["peak_rss_mb"] for p in pairs),
            "raw_rss_mb": max(p["raw"]["peak_rss_mb"] for p in pairs),
            "load1_median": round(med(loads), 2), "load1_min": min(loads), "load1_max": max(loads),
            "identical": sum(p["identical"] for p in pairs), "n": len(pairs)}


def table(results: list[dict], fast: bool) -> str:
    head = ("| stage | pairs | ours/raw wall, median [min-max] | ours s (median) | raw s (median) | ours/raw CPU time "
            "| peak RSS ours / raw MB | load1 median [min-max] | weights identical |")
    lines = [head, "|" + "---|" * 9]
    for r in results:
        lines.append(f"| {r['stage']} | {r['n']} | {r['ratio_median']:.3f} [{r['ratio_min']:.3f}-{r['ratio_max']:.3f}] | "
                     f"{r['ours_wall_median']:.1f} | {r['raw_wall_median']:.1f} | "
                     f"{'-' if r.get('cpu_ratio_median') is None else format(r['cpu_ratio_median'], '.3f')} | "
                     f"{r['ours_rss_mb']:.0f} / {r['raw_rss_mb']:.0f} | "
                     f"{r['load1_median']:.2f} [{r['load1_min']:.2f}-{r['load1_max']:.2f}] | {r['identical']}/{r['n']} |")
    if fast:
        lines.append("\n(--fast: tiny sizes, one pair; the weights are checked, the times are no claim)")
    return "\n".join(lines)


def git_state(repo: Path) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception:  # noqa: BLE001 - not a git checkout
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"), "diff_stat_rlhf_ops": git("diff", "--stat", "HEAD", "--", "rlhf_ops"),
            "diff_stat_conf": git("diff", "--stat", "HEAD", "--", "conf")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default="sft,reward,ppo,dpo,iteration", help=f"comma-separated, of {', '.join(STAGES)}")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--work", default="/tmp/bench_vs_trl", help="inputs, outputs and logs (inputs are reused)")
    p.add_argument("--fast", action="store_true", help="1 pair, tiny sizes: checks the weights, no timing claim")
    p.add_argument("--out", default="", help="write every run's figures as JSON here")
    p.add_argument("--md", default="", help="write the table (markdown) here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repo", default=str(HERE.parent), help="the rlhf_ops checkout 'ours' runs from (its cwd)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--no-tracking", action="store_true",
                   help="the iteration: ours with tracking=disabled (the raw script has no wandb run; the quickstart "
                        "default is tracking=offline)")
    p.add_argument("--raw-gradient-checkpointing", choices=("auto", "off", "on", "trl-default"), default="auto",
                   help="auto: what ours passed to TRL (read from its stage_meta.json); TRL 1.12's own default is on")
    p.add_argument("--summarize", default="", metavar="JSON", help="print the table of an earlier --out file and exit")
    a = p.parse_args(argv)
    if a.summarize:
        d = json.loads(Path(a.summarize).read_text())
        results = [{"stage": r["stage"], "pairs": r["pairs"], **summarize(r["pairs"])} for r in d["results"]]
        print(f"`{d['info']['command']}` (rlhf_ops {d['info']['commit']}, {d['info']['started_at']})\n")
        print(table(results, d["info"].get("fast", False)))
        return 0
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        p.error(f"unknown stage(s) {bad}; use {', '.join(STAGES)}")
    if a.fast:
        a.pairs = 1
    bench = Bench(a)
    info = {"command": " ".join([Path(sys.argv[0]).name if argv is None else "bench_vs_trl.py", *(sys.argv[1:] if argv is None else argv)]),
            "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "fast": a.fast, "pairs": a.pairs,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **git_state(bench.repo)}
    try:
        import torch
        import transformers
        import trl

        info.update(torch=torch.__version__, transformers=transformers.__version__, trl=trl.__version__)
    except ImportError:
        pass
    print(f"rlhf_ops @ {info['commit']} (working tree: {info['diff_stat_rlhf_ops'].splitlines()[-1] if info['diff_stat_rlhf_ops'] else 'clean'}); "
          f"{info['cpus']} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
    inp = bench.prepare()
    results = []
    for stage in stages:
        print(f"{stage}: {a.pairs} pair(s)", flush=True)
        results.append(bench.bench(stage, inp))
        if a.out:  # after every stage: a long run that dies keeps what it measured
            Path(a.out).write_text(json.dumps({"info": info, "results": results}, indent=1, default=str))
    info["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    md = table(results, a.fast)
    print(md)
    if a.out:
        Path(a.out).write_text(json.dumps({"info": info, "results": results}, indent=1, default=str))
    if a.md:
        Path(a.md).write_text(f"`{info['command']}` (rlhf_ops {info['commit']}, {info['started_at']})\n\n{md}\n")
    differ = [r["stage"] for r in results if r["identical"] < r["n"]]
    if differ:
        print(f"weights differ between rlhf_ops and plain TRL: {', '.join(differ)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
