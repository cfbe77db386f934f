#!/usr/bin/env bash
# One prepared GPU session: correctness of every GPU backend, then the benchmark report.
# Run from the repository root on a CUDA machine with torch/triton/cupy preinstalled:
#   OUT=/some/folder bash scripts/gpu_check.sh [commit]
# Writes facts.txt, gpu_tests.log, bench.log, bench/report.{json,md} and train.log under $OUT.
set -u
OUT=${OUT:-gpu_out}
COMMIT=${1:-unknown}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  date -u +%FT%TZ
  echo "commit $COMMIT"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  python3 -c "import cupy; print('cupy', cupy.__version__)" 2>&1
  python3 -c "import h3r_kernels, json; print(json.dumps(h3r_kernels.backends(), indent=1))"
} 2>&1 | tee "$OUT/facts.txt"

timeout "${GPU_TEST_TIMEOUT:-140}" python3 -m pytest -q -n 8 -p no:cacheprovider -m gpu \
  tests/test_gpu_ops.py tests/test_triton_encode_loss.py tests/test_triton_decode.py tests/test_cuda_backend.py \
  > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests exit status: $?" | tee -a "$OUT/facts.txt"
grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -3

timeout "${BENCH_TIMEOUT:-120}" python3 -m h3r.benchmark --device cuda --out "$OUT/bench" --commit "$COMMIT" \
  > "$OUT/bench.log" 2>&1
echo "bench exit status: $?" | tee -a "$OUT/facts.txt"
tail -5 "$OUT/bench.log"

# The main job on the GPU: low-resolution synthetic faces, bf16 (run folder outside $OUT: few files come back).
timeout "${TRAIN_TIMEOUT:-90}" python3 -m h3r train --device cuda --amp bf16 --workers 8 --no-progress \
  --out /tmp/h3r-gpu-train > "$OUT/train.log" 2>&1
echo "train exit status: $?" | tee -a "$OUT/facts.txt"
cat /tmp/h3r-gpu-train/metrics.jsonl >> "$OUT/train.log" 2>/dev/null
tail -4 "$OUT/train.log"
