"""The run ledger: an embedded SQLite database, ``<run_dir>/ledger.sqlite``.

It is the single source of truth for what a run has done: which stages ran
(and with what loop state afterwards), which artifacts they wrote (with content
hashes), their metrics, rollbacks and per-iteration verdicts. Resuming a run
reads it; nothing about progress is kept only in memory.

Every write is its own transaction; ``transaction()`` groups several writes so
that a crash leaves either all of them or none (the graph runner uses this to
commit a stage's completion together with its metrics and artifacts).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, NamedTuple

LEDGER_FILENAME = "ledger.sqlite"

# Keys that may change between a run and its resumption without it being a
# different experiment (where it lives, how it was launched).
RESUME_IGNORED_KEYS = ("run_dir", "overwrite", "allow_config_change", "hydra", "progress", "verbose", "tracking")

STAGE_STATUSES = ("running", "done", "failed", "skipped")
ITERATION_STATUSES = ("accepted", "rolled_back", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, started_at TEXT, config_hash TEXT, config_json TEXT,
    status TEXT);
CREATE TABLE IF NOT EXISTS stage_runs (id INTEGER PRIMARY KEY, run_id INTEGER, iteration INTEGER, node TEXT,
    status TEXT, started_at TEXT, ended_at TEXT, wall_s REAL, state_json TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS stage_runs_by_node ON stage_runs (iteration, node, status);
CREATE TABLE IF NOT EXISTS artifacts (id INTEGER PRIMARY KEY, stage_run_id INTEGER, iteration INTEGER,
    node TEXT, kind TEXT, path TEXT, sha256 TEXT, bytes INTEGER, created_at TEXT);
CREATE TABLE IF NOT EXISTS metrics (id INTEGER PRIMARY KEY, iteration INTEGER, node TEXT, key TEXT, value REAL,
    created_at TEXT);
CREATE TABLE IF NOT EXISTS rollbacks (id INTEGER PRIMARY KEY, iteration INTEGER, detector TEXT, reason TEXT,
    restored_iteration INTEGER, remedy TEXT, created_at TEXT);
CREATE TABLE IF NOT EXISTS iterations (iteration INTEGER PRIMARY KEY, status TEXT, summary_json TEXT);
"""


class ConfigChangedError(ValueError):
    """The config differs from the one the run was started with."""

    def __init__(self, message: str, differences: list[ConfigDifference]):
        super().__init__(message)
        self.differences = differences


class ConfigDifference(NamedTuple):
    key: str  # flattened dotted key, e.g. "policy.lr"
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"


_ABSENT = object()


def _show(value: Any) -> str:
    return "<absent>" if value is _ABSENT else json.dumps(value, default=str)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def hash_path(path: str | os.PathLike) -> tuple[str, int]:
    """Content hash and size of a file or a directory tree: ``(sha256_hex, bytes)``.

    A directory hashes the sorted relative paths of its files together with each
    file's sha256, so renaming, adding or editing any file changes the hash.
    """
    path = Path(path)
    if path.is_file():
        return _hash_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"artifact path does not exist: {path}")
    walk = os.walk(path)
    files = sorted(Path(root, name).relative_to(path).as_posix() for root, _, names in walk for name in names)
    digest, total = hashlib.sha256(), 0
    for rel in files:
        file_sha, size = _hash_file(path / rel)
        digest.update(f"{rel}\0{file_sha}\n".encode())
        total += size
    return digest.hexdigest(), total


def _hash_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and empty dicts stay leaves."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _resume_relevant(config: dict) -> dict[str, Any]:
    # A JSON round trip first, so a fresh config compares equal to a stored one
    # (tuples become lists, paths become strings).
    flat = flatten_config(json.loads(json.dumps(config, default=str)))
    return {key: value for key, value in flat.items() if not _ignored_on_resume(key)}


def _ignored_on_resume(key: str) -> bool:
    return any(key == ignored or key.startswith(ignored + ".") for ignored in RESUME_IGNORED_KEYS)


