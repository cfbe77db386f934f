#!/usr/bin/env bash
# One prepared GPU session: correctness of every GPU backend and of the on-device augmentation,
# the benchmark report, the host-overhead section, and the main job with and without
# on-device augmentation and CUDA-graph capture. Run from the repository root on a CUDA machine with
# torch/triton/cupy preinstalled:
#   OUT=/some/folder [BASELINE=bench/out/baseline] bash scripts/gpu_check.sh [commit]
# BASELINE: the tree of an older commit (bash scripts/baseline_tree.sh COMMIT, before the device call,
# naming bench/out/baseline in its carry): its Triton kernels are timed after the working tree's, in
# the same session, and the two reports compared (compare/compare.md: speed-up and % of copy bandwidth
# per row). The device machine has no .git: pass the commit. It returns at most 8 files from $OUT,
# so pack them, e.g.
#   OUT=/tmp/gpu BASELINE=bench/out/baseline bash scripts/gpu_check.sh <commit>; tar -czf $OUT/gpu_check.tgz -C /tmp/gpu .
# Writes under $OUT: facts.txt, gpu_tests.log, gpu_pipeline_tests.log, augment.log,
# bench.log, bench/report.{json,md}, with BASELINE bench_baseline.log, bench_baseline/report.{json,md} and
# compare/compare.{json,md}, host.log, host/report.{json,md}, step.log, step/report.{json,md}, train.log,
# (with BASELINE) train_baseline.log, train_gpu_augment.log, data_only.log, cuda_graphs_tests.log, train_cuda_graphs.log,
# train_cuda_graphs_augment.log and train_summary.txt.
# STEPS="1 3 3b 4" runs only those steps (numbered below; default: all), e.g. to split the session
# over two device calls. Each step has its own timeout (the *_TIMEOUT variables) and all of them share one budget,
# BUDGET seconds (default 540: under the 600 s of one device call): a step gets at most what is left of it and is
# skipped, with a message, when less than 15 s are left.
set -u
OUT=${OUT:-gpu_out}
COMMIT=${1:-unknown}
BUDGET=${BUDGET:-540}
START=$SECONDS
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# step_timeout WANTED: the timeout of the next step, what is left of the budget if that is less.
step_timeout() {
  local left=$(( BUDGET - (SECONDS - START) ))
  if (( left < 15 )); then echo 0; elif (( $1 < left )); then echo "$1"; else echo "$left"; fi
}
# run_step NAME WANTED LOG COMMAND...: run COMMAND under the step's timeout, output to LOG, status to facts.txt;
# nothing when the current step ($STEP) is not in STEPS.
run_step() {
  local name=$1 wanted=$2 log=$3; shift 3
  if [[ -n "${STEPS:-}" && " $STEPS " != *" $STEP "* ]]; then
    echo "$name: not run (step $STEP is not in STEPS=\"$STEPS\")" | tee -a "$OUT/facts.txt"
    return
  fi
  local limit; limit=$(step_timeout "$wanted")
  if (( limit == 0 )); then
    echo "$name: skipped, the session budget of ${BUDGET} s is spent" | tee -a "$OUT/facts.txt"
    return
  fi
  timeout "$limit" "$@" > "$log" 2>&1
  local status=$?
  echo "$name exit status: $status (limit ${limit} s, at $(( SECONDS - START )) s)" | tee -a "$OUT/facts.txt"
}

{
  date -u +%FT%TZ
  echo "commit $COMMIT"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  python3 -c "import cupy; print('cupy', cupy.__version__)" 2>&1
  python3 -c "import h3r_kernels, json; print(json.dumps(h3r_kernels.backends(), indent=1))"
  echo "cpu cores $(nproc); shared memory (the synthetic sets' image cache takes at most a quarter of it):"
  df -h /dev/shm | tail -1
} 2>&1 | tee "$OUT/facts.txt"

STEP=1
# 1. Correctness of the GPU backends.
#    Every gpu-marked test but the pipeline's (step 2) and the CUDA-graph training runs (step 6).
run_step "gpu tests" "${GPU_TEST_TIMEOUT:-200}" "$OUT/gpu_tests.log" \
  python3 -m pytest -q -n 8 -p no:cacheprovider -m gpu tests \
  --ignore=tests/test_gpu_pipeline.py --ignore=tests/test_warp_triton.py --ignore=tests/test_train_steps.py
