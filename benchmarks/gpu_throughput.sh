#!/usr/bin/env bash
# Issue 14's GPU checks in one script, prepared for a GPU session (one H100/H200; aimed at under 8 minutes).
#   bash benchmarks/gpu_throughput.sh                      # writes benchmarks/results/*_<gpu>_* and runs/gpu14/
# 1. `ctrobust sweep` end to end on CUDA through the CLI (store, executors, figures): bundled ResNet-18, the
#    paper's 30-beta grid (0.70..0.99) plus beta = 1, 1000 rows of the *timing workload* (--data timing: the
#    20 bundled images repeated as distinct rows; accuracies are not a measurement), standard AutoAttack at
#    8/255, with the fast engine, with the reference engine, and with the fast engine under --executor gpus.
# 2. benchmarks/throughput.py (limit vs both engines on robust rows) for ResNet-18 and WRN-28-10 (random
#    weights), median of 3 with the spread.
# 3. The gpu-marked tests (pytest -m gpu).
# Each step has its own time limit (at most about 8.5 minutes in all), so a slow step cannot eat the others;
# every step's wall time and exit status is logged. A sweep cut by its limit keeps its finished units: running
# the script again resumes it (the other steps redo little: finished sweeps are not rerun).
# Tried on the CPU with SCALE=cpu (tiny sizes; same commands).
set -uo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-gpu}
if [ "$SCALE" = cpu ]; then
  DEVICE=cpu; ROWS=24; BETAS=0.9; ATTACKS=apgd-ce; TP_ARGS=(--n-iter 2 --targets 1 --queries 10
    --repeats 1 --min-seconds 0.2 --limit-batches 8,16); TP_MODELS=bundled; TAG=cpu-dryrun; OUT=${OUT:-/tmp/gpu14}
else
  DEVICE=cuda; ROWS=1000; BETAS=0.70:0.99:0.01; ATTACKS=standard
  TP_ARGS=(--n-iter 10 --targets 2 --queries 200 --repeats 3 --min-seconds 0.5 --limit-batches 128,256,512,1024); TP_MODELS="bundled standard-random"
  TAG=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo gpu) | head -1 | tr -c 'A-Za-z0-9\n' '_' \
         | tr 'A-Z' 'a-z' | sed 's/_*$//')
  OUT=${OUT:-runs/gpu14}
fi
RES=${RES:-benchmarks/results}
mkdir -p "$OUT" "$RES"
LOG="$RES/gpu_throughput_${TAG}.txt"
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
step() {  # step NAME LIMIT_S CMD...: run with a time limit, log its wall time and exit status
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  say "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tail -n 25 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "== $name: exit $rc, $(( $(date +%s) - t0 )) s"
}
say "device: $( (nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "$DEVICE") | head -1)"
say "torch: $(python -c 'import torch; print(torch.__version__, "cudnn.allow_tf32", torch.backends.cudnn.allow_tf32)')"
COMMON=(--model bundled/resnet18-cifar10 --dataset cifar10 --data timing --n-examples "$ROWS" --subset first
        --betas "$BETAS" --attacks "$ATTACKS" --eps 8/255 --seeds 0 --device "$DEVICE" --quiet)
step "sweep fast" 50 ctrobust sweep "${COMMON[@]}" --engine fast --out "$OUT/fast"
step "sweep fast --executor gpus" 60 ctrobust sweep "${COMMON[@]}" --engine fast --executor gpus --out "$OUT/fast_gpus"
step "sweep reference" 120 ctrobust sweep "${COMMON[@]}" --engine reference --out "$OUT/reference"
step "status" 20 ctrobust status "$OUT/fast_gpus"
step "plot" 40 ctrobust plot "$OUT/fast" "$OUT/reference" --out "$OUT/figures" --name timing_fast_vs_reference
python - "$OUT" "$TAG" "$RES" <<'EOF' 2>&1 | tee -a "$LOG"
# one summary of the three sweeps: seconds, passes, batch size, peak memory, precision, per-beta agreement
import json, sys
from pathlib import Path
out, tag, res = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
summary = {}
for name in ("fast", "fast_gpus", "reference"):
    f = out / name / "results.json"
    if not f.exists():
        summary[name] = None
        continue
    doc = json.loads(f.read_text())
    rows = doc["rows"] if isinstance(doc, dict) and "rows" in doc else doc
    summary[name] = {"betas": len(rows), "seconds": round(sum(r["seconds"] for r in rows), 1),
                     "call_seconds": round(sum(r.get("call_seconds", 0) for r in rows), 1),
                     "forward_passes": sum(r["forward_passes"] for r in rows),
                     "backward_passes": sum(r["backward_passes"] for r in rows),
                     "batch_size": max(r["batch_size"] for r in rows),
                     "peak_mem_mb": max((r["peak_mem_mb"] for r in rows if r.get("peak_mem_mb") != ""), default=None),
                     "precision": sorted({r.get("precision") for r in rows}),
                     "robust_acc": {str(r["beta"]): r["robust_acc"] for r in rows},
                     "warnings": sorted({w for r in rows for w in r.get("warnings", [])})}
if summary.get("fast") and summary.get("reference"):
    f, r = summary["fast"]["robust_acc"], summary["reference"]["robust_acc"]
    summary["max_robust_acc_gap_fast_vs_reference"] = max(abs(f[b] - r[b]) for b in f if b in r)
(res / f"gpu_sweep_timing_{tag}.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "robust_acc"})
                  for k, v in summary.items()}, indent=1))
EOF
for m in $TP_MODELS; do
  rows=16
  [ "$SCALE" = cpu ] || { [ "$m" = bundled ] && rows=512 || rows=256; }
  limit=70; [ "$m" = bundled ] || limit=100
  step "throughput $m" "$limit" python benchmarks/throughput.py --device "$DEVICE" --model "$m" "${TP_ARGS[@]}" \
    --n-examples "$rows" --out "$RES/throughput_${TAG}_${m}.json"
done
step "gpu tests" 45 python -m pytest -q -m gpu -p no:cacheprovider
say "done"
