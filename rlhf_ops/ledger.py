"""The run ledger: an embedded SQLite database, ``<run_dir>/ledger.sqlite``.

It is the single source of truth for what a run has done: which stages ran
(and with what loop state afterwards), which artifacts they wrote (with content
hashes), their metrics, rollbacks and per-iteration verdicts. Resuming a run
reads it; nothing about progress is kept only in memory.

The loop state after a stage is stored as what the stage changed, so the ledger
grows linearly with the iterations (the state's history lists grow every
iteration): a row's ``state_delta_json`` applies to the state of row
``state_base_id`` (see ``_delta``). A row with ``state_json`` and no delta holds
the full state: the first finished row, and every row of a ledger written before
deltas existed.

Paths inside the run dir are stored relative to it (artifacts as relative paths; in states and
iteration summaries a path string ``<run_dir>/iter_000/...`` is stored as ``RUN_DIR_MARK/iter_000/...``
and read back under wherever the run dir is now), so a run dir can be copied or moved and resumed.

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
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, NamedTuple

LEDGER_FILENAME = "ledger.sqlite"

# Keys that may change between a run and its resumption without it being a
# different experiment (where it lives, how it was launched).
RESUME_IGNORED_KEYS = ("run_dir", "overwrite", "allow_config_change", "hydra", "progress", "verbose", "tracking")

STAGE_STATUSES = ("running", "done", "failed", "skipped")
# Stands for the run dir at the start of a stored path string (see Ledger._relocatable).
RUN_DIR_MARK = "<run_dir>"
# The artifact kind of a checkpoint outside the run dir (a user's base model) the loop state refers to:
# recorded with its content hash when it first appears, checked on every resume.
EXTERNAL_KIND = "external"
ITERATION_STATUSES = ("accepted", "rolled_back", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, started_at TEXT, config_hash TEXT, config_json TEXT,
    status TEXT);
CREATE TABLE IF NOT EXISTS stage_runs (id INTEGER PRIMARY KEY, run_id INTEGER, iteration INTEGER, node TEXT,
    status TEXT, started_at TEXT, ended_at TEXT, wall_s REAL, state_json TEXT, error TEXT,
    state_delta_json TEXT, state_base_id INTEGER, memory_json TEXT);
CREATE INDEX IF NOT EXISTS stage_runs_by_node ON stage_runs (iteration, node, status);
CREATE TABLE IF NOT EXISTS artifacts (id INTEGER PRIMARY KEY, stage_run_id INTEGER, iteration INTEGER,
    node TEXT, kind TEXT, path TEXT, sha256 TEXT, bytes INTEGER, created_at TEXT);
CREATE TABLE IF NOT EXISTS metrics (id INTEGER PRIMARY KEY, iteration INTEGER, node TEXT, key TEXT, value REAL,
    created_at TEXT);
CREATE TABLE IF NOT EXISTS rollbacks (id INTEGER PRIMARY KEY, iteration INTEGER, detector TEXT, reason TEXT,
    restored_iteration INTEGER, remedy TEXT, created_at TEXT);
CREATE TABLE IF NOT EXISTS iterations (iteration INTEGER PRIMARY KEY, status TEXT, summary_json TEXT);
"""


class LedgerDamaged(ValueError):
    """The ledger file cannot be read as the database it should be."""


def damage(path: str | os.PathLike, conn: sqlite3.Connection | None = None) -> str | None:
    """What SQLite's PRAGMA quick_check finds wrong with a ledger (None: nothing). Without ``conn`` the
    file is opened read-only as immutable, so nothing beside it is created or changed: only for a ledger
    with no WAL file (a WAL's pages are then not read)."""
    try:
        if conn is None:
            uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?immutable=1"
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as c:
                rows = [r[0] for r in c.execute("PRAGMA quick_check(3)")]
        else:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if rows == ["ok"] else "; ".join(rows)


def damaged_message(path: str | os.PathLike, what: str) -> str:
    return (f"{path}: the run ledger is damaged ({what}); restore it (with its -wal file, if it had one) from a "
            "copy to resume, or use a new run_dir")


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
        added = ("  (a key this version of rlhf_ops has and the one that started the run did not: check that its "
                 "value keeps the run's behaviour)") if self.old is _ABSENT else ""
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}{added}"


_ABSENT = object()


def _show(value: Any) -> str:
    return "<absent>" if value is _ABSENT else json.dumps(value, default=str)


