"""scripts/bad_inputs.py (the table in docs/reliability.md) runs, and every bad input in it raises,
early, without touching what it was given."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import bad_inputs  # noqa: E402


def test_every_bad_input_in_the_table_raises_early_and_touches_nothing(tmp_path, capsys):
    assert bad_inputs.main(["--out", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 23
    for row in rows:
        what, err, seconds, untouched = [c.strip() for c in row.strip("|").split(" | ")]
        assert "no error" not in err, what
        assert float(seconds) < 10, f"{what}: raised only after {seconds}s"
        assert untouched == "yes", what
