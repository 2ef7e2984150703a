"""Reports for one run or a whole sweep: tables, PNG plots and one static HTML page.

    python -m rlhf_ops.report RUN_DIR            # report.html + gold_proxy.png, kl_beta.png, length_entropy.png
    python -m rlhf_ops.report SWEEP_DIR          # sweep_table.csv/.md, frontier.png, gold_proxy.png, report.html
    python -m rlhf_ops.report PATH --out DIR     # write elsewhere (default: into PATH)

A run dir holds summary.json / config.yaml (rlhf_ops.loop.runner); a sweep dir holds one run dir
per Hydra multirun job. A job that failed (job_status.json, written by rlhf_ops.run) or never wrote
summary.json still gets a table row with status 'failed'; its curves come from metrics.jsonl.
Also `sweep_objective`: the float an Optuna sweep maximises (final gold under a KL budget).
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import os
import sys
from pathlib import Path

import yaml

from .artifacts import write_bytes_atomic

RUN_MARKERS = ("summary.json", "config.yaml", "job_status.json", "metrics.jsonl", ".hydra/overrides.yaml")
COLUMNS = ["job", "beta", "rm_update_every", "status", "final_iteration", "final_gold", "final_proxy", "final_kl",
           "baseline_gold", "accepted", "iterations", "rollbacks", "wall_s", "overrides", "error"]
TIMELINE = ["iteration", "status", "gold", "proxy", "kl", "beta", "win_rate", "length", "rm_update", "why", "remedies",
            "restored_iteration"]
GOLD, PROXY = ("gold", "gold reward"), ("proxy", "proxy reward (that iteration's RM)")
SIZE, DPI = (8, 5), 100  # 800 x 500 px: fixed, so a test can check the PNG size


class ReportError(ValueError):
    """PATH holds no run to report on."""


# ---------------------------------------------------------------- reading runs
def is_run_dir(d: Path) -> bool:
    return d.is_dir() and any((d / m).exists() for m in RUN_MARKERS)


def find_runs(path: str | Path) -> tuple[str, list[Path]]:
    """('run', [PATH]) or ('sweep', job dirs in job-number order)."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: not a directory")
    if (path / "summary.json").exists() or (path / "config.yaml").exists():
        return "run", [path]
    jobs = sorted((d for d in path.iterdir() if is_run_dir(d)),
                  key=lambda d: (0, int(d.name), "") if d.name.isdigit() else (1, 0, d.name))
    if jobs:
        return "sweep", jobs
    if is_run_dir(path):  # a lone job that died before writing config.yaml
        return "run", [path]
    raise ReportError(f"{path}: no runs found (expected summary.json or config.yaml in it, "
                      "or sweep job subdirectories holding them)")


def _read(path: Path, parse):
    try:
        return parse(path.read_text()) if path.is_file() else None
    except (OSError, ValueError, yaml.YAMLError):
        return None  # a half-written or corrupt file reads as missing: the row says so


