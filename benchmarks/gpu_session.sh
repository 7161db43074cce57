#!/usr/bin/env bash
# Every GPU measurement of robustag in one call, for a lent GPU machine (device time is scarce:
# one command may run 10 minutes, so each step has its own time limit and the whole stays under
# about 9). Run from anywhere with the data sets under $ROBUSTAG_DATA_DIR and robustag installed;
# every figure goes to $OUT (default: reports/benchmarks/gpu). A step cut by its limit says so
# and the next one runs; the paper bench is resumable, so a second call continues it.
set -uo pipefail
OUT="$(realpath -m "${OUT:-reports/benchmarks/gpu}")"
PAPER_SECONDS=${PAPER_SECONDS:-120}
mkdir -p "$OUT"
cd "$(dirname "$0")"
step() {  # SECONDS COMMAND...: run it for at most SECONDS
    local limit=$1 t=$SECONDS
    shift
    echo "== $*"
    timeout --signal=INT "$limit" "$@"
    local code=$?
    echo "== exit $code after $((SECONDS - t)) s$([ $code -eq 124 ] && echo " (cut at its limit of $limit s)")"
}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, pandas; print('torch', torch.__version__, 'pandas', pandas.__version__)"
  step 30 python3 sync_check.py --dataset lastfm --out "$OUT/sync-lastfm-gpu.json"
  # the stack size measured, not assumed: seconds per model-epoch for 1..32 models in one step
  step 90 python3 stacked_batch.py --dataset lastfm --allocator --members 1,4,8,16,32 --out "$OUT/stacked-batch-lastfm-gpu.json"
  STACK=$(python3 -c "
import json, sys
rows = json.load(open(sys.argv[1]))['rows']
print(min(rows, key=lambda r: r['per_model_s'])['members'])" "$OUT/stacked-batch-lastfm-gpu.json" 2>/dev/null || echo 8)
  echo "== stack size: $STACK models per step"
  # the whole paper reproduction (benchmarks/paper.toml) on the GPU at that stack, 2 stacks per
  # GPU, for PAPER_SECONDS; its cells per minute say what the rest would take
  step "$PAPER_SECONDS" python3 -m robustag bench paper.toml --device cuda --stack "$STACK" --per-gpu 2 \
      --out /tmp/gpu-paper --no-report
  step 60 python3 -m robustag results /tmp/gpu-paper --csv "$OUT/paper-gpu-cells.csv"
  python3 -c "
import pandas as pd, sys
cells = pd.read_csv(sys.argv[1])
done = cells[cells['status'] == 'done']
print(f'paper.toml on the GPU: {len(done)} of {len(cells)} cells done in $PAPER_SECONDS s of this call '
      f'(stack $STACK, 2 per GPU): about {len(cells) / max(len(done), 1) * $PAPER_SECONDS / 60:.0f} min for all')" \
      "$OUT/paper-gpu-cells.csv"
  step 60 python3 plain_loop.py --dataset lastfm --out "$OUT/plain-loop-lastfm-gpu.json"
  # the adversary's steps compiled as one graph against eager steps, per epoch, on the GPU
  step 50 python3 defenses.py --datasets lastfm --epochs 3 --defenses plain,aml,spaml-s --both-ascents --device cuda \
      --out "$OUT/defenses-lastfm-fused-ascent-gpu.json"
  step 80 python3 scaling.py --device cuda --out "$OUT/scaling-gpu.json"
  # auto's cost per 1,000 posts on the GPU beside the verifier's (numpy on the host: the metric
  # model alone, the verifier's CPU figures for FM and PITF are in verify-lastfm-cpu.json)
  step 60 python3 verify.py --models metric --eps 0.1 --device cuda --out "$OUT/verify-lastfm-gpu.json"
} 2>&1 | tee "$OUT/log.txt"
