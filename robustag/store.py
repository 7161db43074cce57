"""The results database: one SQLite file per run folder, every write a transaction.

- `cells`: one row per cell (a trained model evaluated clean or under one attack), with its
  full config as JSON, config hash, status, timings, device, library versions and git revision;
- `cell_specs`: which named specs a cell belongs to (specs can share cells);
- `post_metrics`: every cell's per-post metric values, in long format (cell, metric, post, value);
- `histories`: the per-epoch training record of each trained model (unit);
- `checks`: the sanity checks of an evasion cell's attack (`robustag.checks`), where it ran them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from robustag.errors import RobustagError
from robustag.plugins import spec_values

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second bench on one folder is not stopped
    fcntl = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, unit TEXT NOT NULL, dataset TEXT, model TEXT, params TEXT, seed INTEGER,
    defense TEXT, defense_name TEXT, attack TEXT, attack_name TEXT, surface TEXT, eps REAL,
    config TEXT, status TEXT NOT NULL DEFAULT 'pending', error TEXT, metrics TEXT, extra TEXT,
    seconds REAL, train_seconds REAL, device TEXT, versions TEXT, git TEXT, finished TEXT,
    attack_params TEXT, defense_params TEXT, strength REAL, strength_name TEXT
);
CREATE TABLE IF NOT EXISTS cell_specs (cell TEXT, spec TEXT, PRIMARY KEY (cell, spec));
CREATE TABLE IF NOT EXISTS post_metrics (
    cell TEXT, metric TEXT, post INTEGER, value REAL, PRIMARY KEY (cell, metric, post)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS histories (unit TEXT, epoch INTEGER, record TEXT, PRIMARY KEY (unit, epoch));
CREATE TABLE IF NOT EXISTS checks (cell TEXT, name TEXT, passed INTEGER, detail TEXT, PRIMARY KEY (cell, name));
CREATE INDEX IF NOT EXISTS cells_unit ON cells(unit);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

PARSED_COLUMNS = {"attack_params": "TEXT", "defense_params": "TEXT", "strength": "REAL", "strength_name": "TEXT"}
# The strength parameter of the attacks that databases from before the strength column knew.
LEGACY_STRENGTHS = {"tag-replace": "rate", "tag-promote": "fake_users"}


def parsed_columns(attack: str | None, defense: str, strength_name: str | None) -> dict:
    """A cell's parsed columns, from its canonical spec strings: the planner's, and (once) the
    upgrade's for cells stored before the columns existed."""
    attack_params = spec_values(attack) if attack else None
    return {"attack_params": json.dumps(attack_params) if attack_params is not None else None,
            "defense_params": json.dumps(spec_values(defense)),
            "strength": (attack_params or {}).get(strength_name), "strength_name": strength_name if attack else None}


def _legacy_strength(attack_name: str | None, eps: float | None) -> str | None:
    return "eps" if eps is not None else LEGACY_STRENGTHS.get(attack_name)


@dataclass(frozen=True)
class CellRow:
    """A planned cell as the `cells` table stores it before it runs: its identity and
    configuration; `CellRow.planned` derives the parsed and name columns from the spec strings."""

    key: str
    unit: str
    dataset: str
    model: str
    params: str  # JSON: the model configuration but seed and model name
    seed: int
    defense: str
    defense_name: str
    attack: str | None
    attack_name: str | None
    surface: str
    eps: float | None
    config: str  # JSON: everything that determines the cell
    attack_params: str | None
    defense_params: str
    strength: float | None
    strength_name: str | None

    @classmethod
    def planned(cls, key: str, unit: str, dataset: str, model: str, params: dict, seed: int, defense: str,
                attack: str | None, surface: str, eps: float | None, strength_name: str | None, config: dict) -> "CellRow":
        return cls(key=key, unit=unit, dataset=dataset, model=model, params=json.dumps(params, sort_keys=True), seed=seed,
                   defense=defense, defense_name=defense.split(":")[0], attack=attack,
                   attack_name=attack.split(":")[0] if attack else None, surface=surface, eps=eps,
                   config=json.dumps(config, sort_keys=True), **parsed_columns(attack, defense, strength_name))