def _metrics(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass  # a line cut by a crash
    return rows


def load_job(d: Path) -> dict:
    summary = _read(d / "summary.json", json.loads)
    status = _read(d / "job_status.json", json.loads)
    if status and summary and (d / "summary.json").stat().st_mtime > (d / "job_status.json").stat().st_mtime:
        status = None  # a failure from an earlier attempt, since resumed to completion
    return {"dir": d, "summary": summary, "job_status": status,
            "config": _read(d / "config.yaml", yaml.safe_load) or _read(d / ".hydra/config.yaml", yaml.safe_load) or {},
            "overrides": _read(d / ".hydra/overrides.yaml", yaml.safe_load) or [], "metrics": _metrics(d / "metrics.jsonl")}


def knob(job: dict, dotted: str):
    """A config value by dotted key: the run's resolved config, else its Hydra overrides."""
    node = job["config"]
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            node = None
            break
        node = node[part]
    if node is not None:
        return node
    for o in job["overrides"]:
        key, _, value = str(o).lstrip("+~").partition("=")
        if key == dotted:
            try:
                return yaml.safe_load(value)
            except yaml.YAMLError:
                return value
    return None


def iterations(job: dict) -> list[dict]:
    """The iteration log: summary.json's, else rebuilt from metrics.jsonl (evaluate + gate + policy_update)."""
    if job["summary"]:
        return list(job["summary"].get("iterations") or [])
    by_it: dict[int, dict] = {}
    for r in job["metrics"]:
        it = int(r.get("iteration", -1))
        if it < 0:
            continue
        e = by_it.setdefault(it, {"iteration": it})
        if r.get("node") == "evaluate":
            e.update({k: r.get(k) for k in ("gold", "proxy", "kl", "length", "entropy", "win_rate")})
        elif r.get("node") == "policy_update":
            e.update(beta=r.get("beta"), lr_scale=r.get("lr_scale"))
        elif r.get("node") == "gate":
            e["status"] = "accepted" if r.get("accepted") else "rolled_back"
    return [e for _, e in sorted(by_it.items()) if "status" in e]  # an ungated iteration is not a result


def baseline(job: dict) -> dict:
    if job["summary"] and job["summary"].get("baseline"):
        return job["summary"]["baseline"]
    return next((r for r in job["metrics"] if r.get("node") == "baseline"), {})


def job_row(job: dict, root: Path, varying: list[str] = ()) -> dict:
    s, st, its = job["summary"] or {}, job["job_status"], iterations(job)
    final = s.get("final") or {}
    ev = final.get("eval") or {}
    if st or not s:
        status = "failed"
        error = (st or {}).get("error") or "no summary.json (the job was killed, or is still running)"
    else:
        status, error = s.get("status", "completed"), ""
    return {"job": os.path.relpath(job["dir"], root) if job["dir"] != root else job["dir"].name,
            "beta": knob(job, "loop.kl.beta"), "rm_update_every": knob(job, "loop.rm_update_every"),
            "status": status, "final_iteration": final.get("iteration"), "final_gold": ev.get("gold"),
            "final_proxy": ev.get("proxy"), "final_kl": ev.get("kl"), "baseline_gold": baseline(job).get("gold"),
            "accepted": sum(e.get("status") == "accepted" for e in its), "iterations": len(its),
            "rollbacks": s.get("n_rollbacks", sum(e.get("status") == "rolled_back" for e in its)),
            "wall_s": s.get("wall_s") if s else (st or {}).get("wall_s"),
            "overrides": " ".join(o for o in job["overrides"] if o.split("=")[0] in varying), "error": error}


def varying_overrides(jobs: list[dict]) -> list[str]:
    """Override keys whose value differs between jobs, other than the two knobs with columns of their own."""
    seen: dict[str, set] = {}
    for j in jobs:
        for o in j["overrides"]:
            k, _, v = str(o).partition("=")
            seen.setdefault(k, set()).add(v)
    return [k for k, vs in seen.items() if len(vs) > 1 and k not in ("loop.kl.beta", "loop.rm_update_every")]


def sweep_objective(summary: dict | None, kl_budget: float | None = None, penalty: float = 1.0) -> float | None:
    """Final gold reward, minus `penalty` per nat of final KL over `kl_budget`; None when there is none.

    A penalty rather than -inf keeps the value informative for TPE (how far over budget).
    """
    ev = ((summary or {}).get("final") or {}).get("eval") or {}
    gold, kl = ev.get("gold"), ev.get("kl")
    if not isinstance(gold, (int, float)) or not math.isfinite(gold):
        return None
    if kl_budget is not None and isinstance(kl, (int, float)) and kl > kl_budget:
        return float(gold - penalty * (kl - kl_budget))
    return float(gold)


def sweep_objective_from_env(summary: dict | None) -> float | None:
    """The Optuna objective when the sweep config asks for one (RLHF_OPS_OBJECTIVE=gold), else None."""
    if os.environ.get("RLHF_OPS_OBJECTIVE", "") != "gold":
        return None
    budget = os.environ.get("RLHF_OPS_KL_BUDGET")
    return sweep_objective(summary, float(budget) if budget else None,
                           float(os.environ.get("RLHF_OPS_KL_PENALTY", "1.0")))


# ---------------------------------------------------------------- writing files
def _atomic_write(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data)


NO_GOLD = ("<p><b>no gold</b>: this task has no gold reward (a user's own data), so the gold columns and the "
           "gold curves are empty; judge by the proxy, KL, length and the gate's reasons.</p>")


def has_gold(job: dict) -> bool:
    return isinstance(baseline(job).get("gold"), (int, float))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return "" if v is None else str(v)


def write_table(rows: list[dict], out: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _atomic_write(out / "sweep_table.csv", buf.getvalue().encode())
    cell = lambda v: _fmt(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    _atomic_write(out / "sweep_table.md", ("\n".join(md) + "\n").encode())


# ---------------------------------------------------------------- plots
def _figure(ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")  # no pyplot: no global backend state
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # never bbox_inches="tight": it changes the size
    _atomic_write(path, buf.getvalue())


def _label(job: dict) -> str:
    beta, every = knob(job, "loop.kl.beta"), knob(job, "loop.rm_update_every")
    if beta is None and every is None:
        return job["dir"].name
    rm = "no scheduled RM refresh" if every is None else f"RM every {every}"  # null: only on a detector's demand
    return f"{job['dir'].name}: β={_fmt(beta)}, {rm}"


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")  # None / missing -> a gap in the line


def _legend(fig, axes, many: bool) -> None:
    pairs = list(zip(*axes[0].get_legend_handles_labels()))
    pairs.sort(key=lambda hl: hl[1] == "rolled back")  # job lines first, the marker key last
    handles, labels = [h for h, _ in pairs], [lb for _, lb in pairs]
    if handles:
        fig.legend(handles, labels, loc="outside right upper" if many else "outside lower center",
                   fontsize=7, ncols=1 if many else min(len(labels), 4))


def plot_frontier(jobs: list[dict], path: Path) -> None:
    """Gold vs sqrt(KL) (Gao et al. 2022): the SFT baseline at KL 0, then each accepted iteration."""
    fig, (ax,) = _figure()
    for i, job in enumerate(jobs):
        pts = [(0.0, _num(baseline(job).get("gold")))]
        pts += [(math.sqrt(max(_num(e.get("kl")), 0.0)), _num(e.get("gold")))
                for e in iterations(job) if e.get("status") == "accepted"]
        ax.plot(*zip(*pts), marker="o", ms=4, color=f"C{i % 10}", label=_label(job))
    golds = [_num(baseline(j).get("gold")) for j in jobs if baseline(j)]
    if golds:
        ax.plot([0.0], [sum(golds) / len(golds)], marker="*", ms=14, color="black", ls="none", label="SFT baseline")
    ax.set(xlabel="sqrt(KL to reference policy)  [sqrt nats]", ylabel="gold reward",
           title="Gold reward vs KL (accepted iterations)")
    ax.grid(alpha=0.3)
    _legend(fig, [ax], many=True)
    _save(fig, path)


def _per_iteration(ax, jobs, key: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    for i, job in enumerate(jobs):
        its = iterations(job)
        xs, ys = [e["iteration"] for e in its], [_num(e.get(key)) for e in its]
        if key in baseline(job):  # the SFT policy's eval record, drawn at iteration -1
            xs, ys = [-1] + xs, [_num(baseline(job)[key])] + ys
        ax.plot(xs, ys, marker="o", ms=3, color=f"C{i % 10}", label=_label(job))
        rb = [(e["iteration"], _num(e.get(key))) for e in its if e.get("status") == "rolled_back"]
        if rb:
            first = "rolled back" not in ax.get_legend_handles_labels()[1]  # one legend entry for all jobs
            ax.plot(*zip(*rb), marker="x", ms=9, mew=2, color="red", ls="none", label="rolled back" if first else None)
    ax.set(xlabel="iteration (-1 = SFT baseline)", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def plot_pair(jobs: list[dict], path: Path, left: tuple[str, str], right: tuple[str, str], title: str) -> None:
    """Two per-iteration panels, (key, axis label) each; on a KL panel, the gate's KL budget when in scale."""
    fig, axes = _figure(2)
    for ax, (key, ylabel) in zip(axes, (left, right)):
        _per_iteration(ax, jobs, key, ylabel)
        budget = next((d.get("max_kl") for d in knob(jobs[0], "loop.detectors") or []
                       if isinstance(d, dict) and d.get("name") == "kl_budget"), None) if key == "kl" and jobs else None
        top = max([_num(e.get("kl")) for e in iterations(jobs[0])] if jobs else [], default=0.0)
        if isinstance(budget, (int, float)) and top >= 0.2 * budget:  # a far-off line would flatten the curve
            ax.axhline(budget, color="gray", ls="--", label=f"gate KL budget {_fmt(budget)}")
    fig.suptitle(title)
    _legend(fig, axes, many=len(jobs) > 1)
    _save(fig, path)


# ---------------------------------------------------------------- HTML
def _html_table(rows: list[dict], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(f"<tr class='{html.escape(str(r.get('status', '')))}'>"  # the class shades rolled-back rows
                   + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, parts: list[str], images: list[str]) -> bytes:
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}tr.rolled_back,tr.failed{background:#fde}")
    imgs = "".join(f'<p><img src="{html.escape(i)}" width="800" height="500" alt="{html.escape(i)}"></p>' for i in images)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}{imgs}</body></html>").encode()


def report_run(job: dict, out: Path) -> list[Path]:
    row = job_row(job, job["dir"])
    images = ["gold_proxy.png", "kl_beta.png", "length_entropy.png"]
    plot_pair([job], out / images[0], GOLD, PROXY, "Gold and proxy reward per iteration (x = rolled back)")
    plot_pair([job], out / images[1], ("kl", "KL to reference (nats)"), ("beta", "KL coefficient beta used"),
              "KL and beta per iteration")
    plot_pair([job], out / images[2], ("length", "completion length (words)"),
              ("entropy", "policy entropy (nats/token)"), "Length and entropy per iteration (drift, collapse)")
    s, base = job["summary"] or {}, baseline(job)
    final = ((s.get("final") or {}).get("eval")) or {}
    timeline = [{**e, "why": "; ".join(e.get("reasons") or []), "remedies": ", ".join(e.get("remedies") or [])}
                for e in iterations(job)]
    keys = ["gold", "proxy", "kl", "length", "entropy", "repetition", "disagreement", "eos_rate"]
    compare = [{"": name, **{k: rec.get(k) for k in keys}} for name, rec in (("SFT baseline", base), ("final", final))]
    setup = [{"node": r.get("node"), **{k: r.get(k) for k in ("final_loss", "heldout_accuracy", "sft_demo_gold")}}
             for r in job["metrics"] if r.get("iteration", 0) < 0 and r.get("node") in ("prepare", "sft", "rm_warmup")]
    parts = [f"<p>{html.escape(str(job['dir']))}: status <b>{row['status']}</b> {html.escape(row['error'])} | loop "
             f"{html.escape(str(s.get('loop', knob(job, 'loop.name'))))} | seed {s.get('seed')} | final iteration "
             f"{row['final_iteration']} | {row['rollbacks']} rollback(s) | stage wall time {row['wall_s']} s</p>",
             *([] if has_gold(job) else [NO_GOLD]),
             "<h2>SFT baseline vs final accepted policy</h2>", _html_table(compare, [""] + keys),
             "<h2>Iteration timeline</h2>", _html_table(timeline, TIMELINE)]
    if setup:
        parts += ["<h2>Setup</h2>", _html_table(setup, ["node", "final_loss", "heldout_accuracy", "sft_demo_gold"])]
    parts.append("<h2>Plots</h2>")
    _atomic_write(out / "report.html", _page(f"rlhf_ops run: {s.get('name', job['dir'].name)}", parts, images))
    return [out / "report.html", *(out / i for i in images)]


def report_sweep(jobs: list[dict], root: Path, out: Path) -> list[Path]:
    varying = varying_overrides(jobs)
    rows = [job_row(j, root, varying) for j in jobs]
    write_table(rows, out)
    ok = [j for j, r in zip(jobs, rows) if r["status"] != "failed" or iterations(j)]
    plot_frontier(ok, out / "frontier.png")
    plot_pair(ok, out / "gold_proxy.png", GOLD, PROXY, "Gold and proxy reward per iteration (x = rolled back)")
    parts = [f"<p>{html.escape(str(root))}: {len(rows)} job(s), {sum(r['status'] == 'failed' for r in rows)} failed. "
             "Table: <a href='sweep_table.csv'>sweep_table.csv</a>, <a href='sweep_table.md'>sweep_table.md</a>.</p>",
             *([] if any(has_gold(j) for j in jobs) else [NO_GOLD]),
             _html_table(rows, COLUMNS), "<h2>Plots</h2>"]
    _atomic_write(out / "report.html", _page(f"rlhf_ops sweep: {root.name}", parts, ["frontier.png", "gold_proxy.png"]))
    return [out / n for n in ("sweep_table.csv", "sweep_table.md", "frontier.png", "gold_proxy.png", "report.html")]


def make_report(path: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write the report for PATH (a run or a sweep) into `out` (default PATH); returns the files written."""
    kind, dirs = find_runs(path)
    out = Path(out) if out else Path(path)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [load_job(d) for d in dirs]
    return report_run(jobs[0], out) if kind == "run" else report_sweep(jobs, Path(path), out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlhf_ops.report", description=__doc__.splitlines()[0])
    p.add_argument("path", help="a run dir or a sweep dir (Hydra multirun)")
    p.add_argument("--out", help="where to write the report (default: PATH)")
    a = p.parse_args(argv)
    try:
        files = make_report(a.path, a.out)
    except ReportError as e:
        print(f"rlhf_ops.report: error: {e}", file=sys.stderr)
        return 2
    print(f"rlhf_ops.report: wrote {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
