"""rlhf_ops.report on a hand-written sweep dir (2 x 2 jobs + 1 failed): no training, a few seconds.

    pytest tests/test_report.py
"""

from __future__ import annotations

import csv
import json
import re

import pytest
import yaml
from PIL import Image

from rlhf_ops.report import ReportError, find_runs, main, make_report, sweep_objective, sweep_objective_from_env

BASE = {"gold": -1.0, "proxy": 0.0, "kl": 0.0, "entropy": 6.0, "length": 5.0, "iteration": -1}


def _it(i: int, beta: float, status: str = "accepted") -> dict:
    e = {"iteration": i, "status": status, "gold": -1.0 + 0.1 * (i + 1) / beta ** 0.25, "proxy": 0.2 * (i + 1),
         "kl": 0.5 * (i + 1) / beta ** 0.5, "length": 5.0 + i, "entropy": 6.0 - 0.1 * i, "win_rate": 0.6,
         "beta": beta, "lr_scale": 1.0, "rm_update": "every 1 iterations", "reasons": ["all checks passed"]}
    if status == "rolled_back":
        e.update(reasons=["length_drift: length rose 40%"], remedies=["raise_beta"], restored_iteration=i - 1)
    return e


def _write_job(d, num: int, beta: float, every: int, *, rollback: bool = False) -> None:
    d.mkdir(parents=True)
    its = [_it(0, beta), _it(1, beta, "rolled_back" if rollback else "accepted"), _it(2, beta)]
    last = its[-1]
    summary = {"name": "quickstart", "loop": "online_ppo", "status": "completed", "seed": 0, "baseline": BASE,
               "iterations": its, "n_rollbacks": int(rollback), "rollbacks": [],
               "final": {"iteration": 2, "eval": {k: last[k] for k in ("gold", "proxy", "kl", "length", "entropy")}},
               "wall_s": 10.0 + num}
    (d / "summary.json").write_text(json.dumps(summary))
    cfg = {"name": "quickstart", "loop": {"name": "online_ppo", "rm_update_every": every, "kl": {"beta": beta},
                                          "detectors": [{"name": "kl_budget", "max_kl": 15.0}]}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"time": 1.0, "iteration": -1, "node": "sft", "final_loss": 5.9},
            {"time": 2.0, "iteration": -1, "node": "baseline", **BASE}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / ".hydra").mkdir()
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"loop.kl.beta={beta}",
                                                                 f"loop.rm_update_every={every}"]))


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun" / "quickstart" / "2026-01-01_00-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    grid = [(0.01, 1), (0.01, 2), (0.2, 1), (0.2, 2)]
    for num, (beta, every) in enumerate(grid):
        _write_job(root / str(num), num, beta, every, rollback=num == 1)
    failed = root / "4"  # failed during setup: job_status.json, overrides, a partial metrics.jsonl
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["loop.kl.beta=0.5", "loop.rm_update_every=4"]))
    (failed / "job_status.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: out of | memory",
                                                        "traceback": "...", "wall_s": 3.5}))
    (failed / "metrics.jsonl").write_text(json.dumps({"time": 1.0, "iteration": -1, "node": "sft"}) + "\n{trunc")
    return root


def _png_size(path):
    with Image.open(path) as im:
        im.load()  # decodes the whole image, not only the header
        return im.size


def test_sweep_report(sweep, tmp_path):
    out = tmp_path / "report"
    files = make_report(sweep, out)
    assert {f.name for f in files} == {"sweep_table.csv", "sweep_table.md", "frontier.png", "gold_proxy.png",
                                       "report.html"}
    rows = list(csv.DictReader((out / "sweep_table.csv").open()))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [(r["beta"], r["rm_update_every"]) for r in rows] == [("0.01", "1"), ("0.01", "2"), ("0.2", "1"),
                                                                  ("0.2", "2"), ("0.5", "4")]
    assert [r["status"] for r in rows] == ["completed"] * 4 + ["failed"]
    assert "out of | memory" in rows[4]["error"] and rows[4]["wall_s"] == "3.5"
    assert rows[1]["rollbacks"] == "1" and rows[1]["accepted"] == "2" and rows[0]["rollbacks"] == "0"
    assert float(rows[2]["final_gold"]) == pytest.approx(_it(2, 0.2)["gold"])
    md = (out / "sweep_table.md").read_text().splitlines()
    assert len(md) == 2 + 5 and "out of \\| memory" in md[-1]  # header, rule, one line per job
    for name in ("frontier.png", "gold_proxy.png"):
        assert _png_size(out / name) == (800, 500)
    page = (out / "report.html").read_text()
    assert set(re.findall(r'<img src="([^"]+)"', page)) == {"frontier.png", "gold_proxy.png"}
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_run_report(sweep):
    run = sweep / "1"
    assert find_runs(run) == ("run", [run])
    make_report(run)  # default: into the run dir
    images = ["gold_proxy.png", "kl_beta.png", "length_entropy.png"]
    for name in images:
        assert _png_size(run / name) == (800, 500)
    page = (run / "report.html").read_text()
    assert set(re.findall(r'<img src="([^"]+)"', page)) == set(images)
    assert "rolled_back" in page and "length_drift: length rose 40%" in page and "raise_beta" in page


def test_failed_job_alone_and_rebuilt_from_metrics(tmp_path):
    d = tmp_path / "job"
    d.mkdir()
    rows = [{"iteration": -1, "node": "baseline", **BASE},
            {"iteration": 0, "node": "policy_update", "beta": 0.05},
            {"iteration": 0, "node": "evaluate", "gold": -0.5, "proxy": 0.3, "kl": 2.0, "length": 6, "entropy": 5.5},
            {"iteration": 0, "node": "gate", "accepted": 0.0},
            {"iteration": 1, "node": "evaluate", "gold": -0.4}]  # no gate row: not a result yet
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert find_runs(d) == ("run", [d])
    make_report(d)
    page = (d / "report.html").read_text()
    assert "failed" in page and "no summary.json" in page and "rolled_back" in page
    assert _png_size(d / "kl_beta.png") == (800, 500)


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ReportError, match=re.escape(str(tmp_path / "empty")) + ".*no runs found"):
        make_report(tmp_path / "empty")
    assert main([str(tmp_path / "nowhere")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


def test_sweep_objective(monkeypatch):
    s = {"final": {"eval": {"gold": 0.5, "kl": 6.0}}}
    assert sweep_objective(s) == 0.5
    assert sweep_objective(s, kl_budget=8.0) == 0.5
    assert sweep_objective(s, kl_budget=4.0, penalty=0.5) == pytest.approx(-0.5)
    assert sweep_objective(None) is None
    assert sweep_objective({"final": {"eval": {"gold": float("nan")}}}) is None
    monkeypatch.delenv("RLHF_OPS_OBJECTIVE", raising=False)
    assert sweep_objective_from_env(s) is None  # not an Optuna sweep: run() returns the summary as before
    monkeypatch.setenv("RLHF_OPS_OBJECTIVE", "gold")  # what conf/sweep/optuna_kl_budget.yaml sets per job
    monkeypatch.setenv("RLHF_OPS_KL_BUDGET", "4.0")
    monkeypatch.setenv("RLHF_OPS_KL_PENALTY", "2.0")
    assert sweep_objective_from_env(s) == pytest.approx(0.5 - 2.0 * 2.0)
