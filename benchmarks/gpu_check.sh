#!/usr/bin/env bash
# The GPU check: the tests that need CUDA, then kdgraph's step against a hand-written loop in the same process
# and images/s per speed option, written into benchmarks/RESULTS.md with the GPU's name. About 7 minutes on
# one H100-class GPU; every part has its own time limit, 470 s in all, so the whole stays under 8.
#
#   bash benchmarks/gpu_check.sh          # results in benchmarks/gpu_out/ (or $OUT/) and benchmarks/RESULTS.md
#
# On a machine without the pure-Python dependencies and without a network, put their wheels in .wheels/
# (`pip download -d .wheels accelerate networkx jsonschema pyyaml tqdm scikit-learn scipy`) beforehand.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/gpu_out}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$SECONDS

if ! python -c "import accelerate, networkx, jsonschema, yaml, tqdm, sklearn, scipy" 2>/dev/null; then
  [ -d .wheels ] && pip install -q --no-index --find-links .wheels accelerate networkx jsonschema pyyaml tqdm \
    scikit-learn scipy
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$out/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to $out/NAME.txt
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s, at $((SECONDS - start))s)"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt" | tail -25
  echo "exit ${PIPESTATUS[0]}" >> "$out/$name.txt"
}

step tests 110 python -m pytest -q -p no:cacheprovider -x tests/test_cuda.py tests/test_speed.py tests/test_loaders.py
step overhead_64 60 python benchmarks/step_overhead.py --device cuda --cases kd,slkd --batch 64
step overhead_512 35 python benchmarks/step_overhead.py --device cuda --cases kd --batch 512
step throughput_64 100 python benchmarks/throughput.py --device cuda --graphs kd,dkd,slkd,teskd --batches 64 \
  --configs base,bf16,channels_last,host,cache --steps 20 --warmup 5
step throughput_512 45 python benchmarks/throughput.py --device cuda --graphs kd,dkd,slkd,teskd --batches 512 \
  --configs base,bf16_cl --steps 20 --warmup 5
step throughput_fuse 30 python benchmarks/throughput.py --device cuda --graphs slkd --batches 64,512 \
  --configs base,fuse --steps 20 --warmup 5
step fused_peers 40 python benchmarks/fused_peers.py --device cuda --batch 64,512 --repeats 6
step throughput_compile 50 python benchmarks/throughput.py --device cuda --graphs kd --batches 64 \
  --configs compile,fast --steps 30 --warmup 15

python benchmarks/gpu_results.py "$out" benchmarks/RESULTS.md
cp benchmarks/RESULTS.md "$out/RESULTS.md"
echo "gpu_check: $((SECONDS - start)) s"