@dataclass
class CellResult:
    """What evaluating one cell gave: `done` with its metrics (means), per-post values, extra
    figures and sanity checks, or `failed` with the traceback."""

    key: str
    status: str  # "done" or "failed"
    seconds: float
    metrics: dict[str, float] | None = None
    per_post: dict[str, np.ndarray] | None = None
    extra: dict = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)
    train_seconds: float | None = None
    error: str | None = None


@dataclass
class UnitResult:
    """One trained model's attempt, as a worker hands it back: its cells' results, its training
    history, the warnings it raised, whether it trained compiled, and the model it trained (a
    checkpoint's bytes, for the parent to cache: workers never write the run folder, so they
    need no file system shared with it)."""

    unit: str
    cells: list[CellResult]
    history: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    compiled: bool = False
    checkpoint: bytes | None = None

    @property
    def failed(self) -> int:
        return sum(cell.status == "failed" for cell in self.cells)


PLANNED_COLUMNS = [f.name for f in dataclasses.fields(CellRow)]


DB_NAME = "results.sqlite"
STATUSES = ("pending", "done", "failed")
LOCK_NAME = ".bench.lock"


def _named_errors(method):
    """A database that cannot be read is named, and left as it is (never rebuilt over)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as error:
            cause = error.__cause__ if isinstance(error, pd.errors.DatabaseError) else error
            if isinstance(cause, sqlite3.ProgrammingError):
                raise  # a query built wrongly: a bug to report with its traceback, not a damaged database
            raise RobustagError(f"{self.path}: {_database_problem(str(error))}") from error
    return wrapper


# What SQLite says when the database is fine but the place it lives is not: no restore is due.
_PLACE_PROBLEMS = {
    "readonly": "cannot be written: the run folder or its database is read-only",
    "disk is full": "cannot be written: the disk is full",
    "disk i/o": "cannot be written: the disk refused the write (full, a file-size limit, or failing)",
    "unable to open": "cannot be opened: the run folder is not readable or writable here",
}


def _database_problem(message: str) -> str:
    """What is wrong, from SQLite's message: the place (read-only, full), or the file itself."""
    for needle, problem in _PLACE_PROBLEMS.items():
        if needle in message.lower():
            return f"{problem} ({message}); the database is unchanged, and nothing stored was lost"
    return (f"not a readable results database ({message}); it was left untouched: restore it or choose another "
            "run folder")


