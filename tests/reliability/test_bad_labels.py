"""Bad human labels and empty generations: a clear error naming the file and line, or (with
loop.human_labels_on_error=skip) the good rows used and the bad ones counted in a warning; an
iteration whose completions are all empty labels nothing and goes on."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from rlhf_ops.artifacts import InputError, write_table
from rlhf_ops.labelers.human import read_labels
from rlhf_ops.loop import iteration
from rlhf_ops.loop.state import LoopState

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import fault_injection as fi  # noqa: E402

KNOWN = {"p1", "p2", "p3"}
GOOD = '{"pair_id": "p1", "choice": "a"}\n'

# (what, bad line, the problem reported for it)
BAD_LINES = [
    ("bad JSON", b'{"pair_id": "p2", "choice": "a"\n', "not valid JSON (Expecting ',' delimiter)"),
    ("not an object", b'["p2", "a"]\n', "expected a JSON object, got list"),
    ("missing field", b'{"pair_id": "p2"}\n', "missing field(s) ['choice']"),
    ("wrong type", b'{"pair_id": 2, "choice": "a"}\n', "'pair_id' and 'choice' must be strings (got int, str)"),
    ("wrong choice", b'{"pair_id": "p2", "choice": "A"}\n', "'choice' must be 'a' or 'b', got 'A'"),
    ("empty id", b'{"pair_id": "  ", "choice": "a"}\n', "empty 'pair_id'"),
    ("unknown pair id", b'{"pair_id": "zz", "choice": "a"}\n', "unknown pair_id 'zz' (not in to_label.jsonl)"),
    ("unknown field", b'{"pair_id": "p2", "choice": "a", "why": "x"}\n',
     "unknown field(s) ['why'] (a label row has only ['pair_id', 'choice'])"),
    ("duplicate row", b'{"pair_id": "p1", "choice": "b"}\n', "duplicate label for pair_id 'p1'"),
    ("not UTF-8", b'{"pair_id": "p2", "choice": "\xe9"}\n', "not UTF-8 text (invalid continuation byte at byte 29)"),
]


@pytest.mark.parametrize("what, line, problem", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_bad_label_line_is_an_error_naming_file_and_line(tmp_path, what, line, problem):
    path = tmp_path / "labels.jsonl"
    content = GOOD.encode() + b"\n" + line + b'{"pair_id": "p3", "choice": "b"}\n'
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        read_labels(path, KNOWN)
    assert str(caught.value) == f"{path}:3: {problem}"
    assert path.read_bytes() == content, "the labels file is only read"


def test_skip_uses_the_good_rows_and_counts_the_bad_ones(tmp_path, caplog):
    path = tmp_path / "labels.jsonl"
    path.write_bytes(GOOD.encode() + b"".join(line for _, line, _ in BAD_LINES) + b'{"pair_id": "p3", "choice": "b"}\n')
    with pytest.raises(InputError, match=re.escape(f"{path}:2: not valid JSON (Expecting ',' delimiter) (and 9 more)")):
        read_labels(path, KNOWN)
    with caplog.at_level(logging.WARNING, logger="rlhf_ops.labelers.human"):
        choices, problems = read_labels(path, KNOWN, on_error="skip")
    assert choices == {"p1": "a", "p3": "b"}
    assert [p.split(": ", 1)[1] for p in problems] == [problem for _, _, problem in BAD_LINES]
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{n}" for n in range(2, 12)]
    assert f"skipped 10 malformed label row(s) in {path}; first: {path}:2: not valid JSON" in caplog.text


def test_byte_order_mark_and_blank_lines_are_fine(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n  \n" + b'{"pair_id": "p2", "choice": "b"}\n')
    assert read_labels(path, KNOWN) == ({"p1": "a", "p2": "b"}, [])


# -- empty or all-padding generations -------------------------------------------------------------------

def completions(tmp_path: Path, texts: list[str]) -> str:
    n = len(texts)
    df = pd.DataFrame({"prompt": ["Review the hotel. Talk about the service.\nReview:"] * n,
                       "prompt_id": [f"p{k // 2}" for k in range(n)], "completion": texts, "n_tokens": 0,
                       "ended": True, "iteration": 0, "policy_checkpoint": "policy"})
    df["empty"] = df["completion"].str.strip() == ""  # as the collect node flags them
    return str(write_table(df, tmp_path / "completions.parquet"))


def label_ctx(tmp_path: Path, comp: str, labeler: str, *overrides: str):
    from conftest import step_ctx, typed_cfg

    state = LoopState(rm="unused", policy="policy")
    state.work.completions = comp
    return step_ctx(typed_cfg(f"loop.labeler={labeler}", *overrides), "label", 0, tmp_path, state)


@pytest.mark.parametrize("labeler", ["annotator", "human"])
def test_all_empty_completions_give_zero_pairs(tmp_path, labeler):
    """All padding/EOS (empty after strip): nothing to label, no crash, no pause for a person. Fewer
    pairs than loop.min_pairs abandons the iteration (rolled back, never trained on); with
    loop.min_pairs=0 it goes on without fresh pairs."""
    from rlhf_ops.loop.errors import AbandonIteration

    comp = completions(tmp_path, ["", "   ", "\n", ""])
    with pytest.raises(AbandonIteration, match=r"0 usable pair\(s\) from 0 prompt\(s\), fewer than loop.min_pairs=4"):
        iteration.label(label_ctx(tmp_path, comp, labeler))
    ctx = label_ctx(tmp_path, comp, labeler, "loop.min_pairs=0")
    iteration.label(ctx)
    pairs = pd.read_parquet(ctx.state.work.pairs)
    assert len(pairs) == 0 and ctx.metrics["n_pairs"] == 0
    assert "pair_id" in pairs.columns and len(pd.read_parquet(tmp_path / iteration.STORE)) == 0


def test_empty_completions_are_skipped_and_the_rest_labelled(tmp_path):
    texts = ["The service was friendly and quick.", "", "", " ",
             "The staff were rude.", "The service was slow but kind."]
    ctx = label_ctx(tmp_path, completions(tmp_path, texts), "annotator", "loop.min_pairs=1")
    iteration.label(ctx)
    pairs = pd.read_parquet(ctx.state.work.pairs)
    assert len(pairs) == 1 and pairs["prompt_id"].tolist() == ["p2"]
    assert "" not in set(pairs["chosen"]) | set(pairs["rejected"])


# -- the CLI, end to end ------------------------------------------------------------------------------------

def test_cli_skips_malformed_labels_with_a_counted_warning(tmp_path):
    run_dir = tmp_path / "run"
    args = ["loop.labeler=human", "loop.iterations=1", "loop.human_labels_on_error=skip",
            "loop.human_labels_partial=accept"]  # the first pair is left unlabelled
    p = fi.run_cli(run_dir, *args)
    assert p.returncode == 0 and "waiting for human labels" in p.stdout, p.stderr[-2000:]
    queue = run_dir / "human_queue" / "iter_000"
    pending = [json.loads(line) for line in (queue / "to_label.jsonl").read_text().splitlines()]
    assert len(pending) >= 3
    good = [{"pair_id": r["pair_id"], "choice": "a"} for r in pending[1:]]
    bad = ['{"pair_id": ', json.dumps({"pair_id": "nope", "choice": "a"}), json.dumps({"pair_id": pending[1]["pair_id"],
           "choice": "b"}), json.dumps({"choice": "a"})]
    (queue / "labels.jsonl").write_text("\n".join([json.dumps(r) for r in good] + bad) + "\n")
    before = {f: f.read_bytes() for f in run_dir.rglob("*")  # the data so far, and the queue itself
              if f.is_file() and f.suffix in (".jsonl", ".parquet") and f.name != "metrics.jsonl"}
    p = fi.run_cli(run_dir, *args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"skipped 4 malformed label row(s) in {queue / 'labels.jsonl'}" in p.stdout + p.stderr
    pairs = pd.read_parquet(run_dir / "iter_000" / "label" / "pairs.parquet")
    assert sorted(pairs["pair_id"]) == sorted(r["pair_id"] for r in good), "exactly the good rows"
    assert fi.read_summary(run_dir)["status"] == "completed"
    for f, content in before.items():
        assert f.read_bytes() == content, f"{f} changed"


# -- a labels file that labels only some pairs; edited exports -------------------------------------------------

def _queue(tmp_path: Path, n: int = 3):
    from rlhf_ops.labelers.human import HumanQueueLabeler

    rows = [{"prompt": f"Review {i}.\nReview:", "prompt_id": f"p{i}"} for i in range(n)]
    cands = [[f" Good {i}.", f" Bad {i}."] for i in range(n)]
    q = tmp_path / "queue"
    with pytest.raises(iteration.StopLoop, match=f"waiting for human labels: {n} pairs"):
        HumanQueueLabeler().label(rows, cands, iteration=0, checkpoint="ck", work_dir=q)
    pending = [json.loads(line) for line in (q / "to_label.jsonl").read_text().splitlines()]
    (q / "labels.jsonl").write_text(json.dumps({"pair_id": pending[0]["pair_id"], "choice": "b"}) + "\n")
    return rows, cands, q, pending


class _FakeRM:  # stands in for the current reward model: prefers the longer text
    def label(self, prompt_rows, candidates, *, iteration, checkpoint, work_dir=None):
        from rlhf_ops.pairs import PAIR_COLUMNS

        recs = [{"pair_id": "rm-x", "prompt": r["prompt"], "prompt_id": r["prompt_id"], "chosen": max(c, key=len),
                 "rejected": min(c, key=len), "gold_chosen": float("nan"), "gold_rejected": float("nan"),
                 "labeler": "rm:RM", "iteration": iteration, "policy_checkpoint": checkpoint, "source": "policy"}
                for r, c in zip(prompt_rows, candidates)]
        return pd.DataFrame.from_records(recs, columns=PAIR_COLUMNS)


def test_a_partial_labels_file_pauses_again_by_default(tmp_path):
    from rlhf_ops.labelers.human import HumanQueueLabeler

    rows, cands, q, pending = _queue(tmp_path)
    with pytest.raises(iteration.StopLoop, match=r"labels 1 of 3 pairs; 2 are still unlabelled .*"
                                                 r"loop.human_labels_partial=accept"):
        HumanQueueLabeler().label(rows, cands, iteration=0, checkpoint="ck", work_dir=q)
    got = HumanQueueLabeler(partial="accept").label(rows, cands, iteration=0, checkpoint="ck", work_dir=q)
    assert got["pair_id"].tolist() == [pending[0]["pair_id"]] and got["chosen"].tolist() == [pending[0]["b"]]
    got = HumanQueueLabeler(partial="fallback", fallback=_FakeRM()).label(rows, cands, iteration=0, checkpoint="ck",
                                                                          work_dir=q)
    assert sorted(got["pair_id"]) == sorted(p["pair_id"] for p in pending), "the exported ids, every pair once"
    by = dict(zip(got["pair_id"], got["labeler"]))
    assert by[pending[0]["pair_id"]] == "human" and {by[p["pair_id"]] for p in pending[1:]} == {"rm:RM"}
    with pytest.raises(InputError, match="no reward model yet"):
        HumanQueueLabeler(partial="fallback").label(rows, cands, iteration=0, checkpoint="ck", work_dir=q)


def test_an_export_edited_into_equal_sides_is_refused(tmp_path):
    from rlhf_ops.labelers.human import HumanQueueLabeler

    rows, cands, q, pending = _queue(tmp_path)
    pending[1]["b"] = pending[1]["a"]
    (q / "to_label.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pending))
    with pytest.raises(InputError, match=f"pair '{pending[1]['pair_id']}' has the same text as 'a' and 'b'"):
        HumanQueueLabeler(partial="accept").label(rows, cands, iteration=0, checkpoint="ck", work_dir=q)
