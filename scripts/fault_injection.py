"""Fault-injection campaign: kill the tiny online loop at many points, resume it with the same
command, and check that it ends exactly where an uninterrupted run with the same seed ends.

    cd /work/main && OMP_NUM_THREADS=1 .venv/bin/python scripts/fault_injection.py --kills 20 --seed 0 --out /tmp/fi

The loop is `+experiment=quickstart` with the test suite's TINY overrides (tests/conftest.py) and
`loop.iterations=2`. One uninterrupted reference run comes first (it also lists every atomic
write, via RLHF_OPS_FAULT_LOG); then, one at a time (never two training processes at once):

- boundary: RLHF_OPS_FAULT="<iteration>:<node>:before|after" for every node that ran in the
  reference (setup nodes have iteration -1); "after" is after the node's work, before its commit;
- write: RLHF_OPS_FAULT="write:<n>" (temporary complete, before the rename) and "write:<n>:mid"
  (temporary cut short) for every atomic write of the reference (tables, JSON, checkpoints);
- random: SIGKILL to the CLI's process group after a delay drawn uniformly (seeded) from [0, T],
  T the wall time of an uninterrupted run timed just before (the reference, or a probe run when
  other kinds ran first), so kills land in start-up, trainers, generation, writes and commits; a
  run that finishes before its kill (the machine got faster) is not counted, T becomes its time and
  the delay is drawn again, until --kills kills have landed;
- sigterm / sigint (only with --kinds ...,sigterm,sigint): the same random timing, but SIGTERM (a
  scheduler's preemption) or SIGINT (Ctrl-C) to the process group; the run must stop cleanly: exit
  143 / 130, no 'running' row, no `*.tmp`, the lock released; then the same checks after the resume;
- preempt (only with --kinds ...,preempt): a preempted cluster job: SIGTERM at a random time, then
  SIGKILL after a grace period drawn from [0, 3 s] if the run has not stopped by then; it may die
  mid clean-up, and the resume must still lose at most the step in flight (the same checks);
- enospc (only with --kinds ...,enospc): RLHF_OPS_FAULT="write:<n>:enospc" makes each atomic write
  fail with OSError(ENOSPC) at its rename; the run must exit 1 naming the error, and the resume
  (disk freed) must finish like the reference.

After each kill the same command is run again. A kill point "resumed correctly" when the first
process died as planned (enospc: exited 1 with "No space left on device"), the resume exited 0, and the run dir passes `check_run_dir`: each
(iteration, node) has exactly one 'done'/'skipped' row and the same ones as the reference, no
'running' row is left, every recorded artifact whose files exist verifies against its hash
(Ledger.verify_artifact; a missing one must carry a `.PRUNED` marker), no `*.tmp` is left, nothing
committed (ledger states, summary.json, LATEST_GOOD) points into a `.tmp` or `.interrupted-k`,
and every path that is not in the reference lies under a `<node>.interrupted-k` leftover.
"Final summary equal" compares summary.json with the reference's: exact on statuses, reasons,
gold, length, beta, paths (relative to the run dir) and everything else, except floats derived
from trained weights (KL, proxy, losses...), compared at rel 1e-4: CPU float sums are not bitwise
reproducible across processes (see tests/test_loop.py).

Prints a markdown table (kind, tried, resumed correctly, final summary equal), a table of where
the random kills landed, and writes every outcome to <out>/campaign.json. Exit status 1 if any
kill point failed. `--kinds` picks a subset; `--write-stride K` tries every K-th write only, starting
from the first (or the `--write-offset`-th, counted from 0: two runs with stride 2 and offsets 0 and 1
cover every write between them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import TINY  # noqa: E402  (the test suite's overrides: one definition of "tiny")

LOOP = ["+experiment=quickstart", *TINY, "loop.iterations=2"]
KILLED_RC = (137, -signal.SIGKILL)  # os._exit(137) from a fault hook, or a real SIGKILL
INTERRUPTED = re.compile(r"\.interrupted-\d+$")
SQLITE_SIDE = re.compile(r"ledger\.sqlite-(wal|shm|journal)$")  # SQLite's own, while a connection is open
# Floats that come out of trained weights; everything else in the summary must match exactly.
EXACT_FLOATS = {"gold", "length", "beta", "lr_scale", "gold_chosen", "gold_rejected", "iteration", "restored_iteration"}
REL_TOL, ABS_TOL = 1e-4, 1e-6
# Clock readings, not results: wall times, timestamps, trainer throughput.
IGNORED_KEYS = {"wall_s", "created_at", "finished_at", "id", "run_dir", "train_runtime", "train_samples_per_second",
                "train_steps_per_second", "eps"}


# -- running the CLI ---------------------------------------------------------------------------------

def cli_env(extra: dict | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRL_EXPERIMENTAL_SILENCE": "1", "WANDB_MODE": "disabled"}
    for k in ("RLHF_OPS_FAULT", "RLHF_OPS_FAULT_LOG"):
        env.pop(k, None)
    return {**env, **(extra or {})}


def cli_args(run_dir: Path, *extra: str) -> list[str]:
    # Hydra's own output dir (.hydra, cli.log) beside the run dir, not under the repo's runs/.
    return [sys.executable, "-m", "rlhf_ops", *LOOP, f"run_dir={run_dir}",
            f"hydra.run.dir={run_dir.with_name(run_dir.name + '.hydra')}", *extra]


def run_cli(run_dir: Path, *extra: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cli_args(run_dir, *extra), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=cli_env(env))


def popen_cli(run_dir: Path, log_path: Path, *extra: str) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen(cli_args(run_dir, *extra), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env=cli_env(), start_new_session=True)


# -- the reference run ---------------------------------------------------------------------------------

@dataclass
class Reference:
    run_dir: Path
    wall_s: float
    writes: list[tuple[int, str]]  # (n, temporary path relative to the run dir)
    nodes: list[tuple[int, str]]  # (iteration, node) that ran ('done') in plan order
    summary: dict = field(repr=False)
    files: set[str] = field(repr=False)


def reference_run(run_dir: Path) -> Reference:
    run_dir = Path(run_dir)
    log = run_dir.with_name(run_dir.name + ".writes")
    log.unlink(missing_ok=True)
    t0 = time.monotonic()
    p = run_cli(run_dir, env={"RLHF_OPS_FAULT_LOG": str(log)})
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(f"reference run failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    writes = []
    for line in log.read_text().splitlines():
        n, path = line.split("\t", 1)
        writes.append((int(n), Path(path).relative_to(run_dir).as_posix()))
    nodes = [(i, n) for i, n, s in ledger_rows(run_dir, "select iteration, node, status from stage_runs order by id")
             if s == "done"]
    return Reference(run_dir, wall, writes, nodes, read_summary(run_dir), relative_files(run_dir))


def boundary_points(ref: Reference) -> list[str]:
    return [f"{i}:{n}:{where}" for i, n in ref.nodes for where in ("before", "after")]


def write_points(ref: Reference, stride: int = 1, modes: tuple[str, ...] = ("", ":mid"), offset: int = 0) -> list[str]:
    return [f"write:{n}{mode}" for n, _ in ref.writes[offset::stride] for mode in modes]


# -- checks ----------------------------------------------------------------------------------------------

def ledger_rows(run_dir: Path, sql: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(Path(run_dir) / "ledger.sqlite")) as c:
        return c.execute(sql).fetchall()


def leftover_or_tmp(path: str) -> bool:
    """Whether a path points into a temporary (`*.tmp`) or a moved-aside leftover (`*.interrupted-k`)."""
    return any(part.endswith(".tmp") or INTERRUPTED.search(part) for part in Path(path).parts)


def strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def relative_files(run_dir: Path) -> set[str]:
    return {p.relative_to(run_dir).as_posix() for p in Path(run_dir).rglob("*")}


def check_run_dir(run_dir: Path, ref: Reference | None = None) -> list[str]:
    """Problems with a finished (resumed) run dir; empty when it is consistent."""
    from rlhf_ops.ledger import Ledger

    run_dir, problems = Path(run_dir), []
    rows = ledger_rows(run_dir, "select iteration, node, status from stage_runs order by id")
    finished: dict[tuple[int, str], int] = {}
    for i, n, s in rows:
        if s == "running":
            problems.append(f"ledger: ({i}, {n}) is still 'running'")
        if s in ("done", "skipped"):
            finished[(i, n)] = finished.get((i, n), 0) + 1
    problems += [f"ledger: ({i}, {n}) has {k} done/skipped rows" for (i, n), k in finished.items() if k != 1]
    if ref is not None:
        ref_finished = {(i, n) for i, n, s in ledger_rows(ref.run_dir, "select iteration, node, status from stage_runs")
                        if s in ("done", "skipped")}
        if set(finished) != ref_finished:
            problems.append(f"ledger: finished nodes differ from the reference: missing "
                            f"{sorted(ref_finished - set(finished))}, extra {sorted(set(finished) - ref_finished)}")
    with Ledger(run_dir) as ledger:
        latest = {}
        for a in ledger.artifacts():
            latest[a["path"]] = a
        for path in latest:
            p = Path(path)
            if leftover_or_tmp(p.relative_to(run_dir).as_posix() if p.is_relative_to(run_dir) else path):
                problems.append(f"artifact recorded at a temporary/leftover path: {path}")
            if p.exists():
                if not ledger.verify_artifact(p):
                    problems.append(f"artifact does not verify against its recorded hash: {path}")
            elif not p.with_name(p.name + ".PRUNED").exists():
                problems.append(f"recorded artifact is missing (and was not pruned): {path}")
    for p in run_dir.rglob("*.tmp"):
        problems.append(f"temporary left behind: {p.relative_to(run_dir)}")
    with Ledger(run_dir) as ledger:  # the ledger stores deltas: replay them into every committed state
        committed = [r["state"] for r in ledger.stage_history(states=True) if r["status"] in ("done", "skipped")]
    for name in ("summary.json", "LATEST_GOOD"):
        if (run_dir / name).exists():
            committed.append(json.loads((run_dir / name).read_text()))
    bad = sorted({s for c in committed for s in strings(c)
                  if s.startswith(str(run_dir)) and leftover_or_tmp(s[len(str(run_dir)):])})
    if bad:
        problems.append(f"committed state points into a temporary/leftover path: {bad[:3]}")
    summary = read_summary(run_dir) if (run_dir / "summary.json").exists() else None
    if summary is None:
        problems.append("no summary.json")
    else:
        final = summary["final"]
        for key in ("policy", "reward_model"):
            if final.get(key) and not Path(final[key]).is_dir():
                problems.append(f"final {key} does not exist: {final[key]}")
    if ref is not None:
        extra = sorted(f for f in relative_files(run_dir) - ref.files
                       if not any(INTERRUPTED.search(part) for part in f.split("/")) and not SQLITE_SIDE.match(f))
        if extra:
            problems.append(f"{len(extra)} path(s) not in the reference and not under an .interrupted-k "
                            f"leftover, e.g. {extra[:3]}")
    return problems


def normalize(value, run_dir: str, key: str = ""):
    if isinstance(value, dict):
        return {k: normalize(v, run_dir, k) for k, v in value.items() if k not in IGNORED_KEYS}
    if isinstance(value, list):
        return [normalize(v, run_dir, key) for v in value]
    if isinstance(value, str):
        return value.replace(run_dir, "<run_dir>")
    return value


def compare_summaries(ref: dict, got: dict) -> list[str]:
    """Differences between two summary.json (run dirs masked); floats of trained weights at rel 1e-4."""
    a, b = normalize(ref, ref["run_dir"]), normalize(got, got["run_dir"])
    problems: list[str] = []

    def walk(x, y, where: str, key: str) -> None:
        if len(problems) >= 10:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            if set(x) != set(y):
                problems.append(f"{where}: keys differ: {sorted(set(x) ^ set(y))}")
            for k in sorted(set(x) & set(y)):
                walk(x[k], y[k], f"{where}.{k}", k)
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                problems.append(f"{where}: {len(x)} items vs {len(y)}")
            for k, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{where}[{k}]", key)
        elif isinstance(x, float) and isinstance(y, float) and key not in EXACT_FLOATS:
            both_nan = math.isnan(x) and math.isnan(y)
            if not both_nan and not math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL):
                problems.append(f"{where}: {x!r} vs {y!r}")
        elif x != y and not (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)):
            problems.append(f"{where}: {x!r} vs {y!r}")

    walk(a, b, "summary", "")
    return problems


# -- one kill point -----------------------------------------------------------------------------------------

@dataclass
class Outcome:
    kind: str  # boundary | write | random
    point: str  # the RLHF_OPS_FAULT spec, or "sigkill@<delay>s"
    killed: bool = False  # the first process died as planned
    landed: str = ""  # what was in flight when it died
    resumed: bool = False  # the resume exited 0
    consistent: bool = False  # check_run_dir found nothing
    equal: bool = False  # summary.json equals the reference's
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def resumed_correctly(self) -> bool:
        return self.killed and self.resumed and self.consistent


def in_flight(run_dir: Path, n_nodes: int) -> str:
    """Where a killed run stopped, from what it left behind."""
    if not (run_dir / "ledger.sqlite").exists():
        return "start-up (no ledger yet)"
    rows = ledger_rows(run_dir, "select iteration, node, status from stage_runs order by id")
    running = [(i, n) for i, n, s in rows if s == "running"]
    tmp = any(p.name.endswith(".tmp") for p in run_dir.rglob("*"))
    if running:
        i, n = running[-1]
        phase = "setup" if i < 0 else "iteration"
        return f"in {phase} node {n}" + (" (a .tmp present)" if tmp else "")
    if not rows:
        return "start-up (ledger open, no node yet)"
    i, n, s = rows[-1]
    if s == "failed":
        return f"failed in {'setup' if i < 0 else 'iteration'} node {n}"
    # summary.json is rewritten after every step; only its final version says the run ended.
    summary = run_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text() or "{}").get("status") in ("completed", "stopped"):
        return "after the summary (finishing)"
    done = sum(s in ("done", "skipped") for _, _, s in rows)
    return ("between nodes (after a commit: the derived files)" if done < n_nodes
            else "after the last node, before the final summary")


def resume_and_check(ref: Reference, run_dir: Path, outcome: Outcome) -> Outcome:
    p = run_cli(run_dir)
    outcome.resumed = p.returncode == 0
    if not outcome.resumed:
        outcome.problems.append(f"resume exited {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
        (run_dir.with_name(run_dir.name + ".resume.log")).write_text(p.stdout + p.stderr)
        return outcome
    outcome.problems += check_run_dir(run_dir, ref)
    outcome.consistent = not outcome.problems
    diffs = compare_summaries(ref.summary, read_summary(run_dir))
    outcome.equal = not diffs
    outcome.problems += diffs
    return outcome


def fault_kill(ref: Reference, run_dir: Path, kind: str, spec: str) -> Outcome:
    t0 = time.monotonic()
    outcome = Outcome(kind, spec)
    p = run_cli(run_dir, env={"RLHF_OPS_FAULT": spec})
    if spec.endswith(":enospc"):  # not a kill: the write fails, the run must stop with the error
        outcome.killed = p.returncode == 1 and "No space left on device" in p.stderr
    else:
        outcome.killed = p.returncode in KILLED_RC
    if not outcome.killed:
        outcome.problems.append(f"the fault did not fire (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
    outcome.landed = in_flight(run_dir, len(ref.nodes))
    resume_and_check(ref, run_dir, outcome)
    outcome.wall_s = round(time.monotonic() - t0, 1)
    return outcome


SIGNAL_KINDS = {"random": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "preempt": signal.SIGTERM}
PREEMPT_GRACE_S = 3.0  # a preempted cluster job: SIGTERM, then SIGKILL after a grace drawn from [0, this]


def random_kill(ref: Reference, run_dir: Path, delay: float, kind: str = "random",
                grace: float | None = None) -> Outcome | float:
    """SIGKILL (or SIGTERM / SIGINT, for kind sigterm / sigint) to the CLI's process group after `delay`
    seconds, then resume and check; or, if the run finished before the delay (the machine got faster
    than when the duration was measured), its wall time: draw again. A SIGTERM / SIGINT must stop the
    run cleanly: exit 128 + the signal, no 'running' row and no temporary output left behind. A preempt
    (a cluster job's SIGTERM, then SIGKILL after `grace` seconds if it is still running) must lose at
    most the step in flight: the resume's checks are the same as after a SIGKILL."""
    sig = SIGNAL_KINDS[kind]
    t0 = time.monotonic()
    outcome = Outcome(kind, f"{sig.name.lower()}@{delay:.2f}s" + (f"+kill@{grace:.2f}s" if kind == "preempt" else ""))
    proc = popen_cli(run_dir, run_dir.with_name(run_dir.name + ".killed.log"))
    try:
        proc.wait(timeout=delay)
        finished_after = time.monotonic() - t0
        shutil.rmtree(run_dir, ignore_errors=True)
        return finished_after
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, sig)  # the CLI and anything it started, like kill -9 (or a scheduler's SIGTERM)
        if kind == "preempt":
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:  # the grace period is over: the scheduler's SIGKILL
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:  # a clean stop that never came: a failure, then kill it
            outcome.problems.append(f"still running 300 s after {sig.name}")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.returncode == 0:  # it had finished on its own in the instant before the signal: draw again
            shutil.rmtree(run_dir, ignore_errors=True)
            return time.monotonic() - t0
        stopped = (128 + sig, -sig) if sig != signal.SIGKILL else ()
        expected = (KILLED_RC if kind in ("random", "preempt") else ()) + stopped
        outcome.killed = proc.returncode in expected
        if not outcome.killed:
            outcome.problems.append(f"exited {proc.returncode} after {sig.name}, expected one of {expected}")
        if kind in ("sigterm", "sigint") and not outcome.problems:
            if (run_dir / "ledger.sqlite").exists() and ledger_rows(
                    run_dir, "select 1 from stage_runs where status = 'running'"):
                outcome.problems.append(f"a 'running' row left after {sig.name}")
            tmp = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*.tmp")]
            if tmp:
                outcome.problems.append(f"temporary output left after {sig.name}: {tmp[:3]}")
            if (run_dir / ".lock").exists():
                outcome.problems.append(f"the run lock was not released after {sig.name}")
    outcome.landed = in_flight(run_dir, len(ref.nodes))
    resume_and_check(ref, run_dir, outcome)
    outcome.wall_s = round(time.monotonic() - t0, 1)
    return outcome


