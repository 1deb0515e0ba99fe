#!/usr/bin/env bash
# Every GPU number BENCHMARKS.md asks for, in one command (each benchmark capped at 150 s, so under the 10 minutes a
# lent device allows per command; not yet run on a GPU). Results go to ${OUT:-benchmarks/out}/*.txt and *.json; paste the tables into BENCHMARKS.md with the
# GPU's name (printed on the first line of each table).
#   bash benchmarks/gpu_suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
run() { local name=$1; shift; echo "== $name: $*"; timeout 150 python "$@" 2>&1 | tee "$out/$name.txt" | tail -12; }
run pretrain_bf16 benchmarks/bench_pretrain_step.py --device cuda --dtype bf16 --batch-size 128 --rounds 5 \
    --steps-per-round 10 --warmup 3 --mfu --json "$out/pretrain_bf16.json"
run pretrain_bf16_eager benchmarks/bench_pretrain_step.py --device cuda --dtype bf16 --batch-size 128 --rounds 3 \
    --steps-per-round 10 --warmup 3 --attn eager --json "$out/pretrain_bf16_eager.json"
run mask_speedup benchmarks/bench_pretrain_step.py --device cuda --dtype bf16 --batch-size 128 --mask-speedup \
    --rounds 5 --steps-per-round 10 --warmup 3
run classification benchmarks/bench_task_step.py --task classification --device cuda --dtype bf16 --batch-size 128 \
    --rounds 5 --steps-per-round 10 --warmup 3
run segmentation benchmarks/bench_task_step.py --task segmentation --device cuda --dtype bf16 --batch-size 16 \
    --rounds 5 --steps-per-round 5 --warmup 2
run input_pipeline benchmarks/bench_input_pipeline.py --device cuda --images 512 --rounds 3