grep -E "passed|failed|error" "$OUT/gpu_tests.log" 2>/dev/null | tail -3

STEP=2
# 2. On-device augmentation on CUDA: equivalence with the CPU path (Pillow) and of the Triton warp with its
#    PyTorch spec, then the warp's max/mean error against Pillow (exact and float32 modes) and the
#    throughput per batch, PyTorch warp against Triton warp: an HRNet-sized batch, then the main job's.
run_step "gpu pipeline tests" "${PIPELINE_TEST_TIMEOUT:-75}" "$OUT/gpu_pipeline_tests.log" \
  python3 -m pytest -q -s -p no:cacheprovider -m gpu tests/test_gpu_pipeline.py tests/test_warp_triton.py
grep -E "passed|failed|error|exact|float32" "$OUT/gpu_pipeline_tests.log" 2>/dev/null | tail -8
run_step "augment check" "${AUGMENT_TIMEOUT:-75}" "$OUT/augment.log" bash -c \
  'python3 -m h3r.augment --device cuda --cases 60 --batch 256 --size 256 --backends torch,triton &&
   python3 -m h3r.augment --device cuda --cases 0 --batch 32 --size 64 --repeats 50 --backends torch,triton'
cat "$OUT/augment.log" 2>/dev/null

STEP=3
# 3. The throughput report, with the loss's former tile (8192/32; 4096/16 since the static profile,
#    bench/RESULTS.md) timed beside the tile in use.
run_step "bench" "${BENCH_TIMEOUT:-160}" "$OUT/bench.log" \
  python3 -m h3r.benchmark --device cuda --triton-tiles 8192:32 --out "$OUT/bench" --commit "$COMMIT"
tail -5 "$OUT/bench.log" 2>/dev/null

STEP=3b
# 3b. With BASELINE: the baseline tree's Triton kernels, same shapes and dtypes, in this session (its own
#     process and copy-bandwidth measurement; encode is a control where its kernel did not change),
#     then the two reports side by side.
if [[ -n "${BASELINE:-}" ]]; then
  if [[ -f "$BASELINE/h3r/benchmark/cli.py" ]]; then
    BASELINE_COMMIT=$(cat "$BASELINE/COMMIT" 2>/dev/null || echo unknown)
    run_step "baseline bench ($BASELINE_COMMIT)" "${BASELINE_TIMEOUT:-90}" "$OUT/bench_baseline.log" \
      env -C "$BASELINE" PYTHONPATH="$(cd "$BASELINE" && pwd)" python3 -m h3r.benchmark --device cuda \
      --backends triton --ops encode,heatmap_loss,decode --out "$(cd "$OUT" && pwd)/bench_baseline" \
      --commit "$BASELINE_COMMIT"
    tail -3 "$OUT/bench_baseline.log" 2>/dev/null
    if [[ -f "$OUT/bench/report.json" && -f "$OUT/bench_baseline/report.json" ]]; then
      python3 -m h3r.benchmark.compare "$OUT/bench/report.json" "$OUT/bench_baseline/report.json" \
        --out "$OUT/compare" 2>&1 | tee -a "$OUT/facts.txt"
    fi
  else
    echo "baseline bench: skipped, $BASELINE holds no tree (bash scripts/baseline_tree.sh COMMIT)" | tee -a "$OUT/facts.txt"
  fi
fi

STEP=4
# 4. Host overhead on CUDA: CPU time to issue heatmap_loss fwd+bwd and decode on tiny maps vs plain BCE.
run_step "host overhead" "${HOST_TIMEOUT:-75}" "$OUT/host.log" \
  python3 -m h3r.benchmark --device cuda --host-overhead --skip-throughput --copy-mib 64 \
  --out "$OUT/host" --commit "$COMMIT"
grep -E "^host overhead:" "$OUT/host.log" 2>/dev/null | head -30

STEP=4b
# 4b. One training step of HRNet-W18 at 256x256 (batch 32, 98 keypoints, bf16): eager, captured in a
#     CUDA graph, and the share of the eager step spent in the H3R loss.
run_step "train step" "${STEP_TIMEOUT:-90}" "$OUT/step.log" \
  python3 -m h3r.benchmark --device cuda --train-step --skip-throughput --copy-mib 64 \
  --out "$OUT/step" --commit "$COMMIT"
grep -E "^train step:" "$OUT/step.log" 2>/dev/null

