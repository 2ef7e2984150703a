"""TRL's dataset formats, read from a user's files and turned into the text our models see.

Two formats, as in TRL: *standard* (text) and *conversational* (lists of `{"role", "content"}`
messages). Per kind of data:

    prompts      prompt (text or messages) [+ prompt_id]
    sft          prompt + completion (text or messages), or messages (the last assistant turn is the completion)
    pairs        prompt + chosen + rejected, or chosen + rejected only as full conversations
                 sharing their first turns (TRL's implicit prompt)

Conversational prompts are rendered with the tokenizer's chat template (`add_generation_prompt`);
a conversational completion is the text of its assistant turn (the trainers append EOS). Plain text
is used verbatim unless the loop chooses to apply the template to it (`render_prompt(..., wrap=True)`).
Every error names the file, the row and the expected columns.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from .artifacts import InputError, read_table

log = logging.getLogger(__name__)
ROLES = ("system", "user", "assistant", "tool")
EXPECTED = {
    "prompts": "a 'prompt' column (text, or a list of {role, content} messages)",
    "sft": "'prompt' and 'completion' columns (text or messages), or a 'messages' column",
    "pairs": "'prompt', 'chosen' and 'rejected' columns (text or messages), or 'chosen' and 'rejected' conversations",
}


def read_any(path: str | Path, what: str) -> pd.DataFrame:
    """A table from a .jsonl / .parquet file or a `datasets.save_to_disk` folder."""
    p = Path(path)
    if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
        from datasets import load_from_disk

        try:
            ds = load_from_disk(str(p))
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; one line naming the folder
            raise InputError(f"{p}: cannot read the datasets folder: {e}") from e
        if hasattr(ds, "keys"):  # a DatasetDict
            splits = list(ds.keys())
            if "train" not in splits:
                raise InputError(f"{p}: a DatasetDict without a 'train' split ({splits}); point at one split's folder")
            ds = ds["train"]
        df = ds.to_pandas()
        if not len(df):
            raise InputError(f"{what} dataset has no rows: {p}")
        return df
    if p.is_dir():
        raise InputError(f"{what} path {p} is a directory but not a datasets folder (no dataset_info.json); "
                         "expected a .jsonl or .parquet file or a save_to_disk folder")
    if p.suffix in (".jsonl", ".json") and p.is_file():
        with open(p, "rb") as f:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        if head.startswith(b"["):  # else parsed as lines: "line 1: not valid JSON" or a table of list columns
            raise InputError(f"{p}: a JSON array; {what} files are JSON lines, one object per line "
                             "(convert with: jq -c '.[]' FILE > FILE.jsonl)")
    return read_table(p, what=what)


def _messages(value, where: str, col: str) -> list[dict] | None:
    """The value as a validated message list, or None if it is plain text."""
    if isinstance(value, str):
        return None
    if hasattr(value, "tolist"):  # parquet / arrow give numpy arrays of dicts
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: column '{col}' is neither text nor a non-empty list of messages ({value!r:.80})")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"{where}: column '{col}' message {k} is not a {{role, content}} object ({m!r:.80})")
        if m["role"] not in ROLES:
            raise InputError(f"{where}: column '{col}' message {k} has role {m['role']!r} (expected one of {ROLES})")
        if not isinstance(m["content"], str):
            raise InputError(f"{where}: column '{col}' message {k} content is not text ({m['content']!r:.80})")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _text(value, where: str, col: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: column '{col}' is empty or not text ({value!r:.80})")
    return value


def _require(df: pd.DataFrame, path, kind: str, *alternatives: tuple[str, ...]) -> tuple[str, ...]:
    for cols in alternatives:
        if all(c in df.columns for c in cols):
            return cols
    missing = [c for c in alternatives[0] if c not in df.columns]
    raise InputError(f"{path}: missing column(s) {missing}: expected {EXPECTED[kind]}; found {list(df.columns)}")


def _assistant_text(msgs: list[dict], where: str, col: str) -> str:
    if msgs[-1]["role"] != "assistant":
        raise InputError(f"{where}: column '{col}' must end with an assistant message (ends with {msgs[-1]['role']!r})")
    return _text(msgs[-1]["content"], where, col)


def source_key(prompt) -> str:
    """A prompt as one string: text as is, messages as compact JSON (a stable key and id source)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def normalize_prompts(df: pd.DataFrame, path) -> pd.DataFrame:
    """prompt (text or message list), prompt_id: ids are the file's own, else the row number."""
    _require(df, path, "prompts", ("prompt",))
    prompts = []
    for i, v in enumerate(df["prompt"].tolist()):
        where = f"{path}: row {i}"
        msgs = _messages(v, where, "prompt")
        if msgs is not None and msgs[-1]["role"] == "assistant":
            raise InputError(f"{where}: a conversational prompt must not end with an assistant message")
        prompts.append(msgs if msgs is not None else _text(v, where, "prompt"))
    ids = [str(x) for x in df["prompt_id"]] if "prompt_id" in df.columns else [f"row{i:06d}" for i in range(len(df))]
    keys, first = [source_key(p) for p in prompts], {}
    for i, (pid, key) in enumerate(zip(ids, keys)):
        j = first.setdefault(pid, i)
        if keys[j] != key:  # collect groups completions by prompt_id: two prompts would be judged as one
            raise InputError(f"{path}: row {i}: prompt_id {pid!r} is also row {j}'s, a different prompt; "
                             "prompt ids must be unique")
    seen: dict[str, int] = {}
    repeats = []
    for i, key in enumerate(keys):
        if seen.setdefault(key, i) != i:
            repeats.append((i, seen[key]))
    if repeats:  # one warning per file, however many
        log.warning("%s: %d duplicate prompt(s) (first: row %d repeats row %d); each copy is kept as its own prompt",
                    path, len(repeats), *repeats[0])
    return pd.DataFrame({"prompt": prompts, "prompt_id": ids})


