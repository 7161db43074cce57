#!/usr/bin/env bash
# Every GPU measurement of robustag in one short script, for a lent GPU machine (device time is
# scarce). Run from anywhere with the data sets under $ROBUSTAG_DATA_DIR and robustag
# installed; every figure goes to $OUT (default: reports/benchmarks/gpu).
set -uo pipefail
OUT="$(realpath -m "${OUT:-reports/benchmarks/gpu}")"
mkdir -p "$OUT"
cd "$(dirname "$0")"
step() { echo "== $*"; local t=$SECONDS; "$@"; echo "== exit $? after $((SECONDS - t)) s"; }
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, pandas; print('torch', torch.__version__, 'pandas', pandas.__version__)"
  step python3 sync_check.py --dataset lastfm --out "$OUT/sync-lastfm-gpu.json"
  # eager, compiled and stacked (5, 15 models) against the plain loop, side by side
  step python3 plain_loop.py --dataset lastfm --out "$OUT/plain-loop-lastfm-gpu.json"
  step python3 stacked_batch.py --dataset lastfm --allocator --out "$OUT/stacked-batch-lastfm-gpu.json"
  # the default bench stacks 8 models per GPU; --stack 1 is the solo baseline
  step python3 -m robustag bench default.toml --device cuda --out /tmp/gpu-default --no-report
  step python3 -m robustag bench default.toml --device cuda --stack 1 --per-gpu 4 --out /tmp/gpu-default-solo --no-report
  step python3 -m robustag results /tmp/gpu-default --csv "$OUT/default-gpu-cells.csv"
  step python3 scaling.py --device cuda --out "$OUT/scaling-gpu.json"
  step python3 perf.py --dataset lastfm --out "$OUT/perf-lastfm-gpu.json"
  # auto's cost per 1,000 posts on the GPU beside the verifier's (numpy on the host: the metric
  # model alone, the verifier's CPU figures for FM and PITF are in verify-lastfm-cpu.json)
  step python3 verify.py --models metric --eps 0.1 --device cuda --out "$OUT/verify-lastfm-gpu.json"
} 2>&1 | tee "$OUT/log.txt"
