"""Where data and caches live: an explicit option wins, then the environment, then a default."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "ROBUSTAG_DATA_DIR"
CACHE_DIR_ENV = "ROBUSTAG_CACHE_DIR"


def data_dir(option: str | Path | None = None) -> Path:
    """The data directory: `--data-dir`, else $ROBUSTAG_DATA_DIR, else ./data; a relative one is
    taken from the directory it is given in (made absolute now, so a later change of directory,
    or a worker started elsewhere, still finds it)."""
    chosen = option or os.environ.get(DATA_DIR_ENV) or "data"
    return Path(chosen).expanduser().absolute()


def cache_dir() -> Path:
    """Processed splits are cached here; the data directory itself may be read-only."""
    chosen = os.environ.get(CACHE_DIR_ENV)
    if chosen:
        return Path(chosen).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robustag"
