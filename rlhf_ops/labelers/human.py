"""A human labelling queue through files.

The first time an iteration reaches `label`, the pairs to judge are exported to
`<run_dir>/human_queue/iter_NNN/to_label.jsonl` (one {"pair_id", "prompt", "a", "b"} per line) and
the loop stops with a message saying what to fill in. A person (or a labelling tool) writes
`labels.jsonl` beside it, one {"pair_id": ..., "choice": "a" | "b"} per line; re-running the same
command imports it and the loop goes on. An iteration with nothing to judge (no prompt with two
distinct non-empty completions) does not pause: it goes on without fresh pairs, with a warning.

Imported labels are validated line by line against that schema: bad JSON, a missing field, a field
that is not in the schema, a wrong type, an empty id, an unknown pair id (another iteration's, too), a
duplicate or a line that is not UTF-8 is an error naming the file and line, or (with on_error="skip")
a skipped row counted in a warning. A pair whose two sides were edited into the same text is refused.
A file that labels only some of the pairs pauses the loop again, saying how many are left (partial=
"pause"), or is taken as it is ("accept"), or has the rest labelled by a fallback labeler, the current
reward model, recorded per row in `labeler` ("fallback"). Never silent.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from ..artifacts import InputError, write_text_atomic
from ..loop.errors import StopLoop
from ..pairs import PAIR_COLUMNS, make_pair_id

log = logging.getLogger(__name__)
EXPORT, LABELS = "to_label.jsonl", "labels.jsonl"
CHOICES = ("a", "b")
FIELDS = ("pair_id", "choice")


def read_labels(path: Path, known_ids: set[str], on_error: str = "error") -> tuple[dict[str, str], list[str]]:
    """{pair_id: choice} from a labels file, and the problems found (each naming the line)."""
    choices: dict[str, str] = {}
    problems: list[str] = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            where = f"{path}:{n}"
            try:  # line by line, so a stray non-UTF-8 byte names its line (a BOM on line 1 is fine)
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                problems.append(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: not valid JSON ({e.msg})")
                continue
            if not isinstance(row, dict):
                problems.append(f"{where}: expected a JSON object, got {type(row).__name__}")
                continue
            missing = [k for k in FIELDS if k not in row]
            if missing:
                problems.append(f"{where}: missing field(s) {missing}")
                continue
            unknown = sorted(set(row) - set(FIELDS))
            if unknown:
                problems.append(f"{where}: unknown field(s) {unknown} (a label row has only {list(FIELDS)})")
                continue
            pid, choice = row["pair_id"], row["choice"]
            if not isinstance(pid, str) or not isinstance(choice, str):
                problems.append(f"{where}: 'pair_id' and 'choice' must be strings "
                                f"(got {type(pid).__name__}, {type(choice).__name__})")
                continue
            if not pid.strip():
                problems.append(f"{where}: empty 'pair_id'")
                continue
            if choice not in CHOICES:
                problems.append(f"{where}: 'choice' must be 'a' or 'b', got {choice!r}")
                continue
            if pid not in known_ids:
                problems.append(f"{where}: unknown pair_id {pid!r} (not in {EXPORT})")
                continue
            if pid in choices:
                problems.append(f"{where}: duplicate label for pair_id {pid!r}")
                continue
            choices[pid] = choice
    if problems and on_error != "skip":
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(problems[0] + more)
    if problems:
        log.warning("skipped %d malformed label row(s) in %s; first: %s", len(problems), path, problems[0])
    return choices, problems


class HumanQueueLabeler:
    def __init__(self, on_error: str = "error", partial: str = "pause", fallback=None):
        # fallback: a labeler for the pairs left unlabelled when partial="fallback" (the loop's current RM)
        self.on_error, self.partial, self.fallback = on_error, partial, fallback

    def label(self, prompt_rows: list[dict], candidates: list[list[str]], *, iteration: int, checkpoint: str,
              work_dir) -> pd.DataFrame:
        queue = Path(work_dir)
        queue.mkdir(parents=True, exist_ok=True)
        export = queue / EXPORT
        if not export.exists():
            rows = []
            for k, (row, cs) in enumerate(zip(prompt_rows, candidates)):
                distinct = list(dict.fromkeys(cs))
                if len(distinct) < 2:
                    continue
                a, b = distinct[0], distinct[1]
                rows.append({"pair_id": make_pair_id("human", iteration, checkpoint, row["prompt_id"], k, a, b),
                             "prompt": row["prompt"], "prompt_id": row["prompt_id"], "a": a, "b": b})
            write_text_atomic(export, "".join(json.dumps(r) + "\n" for r in rows))
        labels = queue / LABELS
        pending = [json.loads(line) for line in open(export, encoding="utf-8") if line.strip()]
        if not pending:
            # Nothing a person could judge (every prompt has fewer than two distinct non-empty completions):
            # pausing would wait for a file that can hold no label, so the iteration goes on without pairs.
            log.warning("iteration %d: no pair to label (no prompt has two distinct non-empty completions); "
                        "%s is empty and the loop goes on without fresh pairs", iteration, export)
            return pd.DataFrame(columns=PAIR_COLUMNS)
        if not labels.exists():
            raise StopLoop(
                f"waiting for human labels: {len(pending)} pairs in {export}. Write {labels} with one line per pair, "
                '{"pair_id": "...", "choice": "a"} (or "b"), then re-run the same command to continue.'
            )
        by_id = {p["pair_id"]: p for p in pending}
        same = [pid for pid, p in by_id.items() if p["a"] == p["b"]]
        if same:
            raise InputError(f"{export}: pair {same[0]!r} has the same text as 'a' and 'b'"
                             f"{f' (and {len(same) - 1} more)' if len(same) > 1 else ''}: the exported pairs were "
                             "edited; a label of two equal texts teaches nothing")
        choices, _ = read_labels(labels, set(by_id), self.on_error)
        if not choices:
            raise InputError(f"{labels}: no usable labels")
        left = [pid for pid in by_id if pid not in choices]
        if left and self.partial == "pause":
            raise StopLoop(
                f"{labels} labels {len(choices)} of {len(by_id)} pairs; {len(left)} are still unlabelled (first: "
                f"{left[0]!r}). Add them and re-run the same command, or re-run with loop.human_labels_partial=accept "
                "(train on the labelled pairs only) or =fallback (the current reward model labels the rest)")
        if left:
            log.warning("iteration %d: %d of %d pairs in %s are unlabelled; %s", iteration, len(left), len(by_id),
                        labels, "the current reward model labels them" if self.partial == "fallback"
                        else "training on the labelled ones only (loop.human_labels_partial=accept)")
        records = []
        if left and self.partial == "fallback":
            if self.fallback is None:
                raise InputError(f"{labels}: {len(left)} pairs unlabelled and loop.human_labels_partial=fallback, but "
                                 "there is no reward model yet to label them")
            rest = [by_id[pid] for pid in left]
            scored = self.fallback.label([{"prompt": p["prompt"], "prompt_id": p["prompt_id"]} for p in rest],
                                         [[p["a"], p["b"]] for p in rest], iteration=iteration, checkpoint=checkpoint)
            # The RM's rows keep the exported pair ids (one pair per prompt, in order; a tie gives no row).
            by_prompt = {p["prompt_id"]: p["pair_id"] for p in rest}
            for r in scored.to_dict("records"):
                records.append({**r, "pair_id": by_prompt[r["prompt_id"]]})
        for pid, choice in choices.items():
            p = by_id[pid]
            chosen, rejected = (p["a"], p["b"]) if choice == "a" else (p["b"], p["a"])
            records.append({"pair_id": pid, "prompt": p["prompt"], "prompt_id": p["prompt_id"],
                            "chosen": chosen, "rejected": rejected,
                            "gold_chosen": float("nan"), "gold_rejected": float("nan"),
                            "labeler": "human", "iteration": iteration, "policy_checkpoint": checkpoint,
                            "source": "policy"})
        return pd.DataFrame.from_records(records, columns=PAIR_COLUMNS)
