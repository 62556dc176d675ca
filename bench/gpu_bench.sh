#!/usr/bin/env bash
# The engine on an NVIDIA GPU, beside llama.cpp's own server and batched ceiling.
#
# One command on a machine with an NVIDIA GPU, the CUDA toolkit (nvcc) and this
# checkout:   bench/gpu_bench.sh            (GPU_BENCH_QUICK=1 for a short pass)
#
# 1. builds the gateway's llama.cpp with CUDA (GATEWAY_CUDA=1 make setup: the same
#    path `make run` and the Docker gpu profile take), for this card's architecture
#    only, and llama.cpp's llama-server and llama-batched-bench with CUDA
#    (bench/llama_cpp_build.py --cuda);
# 2. runs bench/engine_bench.py with every layer on the GPU for ours, the C++
#    server (cpp) and the batched ceiling, streaming chat at c1, 4, 8 and 16, on
#    two files made from the built-in model: Q8_0 (what the gateway runs) and F16
#    (twice the bytes per weight, the larger one), plus any GGUF named in
#    GPU_BENCH_MODEL (a path);
# 3. prints each run's table and ratios, and leaves the JSON in bench/results/gpu-*.json.
#
# The builds are the slow part the first time (a few minutes with all cores for
# one CUDA architecture); the three bench runs take about a minute each.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v nvidia-smi >/dev/null || { echo "gpu_bench: nvidia-smi not found: no NVIDIA GPU here" >&2; exit 2; }
command -v nvcc >/dev/null || { echo "gpu_bench: nvcc not found: install the CUDA toolkit" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

export CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=native ${CMAKE_ARGS:-}"
GATEWAY_CUDA=1 make setup
.venv/bin/python bench/llama_cpp_build.py --cuda

levels=1,4,8,16 rounds=1 extra=()
if [ "${GPU_BENCH_QUICK:-0}" = 1 ]; then levels=1,8; extra=(--max-tokens 32); fi
run() {  # run NAME ARGS...: one engine bench on the GPU
  local name=$1; shift
  echo "== $name"
  .venv/bin/python bench/engine_bench.py --gpu --targets ours,cpp,ceiling --levels "$levels" \
    --rounds "$rounds" --pairs 0 --out "bench/results/gpu-$name.json" "${extra[@]}" "$@"
}
status=0
run q8_0 --quantize q8_0 || status=1
run f16 --quantize f16 || status=1
if [ -n "${GPU_BENCH_MODEL:-}" ]; then
  run "$(basename "${GPU_BENCH_MODEL%.gguf}")" --model "$GPU_BENCH_MODEL" || status=1
fi
exit $status