class Ledger:
    """The SQLite ledger of one run directory. Usable as a context manager."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / LEDGER_FILENAME
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each write is
        # exactly one transaction (or part of an explicit transaction()).
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # a committed stage survives power loss
        self._conn.executescript(_SCHEMA)
        self._depth = 0
        self.run_id: int | None = None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: all are committed, or (on any exception) none. Nested calls join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        # IMMEDIATE takes the write lock up front, so we never fail half-way through on a lock upgrade.
        self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:  # also when COMMIT itself failed
                self._conn.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    def _write(self, sql: str, params: tuple = ()) -> int:
        with self.transaction():
            return self._conn.execute(sql, params).lastrowid

    def _insert(self, table: str, **values: Any) -> int:
        columns, marks = ", ".join(values), ", ".join("?" * len(values))
        return self._write(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(values.values()))

    def _rows(self, sql: str, params: tuple = ()) -> list[dict]:
        rows = [dict(row) for row in self._conn.execute(sql, params)]
        for row in rows:  # add the decoded form of every *_json column
            for column in [c for c in row if c.endswith("_json")]:
                value = row[column]
                row[column[: -len("_json")]] = None if value is None else json.loads(value)
        return rows

    # -- runs ---------------------------------------------------------------

    def start_run(self, config: dict) -> int:
        relevant = _resume_relevant(config)
        config_hash = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
        config_json = json.dumps(config, sort_keys=True, default=str)
        self.run_id = self._insert("runs", started_at=_now(), config_hash=config_hash, config_json=config_json,
                                   status="running")
        return self.run_id

    def end_run(self, run_id: int, status: str) -> None:
        self._write("UPDATE runs SET status = ? WHERE id = ?", (status, run_id))

    def runs(self) -> list[dict]:
        return self._rows("SELECT * FROM runs ORDER BY id")

    def check_config(self, config: dict, allow_changed: bool = False) -> list[ConfigDifference]:
        """Compare ``config`` with the config of the latest run in this ledger.

        Raises ConfigChangedError listing every differing key, unless ``allow_changed``; then returns
        the differences (empty when none, or when there is no previous run).
        """
        row = self._conn.execute("SELECT config_json FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if row is None or self.last_completed() is None:
            return []  # no step finished (e.g. the first attempt failed on bad input): nothing to be consistent with
        old, new = _resume_relevant(json.loads(row["config_json"])), _resume_relevant(config)
        differences = [
            ConfigDifference(key, old.get(key, _ABSENT), new.get(key, _ABSENT))
            for key in sorted(old.keys() | new.keys())
            if old.get(key, _ABSENT) != new.get(key, _ABSENT)
        ]
        if differences and not allow_changed:
            lines = "\n".join(f"  {d}" for d in differences)
            raise ConfigChangedError(
                f"The config differs from the one run dir {self.run_dir} was started with:\n{lines}\n"
                "Pass allow_config_change=true to resume anyway (the new config is recorded as a new run "
                "in the ledger), or use a new run_dir.",
                differences,
            )
        return differences

    # -- stage runs -----------------------------------------------------------

    def begin_stage(self, iteration: int, node: str) -> int:
        return self._insert("stage_runs", run_id=self.run_id, iteration=iteration, node=node, status="running",
                            started_at=_now())

    def finish_stage(self, stage_run_id: int, status: str, state: dict, wall_s: float,
                     error: str | None = None) -> None:
        if status not in STAGE_STATUSES:
            raise ValueError(f"unknown stage status {status!r}; expected one of {STAGE_STATUSES}")
        self._write("UPDATE stage_runs SET status = ?, ended_at = ?, wall_s = ?, state_json = ?, error = ? "
                    "WHERE id = ?",
                    (status, _now(), wall_s, json.dumps(state, sort_keys=True), error, stage_run_id))

    def discard_stage(self, stage_run_id: int) -> None:
        """Forget a stage attempt entirely (it will run again on resume)."""
        self._write("DELETE FROM stage_runs WHERE id = ?", (stage_run_id,))

    def mark_interrupted(self) -> int:
        """Mark 'running' rows, left behind by a crashed process, as failed."""
        with self.transaction():
            return self._conn.execute("UPDATE stage_runs SET status = 'failed', error = 'interrupted', ended_at = ? "
                                      "WHERE status = 'running'", (_now(),)).rowcount

    def completed(self, iteration: int, node: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM stage_runs WHERE iteration = ? AND node = ? "
                                 "AND status IN ('done', 'skipped') LIMIT 1", (iteration, node)).fetchone()
        return row is not None

    def last_completed(self) -> tuple[int, str, dict] | None:
        row = self._conn.execute("SELECT iteration, node, state_json FROM stage_runs "
                                 "WHERE status IN ('done', 'skipped') ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        return row["iteration"], row["node"], json.loads(row["state_json"])

    def stage_history(self) -> list[dict]:
        return self._rows("SELECT * FROM stage_runs ORDER BY id")

    # -- artifacts ------------------------------------------------------------

    def _stored_path(self, path: str | os.PathLike) -> str:
        # Paths inside the run dir are stored relative to it, so a run dir can be moved or copied and its
        # artifacts still verify.
        absolute = os.path.abspath(path)
        relative = os.path.relpath(absolute, os.path.abspath(self.run_dir))
        return absolute if relative.startswith("..") else Path(relative).as_posix()

    def record_artifact(self, stage_run_id: int, iteration: int, node: str, kind: str, path: str | os.PathLike,
                        digest: tuple[str, int] | None = None) -> int:
        """Record an artifact with its content hash (``digest`` if already computed)."""
        sha256, size = digest if digest is not None else hash_path(path)
        return self._insert("artifacts", stage_run_id=stage_run_id, iteration=iteration, node=node, kind=kind,
                            path=self._stored_path(path), sha256=sha256, bytes=size, created_at=_now())

    def artifacts(self, iteration: int | None = None, kind: str | None = None) -> list[dict]:
        rows = self._rows("SELECT * FROM artifacts WHERE (? IS NULL OR iteration = ?) AND (? IS NULL OR kind = ?) "
                          "ORDER BY id", (iteration, iteration, kind, kind))
        for row in rows:
            row["path"] = str(self.run_dir / row["path"])  # absolute paths stay absolute
        return rows

    def verify_artifact(self, path: str | os.PathLike) -> bool:
        """True if ``path`` still has the content hash last recorded for it."""
        row = self._conn.execute("SELECT sha256 FROM artifacts WHERE path = ? ORDER BY id DESC LIMIT 1",
                                 (self._stored_path(path),)).fetchone()
        if row is None:
            raise KeyError(f"no artifact recorded for {path}")
        try:
            return hash_path(path)[0] == row["sha256"]
        except FileNotFoundError:
            return False

    # -- metrics, rollbacks, iterations -----------------------------------------

    def log_metrics(self, iteration: int, node: str, metrics: dict[str, float]) -> None:
        """Log numeric metrics; other values (strings, None, lists) are skipped."""
        now = _now()
        rows = [(iteration, node, k, float(v), now) for k, v in metrics.items() if isinstance(v, numbers.Real)]
        with self.transaction():
            self._conn.executemany(
                "INSERT INTO metrics (iteration, node, key, value, created_at) VALUES (?, ?, ?, ?, ?)", rows)

    def metrics(self, iteration: int | None = None) -> list[dict]:
        return self._rows("SELECT * FROM metrics WHERE (? IS NULL OR iteration = ?) ORDER BY id",
                          (iteration, iteration))

    def record_rollback(self, iteration: int, detector: str, reason: str, restored_iteration: int | None,
                        remedy: str | None = None) -> int:
        return self._insert("rollbacks", iteration=iteration, detector=detector, reason=reason,
                            restored_iteration=restored_iteration, remedy=remedy, created_at=_now())

    def rollbacks(self) -> list[dict]:
        return self._rows("SELECT * FROM rollbacks ORDER BY id")

    def set_iteration(self, iteration: int, status: str, summary: dict) -> None:
        if status not in ITERATION_STATUSES:
            raise ValueError(f"unknown iteration status {status!r}; expected {ITERATION_STATUSES}")
        self._write("INSERT INTO iterations (iteration, status, summary_json) VALUES (?, ?, ?) "
                    "ON CONFLICT (iteration) DO UPDATE SET status = excluded.status, "
                    "summary_json = excluded.summary_json",
                    (iteration, status, json.dumps(summary, sort_keys=True, default=str)))

    def iterations(self) -> list[dict]:
        return self._rows("SELECT * FROM iterations ORDER BY iteration")
