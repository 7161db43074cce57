#!/bin/bash
# The paper reproduction, every spec on both data sets at 5 seeds, into one resumable run folder
# (a killed run resumes where it stopped; rerunning skips done cells). Priority order: the
# ablation with the exact worst case (issue 25) and PITF's exact worst case (paper-main's PITF
# models, trained here first), then the other specs the paper's claims test (paper-main,
# paper-tag-replacement) on both data sets, then the secondary specs, MovieLens first.
#     ROBUSTAG_DATA_DIR=../shared/data bash benchmarks/paper-rerun.sh [RUN]   (default runs/paper)
# To keep working on robustag while it runs, run it from a separate, non-editable install of one
# commit (pip install --no-deps PATH-TO-A-CHECKOUT into its own venv), so that edits in the working
# tree never reach a bench already running; WORKERS sets the worker processes (default 1).
# A rerun outlives one machine by its checkpoint: benchmarks/paper-checkpoint.sh saves the run as
# reports/paper/rerun-checkpoint.zip (commit it), and on a machine without the run folder this
# script starts from it, skipping the cells it holds done; once published, from the whole run's
# reports/paper/paper-run.zip (then only the cells a changed spec adds are run).
set -u
RUN=${1:-runs/paper}
ROBUSTAG=${ROBUSTAG:-robustag}
cd "$(dirname "$0")/.."
CHECKPOINT=reports/paper/rerun-checkpoint.zip
[ -e "$CHECKPOINT" ] || CHECKPOINT=reports/paper/paper-run.zip
if [ ! -e "$RUN/results.sqlite" ] && [ -e "$CHECKPOINT" ]; then
    "$ROBUSTAG" import "$CHECKPOINT" "$RUN"
fi
bench() {  # SPEC [DATASET] [extra options]
    echo "== $(date +%T) $*"
    nice -n 10 "$ROBUSTAG" bench "benchmarks/$1.toml" ${2:+--datasets "$2"} --workers "${WORKERS:-1}" --no-report --out "$RUN" "${@:3}"
}
bench paper-ablation "" --prune
bench paper-worst-case-pitf
for spec in paper-main paper-tag-replacement; do
    bench "$spec" movielens
    bench "$spec" lastfm
done
for dataset in movielens lastfm; do
    for spec in paper-attack-types paper-iterations paper-sensitivity paper-dims; do
        bench "$spec" "$dataset"
    done
done
echo "== $(date +%T) every spec done: publish it with bash benchmarks/paper-publish.sh $RUN"
