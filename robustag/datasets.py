"""Raw tag-assignment files: the named data sets and the parser that reads them.

A data set is read into `TagAssignments`: one row per (user, item, tag) with a timestamp.
Entities keep their original labels (strings); they become dense integer ids later, in
`robustag.preprocess`, after the p-core filter.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robustag.errors import DataFormatError, RobustagError


@dataclass(frozen=True)
class DatasetSource:
    """Where a named data set lives under the data directory, how to parse it, and where to fetch it."""

    name: str
    folder: str
    filename: str
    separator: str
    has_header: bool | None  # None: detect from the first line
    encoding: str
    normalise_tags: bool
    url: str | None = None
    # sha256 of the tag-assignment file with CRLF line ends turned into LF: the GroupLens zips
    # and the copies in circulation differ only in line ends.
    sha256: str | None = None
    description: str = ""
    explicit_path: Path | None = None  # `tsv:PATH` names its file directly

    def path(self, data_dir: Path) -> Path:
        return self.explicit_path or Path(data_dir) / self.folder / self.filename


GROUPLENS = "https://files.grouplens.org/datasets"

DATASETS: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource(
            name="lastfm",
            folder="hetrec2011-lastfm-2k",
            filename="user_taggedartists-timestamps.dat",
            separator="\t",
            has_header=True,
            encoding="latin-1",
            normalise_tags=False,
            url=f"{GROUPLENS}/hetrec2011/hetrec2011-lastfm-2k.zip",
            sha256="8a583fc5505a11f9f76599daff83dff607298e761a244dff75bd933474ad6f1c",
            description="HetRec 2011 Last.fm 2K: users tag artists",
        ),
        DatasetSource(
            name="movielens",
            folder="hetrec2011-movielens-2k",
            filename="user_taggedmovies-timestamps.dat",
            separator="\t",
            has_header=True,
            encoding="latin-1",
            normalise_tags=False,
            url=f"{GROUPLENS}/hetrec2011/hetrec2011-movielens-2k-v2.zip",
            sha256="b464ac2ebb64a1e62ccc70419d1351800e7eefaa75a13ab55b4dca966ff8cb3b",
            description="HetRec 2011 MovieLens 2K: users tag movies",
        ),
        DatasetSource(
            name="delicious",
            folder="hetrec2011-delicious-2k",
            filename="user_taggedbookmarks-timestamps.dat",
            separator="\t",
            has_header=True,
            encoding="latin-1",
            normalise_tags=False,
            url=f"{GROUPLENS}/hetrec2011/hetrec2011-delicious-2k.zip",
            sha256=None,  # no verified copy was at hand: `data download` asks for --sha256
            description="HetRec 2011 Delicious 2K: users tag bookmarks",
        ),
        DatasetSource(
            name="ml10m",
            folder="ml-10m",
            filename="tags.dat",
            separator="::",
            has_header=False,
            encoding="utf-8",
            normalise_tags=True,
            url=f"{GROUPLENS}/movielens/ml-10m.zip",
            sha256="2ac9b3706900ce183af8085a167635128234253ee6b82664184e7f55a962b6ec",
            description="MovieLens 10M tags.dat: free-text tags, normalised (stripped, lower-cased)",
        ),
    )
}

TSV_PREFIX = "tsv:"
SYNTHETIC_PREFIX = "synthetic:"  # generated in memory: robustag.synthetic


def resolve_source(name: str) -> DatasetSource:
    """A named data set, `tsv:PATH` for any tab-separated user, item, tag[, timestamp] file,
    or `synthetic:users=...,items=...,tags=...,posts=...,seed=...` (generated, no file)."""
    if name.startswith(SYNTHETIC_PREFIX):
        return DatasetSource(name=name, folder="", filename="", separator="", has_header=None, encoding="utf-8",
                             normalise_tags=False, description="synthetic power-law data (robustag.synthetic)")
    if name.startswith(TSV_PREFIX):
        path = Path(name[len(TSV_PREFIX):]).expanduser()
        return DatasetSource(
            name=name,
            folder="",
            filename=path.name,
            explicit_path=path,
            separator="\t",
            has_header=None,
            encoding="utf-8",
            normalise_tags=False,
            description=f"tab-separated file {path}",
        )
    if name not in DATASETS:
        known = ", ".join(sorted(DATASETS)) + ", tsv:PATH, synthetic:users=...,posts=..."
        raise RobustagError(f"unknown dataset {name!r}; known: {known}")
    return DATASETS[name]


@dataclass
class TagAssignments:
    """Raw tag assignments: parallel arrays of entity labels and a numeric timestamp."""

    users: np.ndarray
    items: np.ndarray
    tags: np.ndarray
    timestamps: np.ndarray  # float64; the line number when the file has no timestamp column
    source: Path
    dropped_blank_tags: int = 0

    def __len__(self) -> int:
        return len(self.users)


def file_sha256(path: Path, normalise_line_ends: bool = False) -> str:
    data = Path(path).read_bytes()
    if normalise_line_ends:
        data = data.replace(b"\r\n", b"\n")
    return hashlib.sha256(data).hexdigest()


def load_assignments(source: DatasetSource, data_dir: Path) -> TagAssignments:
    """Parse a tag-assignment file; any bad line stops with its file and line number."""
    path = source.path(data_dir)
    if not path.is_file():
        hint = (
            f"; run `robustag data download {source.name}` or point the data directory at it (data_dir, "
            "--data-dir or $ROBUSTAG_DATA_DIR)"
            if source.url
            else ""
        )
        raise RobustagError(f"dataset {source.name!r}: file not found: {path}{hint}")
    lines = _read_lines(path, source.encoding)
    first_line_no, rows = _split_rows(path, lines, source)
    return _rows_to_assignments(path, first_line_no, rows, source)


def _read_lines(path: Path, encoding: str) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        # Free-text tag files in circulation mix UTF-8 and Latin-1; Latin-1 always decodes.
        text = raw.decode("latin-1")
    # split on "\n" only: str.splitlines would also split on \x85 and other Latin-1 code points.
    lines = text.split("\n")
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _detect_header(fields: list[str]) -> bool:
    if len(fields) == 4:
        return not _is_number(fields[3])
    return any(re.fullmatch(r"(user|item|tag)(_?id)?s?", f.strip().lower()) for f in fields)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split_rows(path: Path, lines: list[str], source: DatasetSource) -> tuple[int, list[list[str]]]:
    """Split lines into fields; returns the 1-based line number of the first data row."""
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataFormatError(f"{path}: the file is empty")
    rows = [line.split(source.separator) for line in lines]
    has_header = source.has_header if source.has_header is not None else _detect_header(rows[0])
    first = 1 if has_header else 0
    rows = rows[first:]
    expected = (4,) if source.has_header is not None else (3, 4)
    width = len(rows[0]) if rows else 4
    for offset, fields in enumerate(rows):
        if len(fields) != width or width not in expected:
            want = " or ".join(map(str, expected)) if width not in expected else str(width)
            raise DataFormatError(
                f"{path}, line {first + offset + 1}: expected {want} columns separated by "
                f"{source.separator!r} (user, item, tag[, timestamp]), found {len(fields)}"
            )
    if not rows:
        raise DataFormatError(f"{path}: no data rows after the header")
    return first + 1, rows


def _rows_to_assignments(
    path: Path, first_line_no: int, rows: list[list[str]], source: DatasetSource
) -> TagAssignments:
    columns = list(zip(*rows))
    users, items, tags = (np.array(c, dtype=object) for c in columns[:3])
    keep = np.ones(len(rows), dtype=bool)
    if source.normalise_tags:
        # Free-text tags differ in case and spacing; a tag that is only whitespace (ml-10m has
        # one, a lone no-break space) carries no information and is dropped, not an error.
        tags = np.array([" ".join(t.lower().split()) for t in tags], dtype=object)
        keep = tags != ""
    for name, column in (("user", users), ("item", items), ("tag", tags)):
        blank = np.flatnonzero(keep & np.array([not value.strip() for value in column]))
        if len(blank):
            raise DataFormatError(f"{path}, line {first_line_no + blank[0]}: empty {name} field")
    if len(columns) == 4:
        timestamps = _parse_numbers(path, first_line_no, columns[3], "timestamp")
    else:
        timestamps = np.arange(len(rows), dtype=np.float64)  # no timestamps: file order is time
    return TagAssignments(
        users=users[keep].astype(str),
        items=items[keep].astype(str),
        tags=tags[keep].astype(str),
        timestamps=timestamps[keep],
        source=path,
        dropped_blank_tags=int((~keep).sum()),
    )


def _parse_numbers(path: Path, first_line_no: int, column: tuple[str, ...], what: str) -> np.ndarray:
    try:
        return np.array(column, dtype=np.float64)
    except ValueError:
        for offset, text in enumerate(column):
            if not _is_number(text):
                raise DataFormatError(
                    f"{path}, line {first_line_no + offset}: {what} {text!r} is not a number"
                ) from None
        raise
