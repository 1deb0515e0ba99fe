#!/usr/bin/env python
"""The pre-flight of a pretraining run on an ImageFolder: loading the data set and checking that every image decodes
(`verify_images`, JPEGs at 1/8 scale), with one process or several, timed on each process.

    python benchmarks/bench_preflight.py --make /tmp/jpegs --count 20000          # ImageNet-size JPEGs, once
    torchrun --nproc_per_node 1 benchmarks/bench_preflight.py --train_dir /tmp/jpegs --cache_dir "$(mktemp -d)"
    torchrun --nproc_per_node 2 benchmarks/bench_preflight.py --train_dir /tmp/jpegs --cache_dir "$(mktemp -d)"

With several processes the node's main process loads the data set first (the others read its cache) and each
process checks 1/N of the images (`mae_hf.data.once`); before, every process did all of it. Rank 0 prints the wall
time of each phase and the CPU seconds that all processes (with their `datasets` workers) spent in them: the work.
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_images(folder: Path, count: int, size=(500, 375), classes: int = 10) -> None:
    """`count` JPEGs (quality 90) of ImageNet's typical size in `classes` folders: smooth random colour fields with
    noise, about ImageNet's bytes per image (~110 KB), so that decoding costs what ImageNet's does."""
    from PIL import Image

    rng = np.random.default_rng(0)
    width, height = size
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-32, 32, (height, width, 3), dtype=np.int16)
        target = folder / f"class_{i % classes}" / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(target, quality=90)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (`datasets`' map workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def preflight(train_dir: str, workers: int, cache_dir: str) -> None:
    import torch.distributed as dist

    import run_pretraining
    from mae_hf.data import load_image_datasets
    from mae_hf.run_utils import parse_arguments, verify_splits

    with tempfile.TemporaryDirectory() as out:
        argv = ["--train_dir", train_dir, "--output_dir", out, "--use_cpu", "--dataloader_num_workers", str(workers)]
        argv += ["--cache_dir", cache_dir]
        _model, data_args, training_args, _monitor = parse_arguments(run_pretraining.ARGUMENTS, argv)
        marks = [(time.perf_counter(), cpu_seconds())]
        raw = load_image_datasets(data_args, seed=training_args.seed)
        marks.append((time.perf_counter(), cpu_seconds()))
        verify_splits(raw, "image", data_args, training_args)
        marks.append((time.perf_counter(), cpu_seconds()))
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    work = [[b[1] - a[1] for a, b in zip(marks, marks[1:])]]  # this process's CPU seconds per phase
    if training_args.world_size > 1:
        everyone = [None] * training_args.world_size
        dist.all_gather_object(everyone, work[0])
        work = everyone
    if training_args.process_index == 0:
        images = sum(len(split) for split in raw.values())
        load, check = (sum(w[phase] for w in work) for phase in (0, 1))
        print(
            f"{len(work)} process(es), {workers} worker(s) each, {images:,} images: loading {wall[0]:.1f} s "
            f"({load:.1f} CPU s in all), checking {wall[1]:.1f} s ({check:.1f} CPU s in all: "
            f"{images / check:.0f} images per CPU second)"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make", help="Write the JPEGs into this folder and stop.")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--train_dir", help="The ImageFolder to load and check.")
    parser.add_argument("--workers", type=int, default=1, help="--dataloader_num_workers of each process.")
    parser.add_argument("--cache_dir", help="The `datasets` cache: give an empty folder, or the checks are read back.")
    args = parser.parse_args(argv)
    if args.make:
        make_images(Path(args.make), args.count)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    preflight(args.train_dir, args.workers, args.cache_dir)


if __name__ == "__main__":
    main()