class ResultStore:
    """`ResultStore(folder)` opens or creates a run's database; `ResultStore.existing(folder)`
    opens one that a bench wrote, for reading (reports, listings)."""

    def __init__(self, folder: Path, create: bool = True):
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        if self.folder.exists() and not self.folder.is_dir():
            raise RobustagError(f"run folder {self.folder}: exists and is not a folder")
        if not create and not self.path.is_file():
            raise RobustagError(f"{self.folder}: no {DB_NAME} here; is it a folder written by robustag bench?")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(self.path, timeout=60)
        except (OSError, sqlite3.OperationalError) as error:
            raise RobustagError(f"run folder {self.folder}: cannot be written ({error})") from error
        self._open(create)

    @classmethod
    def existing(cls, folder: Path) -> "ResultStore":
        return cls(folder, create=False)

    @_named_errors
    def _open(self, create: bool) -> None:
        tables = {name for (name,) in self.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not create and "cells" not in tables:
            self.connection.close()
            raise RobustagError(f"{self.path}: holds no robustag results (empty or another kind of database)")
        self.connection.execute("PRAGMA quick_check").fetchall()  # a damaged file fails here, before any work
        self.connection.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        self.connection.executescript(SCHEMA)
        self._upgrade()

    def _upgrade(self) -> None:
        """Bring a database written by an older robustag up to this schema: the parsed plugin
        parameters and the attack's strength became columns (parsed once, from the spec
        strings each cell kept); nothing else is touched."""
        columns = {row[1] for row in self.connection.execute("PRAGMA table_info(cells)")}
        added = [name for name in PARSED_COLUMNS if name not in columns]
        if not added:
            return
        with self.transaction() as db:
            for name in added:
                db.execute(f"ALTER TABLE cells ADD COLUMN {name} {PARSED_COLUMNS[name]}")
            rows = db.execute("SELECT key, attack, attack_name, defense, eps FROM cells").fetchall()
            db.executemany("UPDATE cells SET attack_params=:attack_params, defense_params=:defense_params,"
                           " strength=:strength, strength_name=:strength_name WHERE key=:key",
                           [{"key": key, **parsed_columns(attack, defense, _legacy_strength(name, eps))}
                            for key, attack, name, defense, eps in rows])

    @contextmanager
    def bench_lock(self):
        """Held while a bench runs in this folder: a second bench on it stops at once with a
        clear message (two would run every cell twice). The OS drops the lock if the holder dies."""
        if fcntl is None:
            yield
            return
        with open(self.folder / LOCK_NAME, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RobustagError(f"run folder {self.folder}: another robustag bench ({holder}) is running in it; "
                                    "wait for it to finish, or choose another --out") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def close(self) -> None:
        self.connection.close()

    @contextmanager
    def transaction(self):
        with self.connection:  # commits on success, rolls back on error
            yield self.connection

    # -- planning -----------------------------------------------------------------------------
    @_named_errors
    def add_cells(self, rows: Iterable[CellRow], spec_name: str) -> None:
        """Register planned cells; cells already known keep their status and results."""
        insert = (f"INSERT OR IGNORE INTO cells ({', '.join(PLANNED_COLUMNS)})"
                  f" VALUES ({', '.join(':' + name for name in PLANNED_COLUMNS)})")
        with self.transaction() as db:
            for row in rows:
                db.execute(insert, dataclasses.asdict(row))
                db.execute("INSERT OR IGNORE INTO cell_specs VALUES (?, ?)", (row.key, spec_name))

    @_named_errors
    def set_meta(self, key: str, value) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @_named_errors
    def meta(self, key: str, default=None):
        row = self.connection.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    @_named_errors
    def statuses(self, keys: list[str]) -> dict[str, str]:
        found = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            query = f"SELECT key, status FROM cells WHERE key IN ({','.join('?' * len(chunk))})"
            found.update(dict(self.connection.execute(query, chunk).fetchall()))
        return found

    # -- results ------------------------------------------------------------------------------
    @_named_errors
    def write_unit(self, result: UnitResult, run_info: dict) -> None:
        """All of one trained model's cells, their per-post values and its history, atomically.
        A cell already done is never rewritten (a failed retry must not erase a result), and a
        unit whose attempt produced no history keeps the one it has."""
        with self.transaction() as db:
            for cell in result.cells:
                updated = db.execute(
                    "UPDATE cells SET status=?, error=?, metrics=?, extra=?, seconds=?, train_seconds=?, device=?,"
                    " versions=?, git=?, finished=datetime('now') WHERE key=? AND status != 'done'",
                    (cell.status, cell.error, json.dumps(cell.metrics), json.dumps(cell.extra), cell.seconds,
                     cell.train_seconds, run_info["device"], json.dumps(run_info["versions"]), run_info["git"], cell.key),
                ).rowcount
                if not updated:
                    continue
                db.execute("DELETE FROM post_metrics WHERE cell=?", (cell.key,))
                db.execute("DELETE FROM checks WHERE cell=?", (cell.key,))
                db.executemany("INSERT INTO checks VALUES (?, ?, ?, ?)",
                               ((cell.key, c["check"], int(c["passed"]), c["detail"]) for c in cell.checks))
                db.executemany(
                    "INSERT INTO post_metrics VALUES (?, ?, ?, ?)",
                    ((cell.key, metric, post, float(value))
                     for metric, values in (cell.per_post or {}).items() for post, value in enumerate(values)),
                )
            if not result.history:
                return
            db.execute("DELETE FROM histories WHERE unit=?", (result.unit,))
            db.executemany(
                "INSERT INTO histories VALUES (?, ?, ?)",
                ((result.unit, record.get("epoch", k + 1), json.dumps(record)) for k, record in enumerate(result.history)),
            )

    @_named_errors
    def cells(self, spec: str | None = None, status: str | None = None) -> pd.DataFrame:
        query = "SELECT c.* FROM cells c"
        args: list = []
        if spec:
            query += " JOIN cell_specs s ON s.cell = c.key AND s.spec = ?"
            args.append(spec)
        if status:
            query += (" AND" if spec else " WHERE") + " c.status = ?"
            args.append(status)
        frame = pd.read_sql_query(query + " ORDER BY c.rowid", self.connection, params=args)
        return frame

    @_named_errors
    def specs(self) -> list[str]:
        return [r[0] for r in self.connection.execute("SELECT DISTINCT spec FROM cell_specs ORDER BY rowid")]

    @_named_errors
    def per_post_frame(self, cell_keys: list[str], metric: str) -> pd.DataFrame:
        """Per-post values of one metric: a row per post, a column per cell, in one query per 500 cells."""
        parts = []
        for start in range(0, len(cell_keys), 500):
            chunk = cell_keys[start : start + 500]
            parts.append(pd.read_sql_query(
                f"SELECT cell, post, value FROM post_metrics WHERE metric=? AND cell IN ({','.join('?' * len(chunk))})",
                self.connection, params=[metric, *chunk]))
        long = pd.concat(parts) if parts else pd.DataFrame(columns=["cell", "post", "value"])
        return long.pivot(index="post", columns="cell", values="value").reindex(columns=cell_keys)

    def per_post(self, cell_keys: list[str], metric: str) -> dict[str, np.ndarray]:
        """Per-post values of one metric for each cell, posts in order."""
        frame = self.per_post_frame(cell_keys, metric)
        return {key: frame[key].to_numpy() for key in cell_keys}

    @_named_errors
    def checks(self) -> pd.DataFrame:
        """Every stored sanity check: cell, check, passed, detail."""
        frame = pd.read_sql_query("SELECT cell, name AS 'check', passed, detail FROM checks ORDER BY rowid", self.connection)
        return frame.assign(passed=frame["passed"].astype(bool))

    @_named_errors
    def histories(self) -> pd.DataFrame:
        rows = self.connection.execute("SELECT unit, epoch, record FROM histories ORDER BY unit, epoch").fetchall()
        return pd.DataFrame([{"unit": u, **json.loads(r)} for u, _, r in rows])

    @_named_errors
    def prune(self, planned: dict[str, list[CellRow]]) -> int:
        """Forget the cells of these specs that the current plan no longer has (a spec changed),
        with their per-post values; cells still planned by another spec are kept."""
        keep = {row.key for rows in planned.values() for row in rows}
        with self.transaction() as db:
            names = list(planned)
            stale = [key for (key,) in db.execute(
                f"SELECT DISTINCT cell FROM cell_specs WHERE spec IN ({','.join('?' * len(names))})", names)
                if key not in keep]
            marks = ",".join("?" * len(names))
            for key in stale:  # only these specs' claim on the cell goes; another spec's keeps it
                db.execute(f"DELETE FROM cell_specs WHERE cell=? AND spec IN ({marks})", (key, *names))
                if db.execute("SELECT 1 FROM cell_specs WHERE cell=?", (key,)).fetchone() is None:
                    db.execute("DELETE FROM cells WHERE key=?", (key,))
                    db.execute("DELETE FROM post_metrics WHERE cell=?", (key,))
                    db.execute("DELETE FROM checks WHERE cell=?", (key,))
            db.execute("DELETE FROM histories WHERE unit NOT IN (SELECT unit FROM cells)")
            return len(stale)

    @_named_errors
    def mark_failed_pending(self, keys: list[str]) -> int:
        """`--retry-failed`: these cells, where they failed, become pending again; their error text
        stays until a rerun replaces it (a retry that never runs erases nothing)."""
        with self.transaction() as db:
            return sum(db.execute("UPDATE cells SET status='pending' WHERE key=? AND status='failed'", (key,)).rowcount
                       for key in keys)
