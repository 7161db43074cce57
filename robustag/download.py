"""Fetch a data set from GroupLens and verify it before anything lands in the data directory.

The archive is unpacked into a temporary folder, the tag-assignment file's sha256 (line ends
normalised) is checked, and only then are the files moved into place. Never called at import
or test time except with a local `file://` URL.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from robustag.datasets import DATASETS, file_sha256
from robustag.errors import RobustagError

ProgressFn = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


def download_dataset(
    name: str,
    data_dir: Path,
    sha256: str | None = None,
    url: str | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Download `name` into `data_dir/<folder>` and return the tag-assignment file's path."""
    if name not in DATASETS:
        raise RobustagError(f"unknown dataset {name!r}; downloadable: {', '.join(sorted(DATASETS))}")
    source = DATASETS[name]
    expected = (sha256 or source.sha256 or "").lower()
    if not expected:
        raise RobustagError(
            f"dataset {name!r} has no pinned checksum; pass --sha256 with the sha256 of "
            f"{source.filename} (CRLF line ends counted as LF) from a copy you trust"
        )
    url = url or source.url
    with tempfile.TemporaryDirectory(prefix="robustag-") as tmp:
        archive = Path(tmp) / "archive.zip"
        _fetch(url, archive, progress)
        if not zipfile.is_zipfile(archive):
            raise RobustagError(f"{url}: the server did not return a zip archive (an HTML error page?)")
        unpacked = Path(tmp) / "files"
        _unpack_flat(archive, unpacked)
        key_file = unpacked / source.filename
        if not key_file.is_file():
            raise RobustagError(f"{url}: the archive has no {source.filename}")
        actual = file_sha256(key_file, normalise_line_ends=True)
        if actual != expected:
            raise RobustagError(
                f"{url}: checksum mismatch for {source.filename}: expected {expected}, got {actual}; nothing was written"
            )
        target = Path(data_dir) / source.folder
        target.mkdir(parents=True, exist_ok=True)
        for file in unpacked.iterdir():
            shutil.move(str(file), target / file.name)
    return source.path(data_dir)


def _fetch(url: str, destination: Path, progress: ProgressFn | None) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
            total = response.headers.get("Content-Length")
            total = int(total) if total else None
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except OSError as error:  # URLError and HTTPError are OSErrors
        raise RobustagError(f"{url}: download failed: {error}") from error


def _unpack_flat(archive: Path, folder: Path) -> None:
    """Extract regular files by base name only: no folder from the archive reaches the disk."""
    folder.mkdir()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            name = Path(member.filename).name
            if member.is_dir() or not name or name.startswith("."):
                continue
            with zf.open(member) as src, open(folder / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
