"""Artifacts on disk: atomic checkpoint/dataset writes, stage metadata, input validation.

Every artifact is written under a temporary sibling (`<name>.tmp`) and renamed into place, so a
reader never sees a half-written checkpoint or table: a crash leaves only a `.tmp` to clean up.
A finished stage directory holds `stage_meta.json`; its presence is what "finished" means.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


META_FILE = "stage_meta.json"
# Observers of every atomic write, called with the complete temporary just before its rename (the
# fault-injection tests install one: rlhf_ops.testing.faults). Empty in a normal run.
PUBLISH_HOOKS: list = []


def _before_publish(tmp) -> None:
    for hook in PUBLISH_HOOKS:
        hook(tmp)
TABLE_SUFFIXES = (".parquet", ".jsonl", ".json")


class InputError(ValueError):
    """Bad input (a file, row or key), raised before any training starts."""


class OutputExistsError(FileExistsError):
    """The output directory already holds a finished stage."""


def is_finished(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def read_meta(path: str | Path) -> dict:
    return json.loads((Path(path) / META_FILE).read_text())


def check_output(path: str | Path, overwrite: bool) -> None:
    """Refuse to touch a finished stage's outputs, or a folder rlhf_ops did not write, unless told to
    overwrite. (A stage publishes its output by renaming a complete temporary directory, metadata
    included, so an existing output without metadata was never ours.)"""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a directory")
    if path.exists() and is_finished(path) and not overwrite:
        raise OutputExistsError(
            f"{path} already holds a finished stage ({META_FILE} present); "
            "pass overwrite=true to replace it, or choose another output path"
        )
    if path.is_dir() and not is_finished(path) and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{path} exists and holds files rlhf_ops did not write (no {META_FILE}); choose another output "
            "path, or pass overwrite=true to move that folder aside (it is never deleted)"
        )


@contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success rename it to `final`.

    An existing unfinished `final` (a leftover without metadata) is moved aside, never deleted;
    an existing finished one is replaced only with overwrite=True (moved to `<final>.old` first,
    removed after the new one is in place).
    """
    final = Path(final)
    check_output(final, overwrite)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists() and not (final.is_dir() and not any(final.iterdir())):
        suffix = ".old" if is_finished(final) else f".moved-aside-{int(time.time())}"
        old = final.with_name(final.name + suffix)
        if old.exists():
            shutil.rmtree(old)
        if not is_finished(final):  # someone's folder (overwrite=true): kept, and said where
            import logging

            logging.getLogger(__name__).warning("%s was not written by rlhf_ops; moved aside to %s", final, old)
        os.replace(final, old)
    elif final.exists():
        final.rmdir()  # an empty folder: nothing to keep
    try:
        _before_publish(tmp)
        os.replace(tmp, final)
    except BaseException:
        # The new checkpoint could not be put in place (disk full, I/O error): put the previous one
        # back under its real name, so a failed write never costs the last good checkpoint.
        if old is not None and not final.exists():
            os.replace(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(final.parent)
    if old is not None and old.name.endswith(".old"):
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """The one way a run writes a file that is not a table or checkpoint: a temporary beside it, then a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        _before_publish(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there if the write or the rename failed
    return path


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def write_meta(stage_dir: str | Path, meta: dict) -> None:
    write_json_atomic(Path(stage_dir) / META_FILE, meta)


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a parquet or JSON-lines table atomically (suffix decides)."""
    path = Path(path)
    if path.suffix not in TABLE_SUFFIXES:
        raise InputError(f"{path}: unsupported table format (use one of {', '.join(TABLE_SUFFIXES)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            # json.dumps per row, not df.to_json: to_json keeps 15 significant digits, which can
            # turn a gold-reward tie into a win after a round trip.
            with open(tmp, "w", encoding="utf-8") as f:
                for record in df.to_dict(orient="records"):
                    f.write(json.dumps(_jsonable(record), allow_nan=False, ensure_ascii=False) + "\n")
        _before_publish(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there if the write or the rename failed
    return path


def _jsonable(record: dict) -> dict:
    out = {}
    for key, value in record.items():
        if hasattr(value, "item"):  # numpy scalar
            value = value.item()
        elif hasattr(value, "tolist"):  # numpy array
            value = value.tolist()
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[key] = value
    return out


def read_table(path: str | Path, *, required: tuple[str, ...] = (), nonempty_text: tuple[str, ...] = (),
               what: str = "dataset") -> pd.DataFrame:
    """Read a parquet/JSONL table and check it: the file exists, has rows and the required columns,
    and the text columns hold non-empty strings. Errors name the file, the row and the column."""
    path = Path(path)
    if not str(path) or not path.exists():
        raise InputError(f"{what} file not found: {path}")
    if path.is_dir():
        raise InputError(f"{what} path is a directory, expected a .parquet or .jsonl file: {path}")
    if path.suffix not in TABLE_SUFFIXES:
        raise InputError(f"{path}: unsupported {what} format (use .parquet or .jsonl, or a datasets save_to_disk folder)")
    if path.stat().st_size == 0:
        raise InputError(f"{what} file is empty: {path}")
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = _read_jsonl(path)
    except ValueError as e:
        raise InputError(f"{path}: cannot parse {what}: {e}") from e
    if len(df) == 0:
        raise InputError(f"{what} file has no rows: {path}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    for col in nonempty_text:
        for i, v in enumerate(df[col].tolist()):
            if not isinstance(v, str) or not v.strip():
                raise InputError(f"{path}: row {i}: column '{col}' is empty or not text ({v!r})")
    return df


def _read_jsonl(path: Path) -> pd.DataFrame:
    """JSON lines parsed with `json` (floats round-trip exactly, ids stay strings).

    A UTF-8 byte-order mark on line 1 is accepted (as the human-labels reader accepts it: Excel and
    Notepad write one); a byte that is not UTF-8 names its line."""
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"line {n}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8") from e
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"line {n}: not valid JSON ({e.msg})") from e
    return pd.DataFrame.from_records(rows)


def check_finite(values: dict[str, Any], where: str) -> None:
    for k, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise FloatingPointError(f"{where}: metric '{k}' is {v}")