STEP=5
# 5. The main job on the GPU: low-resolution synthetic faces, bf16 (run folders outside $OUT:
#    few files come back), with the CPU augmentation (with BASELINE, also the baseline tree's, for the
#    loader before and after) and then with the on-device one; then the loader alone (--data-only).
TRAIN_ARGS=(--device cuda --amp bf16 --workers 8 --no-progress)
# [TREE=folder] train_run NAME LOG FOLDER ARGS...: 'h3r train' of TREE (default: this tree) with TRAIN_ARGS and
# ARGS into FOLDER (emptied first), its metrics appended to LOG.
train_run() {
  local name=$1 log=$2 folder=$3; shift 3
  local tree; tree=$(cd "${TREE:-.}" && pwd)
  rm -rf "$folder"
  run_step "$name" "${TRAIN_TIMEOUT:-90}" "$log" env -C "$tree" PYTHONPATH="$tree" \
    python3 -m h3r train "${TRAIN_ARGS[@]}" "$@" --out "$folder"
  cat "$folder/metrics.jsonl" >> "$log" 2>/dev/null
  tail -4 "$log" 2>/dev/null
}
train_run "train" "$OUT/train.log" /tmp/h3r-gpu-train
if [[ -n "${BASELINE:-}" && -f "${BASELINE}/h3r/train.py" ]]; then
  TREE=$BASELINE train_run "train at the baseline" "$OUT/train_baseline.log" /tmp/h3r-gpu-train-baseline
fi
train_run "train --gpu-augment" "$OUT/train_gpu_augment.log" /tmp/h3r-gpu-train-augment --gpu-augment
# The loader alone with the same 8 workers, per epoch (the first renders the images, the second reads the cache):
# how many images/s it could feed, with the CPU augmentation and with the on-device one. 6,400 faces make
# epochs of 200 batches, long enough to time.
run_step "loader alone" "${LOADER_TIMEOUT:-60}" "$OUT/data_only.log" bash -c \
  'python3 -m h3r train --data-only --workers 8 --train-option size=6400 &&
   python3 -m h3r train --data-only --workers 8 --train-option size=6400 --gpu-augment'
grep -E "epoch [12]:" "$OUT/data_only.log" 2>/dev/null

STEP=6
# 6. The training step captured in a CUDA graph: its tests (a short run against the eager one,
#    resume), then the main job with --cuda-graphs, with the CPU and the on-device augmentation.
run_step "cuda graphs tests" "${GRAPH_TEST_TIMEOUT:-90}" "$OUT/cuda_graphs_tests.log" \
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_train_steps.py
grep -E "passed|failed|error" "$OUT/cuda_graphs_tests.log" 2>/dev/null | tail -3
train_run "train --cuda-graphs" "$OUT/train_cuda_graphs.log" /tmp/h3r-gpu-train-graphs --cuda-graphs
train_run "train --cuda-graphs --gpu-augment" "$OUT/train_cuda_graphs_augment.log" \
  /tmp/h3r-gpu-train-graphs-augment --cuda-graphs --gpu-augment

# Images/s and loader wait per run, epochs 2.. (epoch 1 includes start-up), side by side.
python3 - "$OUT/train_summary.txt" <<'EOF' 2>&1 | tee -a "$OUT/facts.txt"
import json, statistics, sys
from pathlib import Path
lines = []
for name, folder in (("cpu augmentation", "/tmp/h3r-gpu-train"), ("baseline tree", "/tmp/h3r-gpu-train-baseline"),
                     ("--gpu-augment", "/tmp/h3r-gpu-train-augment"),
                     ("--cuda-graphs", "/tmp/h3r-gpu-train-graphs"),
                     ("--cuda-graphs --gpu-augment", "/tmp/h3r-gpu-train-graphs-augment")):
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        lines.append(f"{name}: no metrics.jsonl")
        continue
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steady = records[1:] or records
    rate = statistics.median(r["images_per_s"] for r in steady)
    wait = statistics.mean(r["loader_wait_fraction"] for r in steady)
    test = records[-1].get("test", {})
    lines.append(f"{name}: {len(records)} epochs, median {rate:.0f} images/s, loader wait {100 * wait:.0f}% "
                 f"(epochs 2..), final test {json.dumps(test)}")
Path(sys.argv[1]).write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "gpu_check.sh took $(( SECONDS - START )) s" | tee -a "$OUT/facts.txt"
