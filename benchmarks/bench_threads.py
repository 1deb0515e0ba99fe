#!/usr/bin/env python
"""Train-step speed of the `make demo` model at several torch thread counts (what OMP_NUM_THREADS sets), in ONE
process: on a machine shared with other jobs, more threads than free cores make every step wait for the slowest
thread.

The model and batch of configs/pretrain_digits_demo.yaml (ViT 128 x 4, decoder 64 x 2, 16x16 px, 2x2 patches,
batch 64), one AdamW step per train step. `--rounds` rounds; in each, every thread count (order rotating from round
to round) runs `--steps` timed steps after one untimed step. Reported: the median images/s per thread count, the
median of the per-round ratios to the first count, and the load average (/proc/loadavg) before and after, since
the result depends on what else runs.

    python benchmarks/bench_threads.py                     # threads 1 and 2 (minutes on a busy 2-core machine)
    python benchmarks/bench_threads.py --threads 1 2 4 --rounds 5
    python benchmarks/bench_threads.py --smoke             # seconds, for CI
"""

import argparse
import os
import statistics
import time

import torch
from harness import load_average, median_ratio

from mae_hf import MAEConfig, MAEForPreTraining

DEMO = dict(
    image_size=16,
    patch_size=2,
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=512,
    decoder_hidden_size=64,
    decoder_num_hidden_layers=2,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=256,
)


def images_per_second(model, optimizer, pixels, threads: int, steps: int) -> float:
    torch.set_num_threads(threads)

    def step():
        model(pixels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # untimed: the thread pool resizes
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return len(pixels) * steps / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per thread count and round")
    parser.add_argument("--smoke", action="store_true", help="1 round of 2 steps at batch 8")
    args = parser.parse_args(argv)
    rounds, steps, batch = (1, 2, 8) if args.smoke else (args.rounds, args.steps, 64)

    torch.manual_seed(0)
    model = MAEForPreTraining(MAEConfig(**DEMO)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3.75e-4, betas=(0.9, 0.95), weight_decay=0.05)
    pixels = torch.randn(batch, 3, 16, 16)
    print(f"{os.cpu_count()} CPU cores; load average before: {load_average()}", flush=True)
    rates = {threads: [] for threads in args.threads}
    for number in range(rounds):
        order = args.threads[number % len(args.threads) :] + args.threads[: number % len(args.threads)]
        for threads in order:
            rates[threads].append(images_per_second(model, optimizer, pixels, threads, steps))
        print(
            f"round {number + 1}: " + ", ".join(f"{t} thread(s) {rates[t][-1]:.0f} images/s" for t in args.threads),
            flush=True,
        )
    first = args.threads[0]
    print(f"load average after: {load_average()}")
    for threads in args.threads:
        ratio = median_ratio(rates[threads], rates[first])
        print(
            f"threads {threads}: median {statistics.median(rates[threads]):.0f} images/s, "
            f"{ratio:.2f}x the speed at {first} thread(s)"
        )


if __name__ == "__main__":
    main()