def normalize_sft(df: pd.DataFrame, path) -> pd.DataFrame:
    """prompt (text or messages) and completion (text)."""
    cols = _require(df, path, "sft", ("prompt", "completion"), ("messages",))
    rows = []
    for i, r in enumerate(df.to_dict(orient="records")):
        where = f"{path}: row {i}"
        if cols == ("messages",):
            msgs = _messages(r["messages"], where, "messages")
            if msgs is None or len(msgs) < 2:
                raise InputError(f"{where}: column 'messages' needs a conversation of at least two messages")
            rows.append({"prompt": msgs[:-1], "completion": _assistant_text(msgs, where, "messages")})
            continue
        pm = _messages(r["prompt"], where, "prompt")
        cm = _messages(r["completion"], where, "completion")
        completion = _assistant_text(cm, where, "completion") if cm is not None else _text(r["completion"], where, "completion")
        rows.append({"prompt": pm if pm is not None else _text(r["prompt"], where, "prompt"), "completion": completion})
    return pd.DataFrame.from_records(rows, columns=["prompt", "completion"])


def normalize_pairs(df: pd.DataFrame, path) -> pd.DataFrame:
    """prompt (text or messages), chosen and rejected (text); identical chosen/rejected is refused."""
    cols = _require(df, path, "pairs", ("prompt", "chosen", "rejected"), ("chosen", "rejected"))
    rows = []
    for i, r in enumerate(df.to_dict(orient="records")):
        where = f"{path}: row {i}"
        cm, rm = _messages(r["chosen"], where, "chosen"), _messages(r["rejected"], where, "rejected")
        if "prompt" in cols:
            pm = _messages(r["prompt"], where, "prompt")
            prompt = pm if pm is not None else _text(r["prompt"], where, "prompt")
        else:  # implicit prompt: the turns both conversations share
            if cm is None or rm is None or len(cm) < 2 or cm[:-1] != rm[:-1]:
                raise InputError(f"{where}: without a 'prompt' column, 'chosen' and 'rejected' must be conversations "
                                 "that share every turn but the last")
            prompt = cm[:-1]
        chosen = _assistant_text(cm, where, "chosen") if cm is not None else _text(r["chosen"], where, "chosen")
        rejected = _assistant_text(rm, where, "rejected") if rm is not None else _text(r["rejected"], where, "rejected")
        if chosen == rejected:
            raise InputError(f"{where}: 'chosen' and 'rejected' are the same text; a pair must differ")
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pd.DataFrame.from_records(rows, columns=["prompt", "chosen", "rejected"])


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt, *, wrap: bool = False, where: str = "") -> str:
    """The text a model is given for `prompt`. Messages go through the chat template; plain text too
    when `wrap` (as one user turn) and the tokenizer has a template; otherwise it is used verbatim."""
    if isinstance(prompt, str) and not (wrap and has_chat_template(tokenizer)):
        return prompt
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if not has_chat_template(tokenizer):
        raise InputError(f"{where}: conversational data needs a tokenizer with a chat template, and "
                         f"{getattr(tokenizer, 'name_or_path', 'this tokenizer')} has none; give the prompts as text "
                         "or add a chat_template to tokenizer_config.json")
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def render_column(df: pd.DataFrame, tokenizer, *, wrap: bool, path, col: str = "prompt") -> pd.DataFrame:
    """Replace `col` by the rendered text; the task's own prompt is kept as `prompt_source`."""
    out = df.copy()
    out["prompt_source"] = [source_key(v) for v in df[col]]
    out[col] = [render_prompt(tokenizer, v, wrap=wrap, where=f"{path}: row {i}") for i, v in enumerate(df[col])]
    return out


def read_rendered(path, kind: str, tokenizer) -> pd.DataFrame:
    """A stage's own input file (job=sft|reward|ppo|dpo): standard rows verbatim, conversational
    rows through the chat template."""
    df = read_any(path, {"prompts": "prompt", "sft": "SFT", "pairs": "preference"}[kind])
    norm = {"prompts": normalize_prompts, "sft": normalize_sft, "pairs": normalize_pairs}[kind](df, path)
    return render_column(norm, tokenizer, wrap=False, path=path)
