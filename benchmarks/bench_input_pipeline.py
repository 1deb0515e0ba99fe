#!/usr/bin/env python
"""Images/s of the pretraining input pipeline in ONE worker process: JPEG decode + RandomResizedCrop(0.2-1,
bicubic) + flip + to-tensor + normalise, on ImageNet-sized JPEGs that the script generates (smooth random images,
quality 90, sizes drawn around ImageNet's mean of about 400x350).

Divide a model's train-step images/s by this number to get the dataloader workers that keep it fed.

    python benchmarks/bench_input_pipeline.py                # 200 images, 224 px
    python benchmarks/bench_input_pipeline.py --smoke        # seconds
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mae_hf.data.transforms import ImageTransform, pretrain_transform


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        width, height = int(rng.integers(300, 500)), int(rng.integers(250, 450))
        coarse = rng.integers(0, 255, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)  # smooth, photo-like content
        path = folder / f"{i}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def images_per_second(paths, transform, rounds: int) -> list[float]:
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for path in paths:
            with Image.open(path) as image:
                transform({"image": [image]})
        rates.append(len(paths) / (time.perf_counter() - start))
    return rates


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="20 images, 1 round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.rounds = 20, 1
    torch.set_num_threads(1)  # a dataloader worker runs single-threaded
    transform = ImageTransform(pretrain_transform(args.image_size), "image")
    with tempfile.TemporaryDirectory() as folder:
        paths = make_jpegs(Path(folder), args.images)
        images_per_second(paths[:5], transform, 1)  # warm-up
        rates = images_per_second(paths, transform, args.rounds)
    median = statistics.median(rates)
    print("| pipeline | images | rounds | median img/s per worker | min-max |")
    print("|---|---|---|---|---|")
    print(f"| decode + RandomResizedCrop + flip + normalise | {args.images} | {args.rounds} | {median:.1f} | "
          f"{min(rates):.1f}-{max(rates):.1f} |")
    print(f"input pipeline: {median:.1f} images/s per worker process ({args.image_size} px)")
    return median


if __name__ == "__main__":
    main()
