"""The bad-input catalogue (scripts/bad_inputs.py) in CI: every case errors with a message before the
first model is built, or is handled as it should be (a warning once, a pause, an accepted file), and
leaves its files as they were. The default run takes the catalogue's --quick selection (about three
minutes on two cores): every in-process case (the CLI's pre-check, the task's read as `prepare` does
it, run_stage, the label readers) and the CLI subprocess cases marked quick (run dirs, and a model
directory only the CLI's `prepare` can judge); the full catalogue, every subprocess case, is the slow test."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO, TINY


def _catalogue():
    spec = importlib.util.spec_from_file_location("bad_inputs", REPO / "scripts" / "bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bad_inputs"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _check(bi, rows) -> None:
    assert len(rows) >= 80
    assert {r["family"] for r in rows} == set(bi.FAMILIES), "every family is exercised"
    for r in rows:
        where = f"{r['what']}: {r['outcome']} / {r['message']}"
        assert r["outcome"] in ("error", "handled", "GAP"), where
        assert r["kept"] == "yes", f"{where}: its files changed"
        assert r["before_model"].startswith("yes"), f"{where}: a model was built first ({r['before_model']})"
        assert r["message"].strip("` ") and r["message"] != "nothing", f"{where}: no message"
        if r["outcome"] == "error":
            assert "no error" not in r["message"], where
    gaps = [r["what"] for r in rows if r["outcome"] == "GAP"]
    assert all(r["gap"] for r in rows if r["outcome"] == "GAP")
    assert len(gaps) <= 3, f"known gaps grew: {gaps}"


def test_tiny_overrides_are_conftests():
    assert _catalogue().TINY == TINY


def test_bad_inputs_catalogue_quick(tmp_path, capsys):
    bi = _catalogue()
    rc = bi.main(["--out", str(tmp_path), "--quick"])
    table = capsys.readouterr().out
    assert rc == 0, table[-4000:]
    _check(bi, bi.main.rows)
    assert sum(r["before_model"] == "yes (no checkpoint written)" for r in bi.main.rows) >= 3, "CLI cases ran"


@pytest.mark.slow
def test_bad_inputs_catalogue_full(tmp_path, capsys):
    bi = _catalogue()
    rc = bi.main(["--out", str(tmp_path)])
    table = capsys.readouterr().out
    assert rc == 0, table[-4000:]
    _check(bi, bi.main.rows)