# -- the campaign -----------------------------------------------------------------------------------------------

KIND_ROWS = [
    ("boundary: before a node", lambda o: o.kind == "boundary" and o.point.endswith(":before")),
    ("boundary: after a node's work, before its commit", lambda o: o.kind == "boundary" and o.point.endswith(":after")),
    ("write: temporary complete, before the rename", lambda o: o.kind == "write" and not o.point.endswith(":mid")),
    ("write: temporary cut short (mid-write)", lambda o: o.kind == "write" and o.point.endswith(":mid")),
    ("disk full: ENOSPC at a write's rename (exit 1), then resume", lambda o: o.kind == "enospc"),
    ("random-time SIGKILL", lambda o: o.kind == "random"),
    ("random-time SIGTERM (stops cleanly, then resume)", lambda o: o.kind == "sigterm"),
    ("random-time SIGINT (Ctrl-C; stops cleanly, then resume)", lambda o: o.kind == "sigint"),
    (f"preemption: random-time SIGTERM, SIGKILL within {PREEMPT_GRACE_S:g} s", lambda o: o.kind == "preempt"),
]


def table(outcomes: list[Outcome]) -> str:
    lines = ["| kind of kill point | tried | resumed correctly | final summary equal |", "|---|---|---|---|"]
    for label, match in KIND_ROWS:
        rows = [o for o in outcomes if match(o)]
        if rows:
            lines.append(f"| {label} | {len(rows)} | {sum(o.resumed_correctly for o in rows)} | "
                         f"{sum(o.resumed_correctly and o.equal for o in rows)} |")
    lines.append(f"| **all** | {len(outcomes)} | {sum(o.resumed_correctly for o in outcomes)} | "
                 f"{sum(o.resumed_correctly and o.equal for o in outcomes)} |")
    return "\n".join(lines)