def _encode(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _delta(old: dict, new: dict) -> dict:
    """What changed from ``old`` to ``new`` (top-level keys): a list that only grew stores the new items.

    Values are compared by their JSON, so 1 -> 1.0 is a change and a NaN equals itself.
    """
    delta: dict = {"set": {}, "append": {}, "unset": sorted(old.keys() - new.keys())}
    for key, value in new.items():
        before = old.get(key, _ABSENT)
        if before is not _ABSENT and _encode(before) == _encode(value):
            continue
        if (isinstance(before, list) and isinstance(value, list) and len(value) > len(before)
                and _encode(value[:len(before)]) == _encode(before)):
            delta["append"][key] = value[len(before):]
        else:
            delta["set"][key] = value
    return {part: changes for part, changes in delta.items() if changes}


def _apply(state: dict, delta: dict) -> dict:
    """``state`` changed by ``delta`` (in place; ``state`` must not share lists with anything else)."""
    state.update(delta.get("set", {}))
    for key, items in delta.get("append", {}).items():
        state[key].extend(items)
    for key in delta.get("unset", []):
        del state[key]
    return state


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


def map_strings(value: Any, f) -> Any:
    """``value`` (JSON: dicts, lists, scalars) with ``f`` applied to every string in it (not to keys)."""
    if isinstance(value, str):
        return f(value)
    if isinstance(value, dict):
        return {k: map_strings(x, f) for k, x in value.items()}
    if isinstance(value, list):
        return [map_strings(x, f) for x in value]
    return value


class Ledger:
    """The SQLite ledger of one run directory. Usable as a context manager."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / LEDGER_FILENAME
        existed = self.path.is_file() and self.path.stat().st_size > 0
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each write is
        # exactly one transaction (or part of an explicit transaction()).
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            problem = damage(self.path, self._conn) if existed else None
            if problem is None:
                self._conn.execute("PRAGMA synchronous=FULL")  # a committed stage survives power loss
                self._conn.executescript(_SCHEMA)
                self._add_missing_columns()
        except sqlite3.DatabaseError as exc:
            problem = str(exc)
        if problem is not None:
            self._conn.close()
            raise LedgerDamaged(damaged_message(self.path, problem))
        self._depth = 0
        self.run_id: int | None = None
        # (stage_run_id, state) of the last finished row, so finish_stage need not replay the ledger.
        # `_pending` is the one written by the open transaction: it becomes `_latest` on commit.
        self._latest: tuple[int, dict] | None = None
        self._pending: tuple[int, dict] | None = None

    def _add_missing_columns(self) -> None:
        # A ledger written before state deltas existed lacks their columns; its rows all hold full states.
        have = {row["name"] for row in self._conn.execute("PRAGMA table_info(stage_runs)")}
        # One written before steps' peak memory was recorded lacks memory_json (NULL: not measured).
        for column, kind in (("state_delta_json", "TEXT"), ("state_base_id", "INTEGER"), ("memory_json", "TEXT")):
            if column not in have:
                try:
                    self._conn.execute(f"ALTER TABLE stage_runs ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise

    def close(self) -> None:
        self._conn.close()

    # -- paths relative to the run dir ------------------------------------------

    def _prefixes(self) -> list[str]:
        forms = {str(self.run_dir), os.path.abspath(self.run_dir), os.path.realpath(self.run_dir)}
        return sorted((f.rstrip("/") for f in forms if f not in ("", ".")), key=len, reverse=True)

    def _relocatable(self, value: Any) -> Any:
        """``value`` (JSON) with every string that is a path under the run dir written as RUN_DIR_MARK/rest."""
        prefixes = self._prefixes()

        def relative(v: str) -> str:
            for prefix in prefixes:
                if v == prefix or v.startswith(prefix + "/"):
                    return RUN_DIR_MARK + v[len(prefix):]
            return v

        return map_strings(value, relative)

    def _located(self, value: Any) -> Any:
        """The inverse of _relocatable, under the run dir's path now (a ledger written before paths were
        relative holds absolute ones: they come back unchanged)."""
        here = str(self.run_dir)
        return map_strings(value, lambda v: here + v[len(RUN_DIR_MARK):]
                            if v == RUN_DIR_MARK or v.startswith(RUN_DIR_MARK + "/") else v)

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
            if self._pending is not None:  # the cached state never runs ahead of the database
                self._latest = self._pending
        except BaseException:
            if self._conn.in_transaction:  # also when COMMIT itself failed
                self._conn.execute("ROLLBACK")
            raise
        finally:
            self._depth, self._pending = 0, None

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

    def check_config(self, config: dict, allow_changed: bool = False,
                     new_key_defaults: dict | None = None) -> list[ConfigDifference]:
        """Compare ``config`` with the config of the latest run in this ledger.

        Raises ConfigChangedError listing every differing key, unless ``allow_changed``; then returns
        the differences (empty when none, or when there is no previous run). A key the stored config lacks
        whose value is its default in ``new_key_defaults`` (flat keys: a key a newer rlhf_ops added, left as
        it was) is no change: a run started before an upgrade resumes after it.
        """
        row = self._conn.execute("SELECT config_json FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if row is None or self.last_completed() is None:
            return []  # no step finished (e.g. the first attempt failed on bad input): nothing to be consistent with
        old, new = _resume_relevant(json.loads(row["config_json"])), _resume_relevant(config)
        differences = [
            ConfigDifference(key, old.get(key, _ABSENT), new.get(key, _ABSENT))
            for key in sorted(old.keys() | new.keys())
            if old.get(key, _ABSENT) != new.get(key, _ABSENT)
            and not (key not in old and key in (new_key_defaults or {}) and new[key] == new_key_defaults[key])
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
                     error: str | None = None, memory: dict | None = None) -> None:
        """Record how a stage ended and the loop state after it (stored as a delta from the last finished one);
        `memory`: its peak memory (rlhf_ops.memory.step_peak), kept beside its wall time, not among its
        metrics, which a resumed run reproduces and memory figures never exactly do."""
        if status not in STAGE_STATUSES:
            raise ValueError(f"unknown stage status {status!r}; expected one of {STAGE_STATUSES}")
        state = self._relocatable(json.loads(_encode(state)))  # our own copy, JSON types, paths relative
        with self.transaction():
            base = self._latest_state()
            if base is not None and base[0] >= stage_run_id:
                # Finishing an older (or the same) row after a newer one: store it whole so a delta's base
                # always has a smaller id, and refuse to change a state that later rows are stored relative to.
                if self._conn.execute("SELECT 1 FROM stage_runs WHERE state_base_id = ? LIMIT 1",
                                      (stage_run_id,)).fetchone():
                    raise ValueError(f"stage run {stage_run_id} was finished before and later states build on it")
                base = None
            full, delta, base_id = (_encode(state), None, None) if base is None else (
                None, _encode(_delta(base[1], state)), base[0])
            self._conn.execute("UPDATE stage_runs SET status = ?, ended_at = ?, wall_s = ?, error = ?, "
                               "state_json = ?, state_delta_json = ?, state_base_id = ?, memory_json = ? WHERE id = ?",
                               (status, _now(), wall_s, error, full, delta, base_id,
                                json.dumps(memory) if memory else None, stage_run_id))
            if status in ("done", "skipped"):
                self._cache(stage_run_id, state)

    def _cache(self, stage_run_id: int, state: dict) -> None:
        if self._depth:
            self._pending = (stage_run_id, state)  # kept only if the transaction commits
        else:
            self._latest = (stage_run_id, state)

    def _latest_state(self) -> tuple[int, dict] | None:
        """(id, state) of the last finished (done/skipped) row: cached, or rebuilt from the ledger."""
        row = self._conn.execute("SELECT id FROM stage_runs WHERE status IN ('done', 'skipped') "
                                 "ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        for cached in (self._pending, self._latest):
            if cached is not None and cached[0] == row["id"]:
                return cached
        latest = (row["id"], self._state_at(row["id"]))  # after reopening, or rows written by another Ledger
        self._cache(*latest)
        return latest

    def _state_at(self, stage_run_id: int) -> dict:
        """The state stored for one row: its nearest full state, then the deltas down to it."""
        deltas, row_id = [], stage_run_id
        while True:
            row = self._conn.execute("SELECT state_json, state_delta_json, state_base_id FROM stage_runs "
                                     "WHERE id = ?", (row_id,)).fetchone()
            if row is None or (row["state_json"] is None and row["state_delta_json"] is None):
                raise ValueError(f"the ledger cannot rebuild the state of stage run {stage_run_id}: "
                                 f"stage run {row_id} {'is missing' if row is None else 'stores no state'}")
            if row["state_delta_json"] is None:
                break
            deltas.append(json.loads(row["state_delta_json"]))
            row_id = row["state_base_id"]
        state = json.loads(row["state_json"])
        for delta in reversed(deltas):
            _apply(state, delta)
        return state

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
        """(iteration, node, state) of the last done/skipped stage; the state is the caller's to change."""
        latest = self._latest_state()
        if latest is None:
            return None
        row = self._conn.execute("SELECT iteration, node FROM stage_runs WHERE id = ?", (latest[0],)).fetchone()
        return row["iteration"], row["node"], self._located(json.loads(_encode(latest[1])))

    def stage_history(self, states: bool = False) -> list[dict]:
        """Every stage row, with its stored ``state`` (a full state, or None) and ``state_delta``.

        ``states=True``: ``state`` is the full loop state after every row that stored one (replayed, so it
        costs time and memory quadratic in the rows; the runner does not need it).
        """
        rows = self._rows("SELECT * FROM stage_runs ORDER BY id")
        if states:
            by_id: dict[int, dict] = {}
            for row in rows:  # a delta's base has a smaller id, so it was rebuilt already
                if row["state_delta"] is not None and row["state_base_id"] in by_id:
                    row["state"] = _apply(json.loads(_encode(by_id[row["state_base_id"]])), row["state_delta"])
                elif row["state_delta"] is not None:
                    row["state"] = self._state_at(row["id"])  # its base row is gone
                if row["state"] is not None:
                    by_id[row["id"]] = row["state"]
        for row in rows:
            row["state"], row["state_delta"] = self._located(row["state"]), self._located(row["state_delta"])
        return rows

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
                    (iteration, status, json.dumps(self._relocatable(json.loads(json.dumps(summary, default=str))),
                                                   sort_keys=True)))

    def iterations(self) -> list[dict]:
        rows = self._rows("SELECT * FROM iterations ORDER BY iteration")
        for row in rows:
            row["summary"] = self._located(row["summary"])
        return rows
