"""A real 2x2 sweep (Hydra multirun) over the KL coefficient and the RM refresh interval, on tiny
settings, then the report over it: one table row per job, decodable PNGs of the expected size, and
an HTML page that references every plot."""

from __future__ import annotations

import csv
import re
import subprocess
import sys

from PIL import Image

from conftest import REPO, TINY, run_cli


def test_two_by_two_sweep_and_its_report(tmp_path):
    sweep_dir = tmp_path / "sweep"
    p = run_cli("-m", "+experiment=quickstart", *TINY, "loop.iterations=1", "loop.kl.beta=0.01,0.2",
                "loop.rm_update_every=1,2", f"hydra.sweep.dir={sweep_dir}", timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = sorted(d for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit())
    assert len(jobs) == 4 and all((j / "summary.json").is_file() for j in jobs)

    r = subprocess.run([sys.executable, "-m", "rlhf_ops.report", str(sweep_dir)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(sweep_dir / "sweep_table.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {(float(row["beta"]), int(row["rm_update_every"])) for row in rows} == {(0.01, 1), (0.01, 2), (0.2, 1), (0.2, 2)}
    assert {row["status"] for row in rows} == {"completed"}
    for png in ("frontier.png", "gold_proxy.png"):
        with Image.open(sweep_dir / png) as im:
            im.load()
            assert im.size == (800, 500)
    html = (sweep_dir / "report.html").read_text()
    assert set(re.findall(r'src="([^"]+\.png)"', html)) >= {"frontier.png", "gold_proxy.png"}