def landing_table(outcomes: list[Outcome]) -> str:
    timed = [o for o in outcomes if o.kind in SIGNAL_KINDS]
    if not timed:
        return ""
    counts: dict[tuple[str, str], list[Outcome]] = {}
    for o in timed:
        counts.setdefault((o.kind, o.landed), []).append(o)
    lines = ["| kill | landed | kills | resumed correctly | final summary equal |", "|---|---|---|---|---|"]
    for (kind, where), rows in sorted(counts.items(), key=lambda kv: (list(SIGNAL_KINDS).index(kv[0][0]), -len(kv[1]))):
        lines.append(f"| {kind} | {where} | {len(rows)} | {sum(o.resumed_correctly for o in rows)} | "
                     f"{sum(o.resumed_correctly and o.equal for o in rows)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="random-time SIGKILLs (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random kill delays (default 0)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/rlhf_ops_fault_injection"),
                    help="directory for the run dirs, logs and campaign.json")
    ap.add_argument("--kinds", default="boundary,write,random",
                    help="comma-separated subset of boundary,write,random,enospc,sigterm,sigint,preempt (enospc: a "
                         "full disk at each atomic write; the run must exit 1 naming the error and the resume must "
                         "finish; sigterm / sigint: --kills of each at random times, each must stop the run cleanly; "
                         "preempt: SIGTERM then SIGKILL within a few seconds, as a cluster scheduler does)")
    ap.add_argument("--write-stride", type=int, default=1, help="try every K-th atomic write only (default: all)")
    ap.add_argument("--write-offset", type=int, default=0,
                    help="with --write-stride: start from this write (0-based), e.g. 1 for the ones stride 2 skipped")
    args = ap.parse_args(argv)
    kinds = set(args.kinds.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    ref = reference_run(args.out / "reference")
    print(f"reference: {ref.wall_s:.1f}s, {len(ref.nodes)} nodes, {len(ref.writes)} atomic writes", flush=True)
    plan: list[tuple[str, str | float]] = []
    if "boundary" in kinds:
        plan += [("boundary", p) for p in boundary_points(ref)]
    if "write" in kinds:
        plan += [("write", p) for p in write_points(ref, args.write_stride, offset=args.write_offset)]
    if "enospc" in kinds:
        plan += [("enospc", p) for p in write_points(ref, args.write_stride, (":enospc",), args.write_offset)]
    outcomes: list[Outcome] = []

    def record(o: Outcome, k: int, total: int | str) -> None:
        outcomes.append(o)
        verdict = "ok" if o.resumed_correctly and o.equal else "FAIL: " + "; ".join(o.problems[:3])
        print(f"[{k}/{total}] {o.kind} {o.point} -> {o.landed}: {verdict} ({o.wall_s}s)", flush=True)
        (args.out / "campaign.json").write_text(json.dumps(
            {"reference": {"wall_s": ref.wall_s, "nodes": ref.nodes, "writes": ref.writes}, "seed": args.seed,
             "random_duration_s": duration, "random_redrawn": redrawn, "outcomes": [asdict(x) for x in outcomes]},
            indent=1))

    duration, redrawn = ref.wall_s, []
    for k, (kind, point) in enumerate(plan):
        record(fault_kill(ref, args.out / f"{k:03d}_{kind}", kind, str(point)), k + 1, len(plan))
    timed = [k for k in SIGNAL_KINDS if k in kinds]
    if timed and plan:  # the machine's speed may have changed since the reference: time an uninterrupted run now
        duration = reference_run(args.out / "probe").wall_s
        print(f"probe: an uninterrupted run now takes {duration:.1f}s", flush=True)
    done = len(plan)
    for kind in timed:
        rng, kills = random.Random(args.seed), 0
        while kills < args.kills and len(redrawn) < 2 * args.kills * len(timed):
            delay = rng.uniform(0.0, duration)
            grace = rng.uniform(0.0, PREEMPT_GRACE_S) if kind == "preempt" else None
            o = random_kill(ref, args.out / f"{done:03d}_{kind}", delay, kind, grace)
            if isinstance(o, float):  # finished before the kill: the run is faster now; draw again
                redrawn.append(round(delay, 2))
                duration = o
                print(f"finished in {o:.1f}s, before the {kind} at {delay:.2f}s: drawn again", flush=True)
                continue
            kills, done = kills + 1, done + 1
            record(o, kills, args.kills)
    print()
    print(table(outcomes))
    print()
    print(landing_table(outcomes))
    print(f"\ncampaign wall time: {(time.monotonic() - t0) / 60:.1f} min; details: {args.out / 'campaign.json'}")
    return 0 if all(o.resumed_correctly and o.equal for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
