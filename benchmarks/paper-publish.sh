#!/bin/bash
# Publish a finished paper rerun (benchmarks/paper-rerun.sh) into reports/paper/: its report
# (tables, plots, report.md and .html), the paper's claims tested, the earlier report's marks
# set beside it, and the run's per-post values (paper-run.zip), from which a fresh clone
# regenerates all of them with no retraining (`robustag import`, then this script's report and
# claims commands on the imported folder). README.md, the earlier runs' folders
# (earlier-*/) and the self-paced admission traces (selfpaced-noise-*.json, made by hand, item 6 of the
# README) are not the report's and stay.
#     ROBUSTAG_DATA_DIR=../shared/data bash benchmarks/paper-publish.sh [RUN]   (default runs/paper)
set -euo pipefail
RUN=${1:-runs/paper}
OUT=reports/paper
SPECS=paper-main,paper-tag-replacement,paper-ablation,paper-worst-case-pitf,paper-attack-types,paper-sensitivity,paper-dims,paper-iterations
cd "$(dirname "$0")/.."
robustag report "$RUN" --specs "$SPECS"
find "$OUT" -maxdepth 1 -type f ! -name README.md ! -name 'selfpaced-noise-*.json' -delete
rm -rf "$OUT/plots" "$OUT/rerun"  # rerun/: the interim report of the specs complete first, now in the whole
cp -r "$RUN/report/." "$OUT/"
robustag claims "$RUN" benchmarks/paper-claims.toml --csv "$OUT/paper-claims.csv"
python benchmarks/earlier_marks.py --before-rev a1c470a --after "$OUT" --out "$OUT/earlier-marks.csv"
bash benchmarks/paper-checkpoint.sh "$RUN" "$OUT/paper-run.zip"  # the per-post values the report reads
