"""A run's results as one portable file, so that reports, claims and every statistic regenerate
from a fresh clone with no retraining (`robustag export RUN FILE.zip`, `robustag import FILE.zip
RUN`, `Run.from_archive`).

The archive is a zip of plain parts, each readable without robustag:

- `cells.csv`, `cell_specs.csv`, `checks.csv`: the results database's tables as stored (a cell's
  configuration, metrics and provenance are JSON text in their columns);
- `histories.csv`: unit, epoch and the epoch's record (JSON);
- `meta.json`: the run's settings (its specs, reference defense, each test post's item);
- `post_metrics.npz`: the per-post values in long form, `cell` (index into `cells`, int32),
  `metric` (index into `metrics`, int16), `post` (int32) and `value` (float64, exact), with the
  string arrays `cells` and `metrics` they index (NumPy's compressed `.npz`).

`--metrics ndcg@3,f1@3` keeps only the per-post values those metrics need (a report tests
NDCG@3 and F1@3 and takes P@3 for broken@3), which makes a large study's archive a few MB.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from robustag.errors import RobustagError
from robustag.store import DB_NAME, ResultStore

TABLES = ("cells", "cell_specs", "checks")
FORMAT = "robustag-run-archive-1"


def export_run(folder: str | Path, path: str | Path, metrics: list[str] | None = None) -> Path:
    """Write the run in `folder` to the archive `path` (per-post values of `metrics` only, when
    given); returns the path."""
    path = Path(path)
    if path.suffix != ".zip":
        raise RobustagError(f"archive {path}: expected a .zip file name")
    store = ResultStore.existing(folder)
    try:
        parts = {f"{table}.csv": _table(store, table).to_csv(index=False).encode() for table in TABLES}
        parts["histories.csv"] = _table(store, "histories").to_csv(index=False).encode()
        meta = dict(store.connection.execute("SELECT key, value FROM meta").fetchall())
        parts["meta.json"] = json.dumps({"format": FORMAT, **{k: json.loads(v) for k, v in meta.items()}}).encode()
        parts["post_metrics.npz"] = _post_metrics(store, metrics)
    finally:
        store.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    try:
        with zipfile.ZipFile(staging, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in parts.items():
                archive.writestr(name, data)
        staging.replace(path)
    except OSError as error:
        raise RobustagError(f"archive {path}: could not be written ({error.strerror or error})") from error
    finally:
        staging.unlink(missing_ok=True)
    return path


def import_run(path: str | Path, folder: str | Path) -> Path:
    """Rebuild a run folder (its results database) from an archive; an existing database is
    never written over. Returns the folder."""
    path, folder = Path(path), Path(folder)
    if (folder / DB_NAME).exists():
        raise RobustagError(f"run folder {folder}: already holds {DB_NAME}; import into a new folder")
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise RobustagError(f"archive {path}: not a readable zip ({error})") from None
    with archive:
        meta = json.loads(archive.read("meta.json"))
        if meta.pop("format", None) != FORMAT:
            raise RobustagError(f"archive {path}: not a robustag run archive ({FORMAT})")
        frames = {name: pd.read_csv(archive.open(f"{name}.csv"), dtype=object, keep_default_na=False, na_values=[""])
                  for name in (*TABLES, "histories")}
        values = np.load(io.BytesIO(archive.read("post_metrics.npz")), allow_pickle=False)
        store = ResultStore(folder)
    try:
        with store.transaction() as db:
            for name, frame in frames.items():
                _insert(db, name, frame)
            long = zip(values["cells"][values["cell"]].tolist(), values["metrics"][values["metric"]].tolist(),
                       values["post"].tolist(), values["value"].tolist())
            db.executemany("INSERT INTO post_metrics VALUES (?, ?, ?, ?)", long)
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", ((k, json.dumps(v)) for k, v in meta.items()))
    finally:
        store.close()
    return folder


def _table(store: ResultStore, name: str) -> pd.DataFrame:
    return pd.read_sql_query(f"SELECT * FROM {name} ORDER BY rowid", store.connection)


def _post_metrics(store: ResultStore, metrics: list[str] | None) -> bytes:
    query = "SELECT cell, metric, post, value FROM post_metrics"
    if metrics:
        query += f" WHERE metric IN ({','.join('?' * len(metrics))})"
    long = pd.read_sql_query(query, store.connection, params=list(metrics or []))
    cells, cell = np.unique(long["cell"].to_numpy(dtype=str), return_inverse=True)
    names, metric = np.unique(long["metric"].to_numpy(dtype=str), return_inverse=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, cells=cells, metrics=names, cell=cell.astype(np.int32), metric=metric.astype(np.int16),
                        post=long["post"].to_numpy(np.int32), value=long["value"].to_numpy(np.float64))
    return buffer.getvalue()


def _insert(db, name: str, frame: pd.DataFrame) -> None:
    """Rows as the archive holds them (text, as SQLite stored them: typed columns convert)."""
    if frame.empty:
        return
    columns = ", ".join(f'"{c}"' for c in frame.columns)
    rows = (tuple(None if pd.isna(v) else v for v in row) for row in frame.itertuples(index=False))
    db.executemany(f"INSERT OR REPLACE INTO {name} ({columns}) VALUES ({', '.join('?' * len(frame.columns))})", rows)
