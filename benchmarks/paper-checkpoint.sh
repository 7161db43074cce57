#!/bin/bash
# Save a running (or stopped) paper rerun as a committed checkpoint, so that a rerun longer than one
# machine's life resumes on the next machine: paper-rerun.sh imports it into an empty run folder
# and skips its done cells. The database is copied with SQLite's online backup (consistent while
# the bench writes), then exported with the per-post values the report reads.
# Trained models are not kept: a cell left pending retrains its model.
# paper-publish.sh saves the finished run with it too, as reports/paper/paper-run.zip.
#     bash benchmarks/paper-checkpoint.sh [RUN [ARCHIVE]]   (default runs/paper, reports/paper/rerun-checkpoint.zip)
set -euo pipefail
RUN=${1:-runs/paper}
ARCHIVE=${2:-reports/paper/rerun-checkpoint.zip}
cd "$(dirname "$0")/.."
SNAPSHOT=$(mktemp -d)
trap 'rm -rf "$SNAPSHOT"' EXIT
python - "$RUN/results.sqlite" "$SNAPSHOT/results.sqlite" <<'PY'
import sqlite3, sys
source = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
with sqlite3.connect(sys.argv[2]) as copy:
    source.backup(copy)
PY
robustag export "$SNAPSHOT" "$ARCHIVE" --metrics ndcg@3,f1@3,p@3
