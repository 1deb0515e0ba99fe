#!/usr/bin/env python
"""Images/s of the pretraining input pipeline in ONE worker process (one thread): JPEG decode +
RandomResizedCrop(0.2-1, bicubic) + flip + to-tensor + normalise, on ImageNet-sized JPEGs that the script
generates, for
- plain: what `datasets` + torchvision give (the image decoded to PIL, then `pretrain_transform`, v2 on PIL);
- ours:  `mae_hf.data.decoding.FastRandomResizedCrop` on the encoded bytes (`--image_decoding fast`, the default).
The two alternate round by round over the same files; the summary is the median of per-round ratios.
With `--device cuda` it also times `--image_decoding gpu` (nvJPEG batch decode + crop/flip/normalise on the GPU).

Generated files, shaped like ImageNet-1k train: 85 % with a 500 px long side, 10 % 250-499 px, 5 % 600-1000 px;
4:3, 3:2 or 1:1, a quarter portrait (mean ~201k pixels; ImageNet's is ~180k); smooth content plus fine noise
(`--noise`, the main knob of the file size and so of the entropy-decoding time: ~95 KB per file at the default 10,
ImageNet's mean is ~110 KB), quality 90. The script prints the mean size and pixel count of what it generated.
Divide a model's train-step images/s by the per-worker rate to get the dataloader workers that keep it fed.

    python benchmarks/bench_input_pipeline.py                # 200 images x 5 rounds, 224 px
    python benchmarks/bench_input_pipeline.py --smoke        # seconds
"""

import argparse
import io
import statistics
import time

import numpy as np
import torch
from harness import median_ratio
from PIL import Image

from mae_hf.data.decoding import FastRandomResizedCrop
from mae_hf.data.gpu_decoding import EncodedCropFlip, GPUImageDecoder, collate_encoded
from mae_hf.data.transforms import ImageTransform, pretrain_transform


def imagenet_like_sizes(count: int, rng) -> list[tuple[int, int]]:
    sizes = []
    for _ in range(count):
        draw = rng.random()
        long_side = 500 if draw < 0.85 else int(rng.integers(250, 500) if draw < 0.95 else rng.integers(600, 1001))
        short_side = int(long_side / rng.choice([4 / 3, 3 / 2, 1.0], p=[0.6, 0.25, 0.15]))
        sizes.append((short_side, long_side) if rng.random() < 0.25 else (long_side, short_side))
    return sizes


def make_jpegs(count: int, seed: int = 0, noise: float = 10.0) -> list[bytes]:
    """Encoded JPEGs (width x height from `imagenet_like_sizes`)."""
    rng = np.random.default_rng(seed)
    files = []
    for width, height in imagenet_like_sizes(count, rng):
        coarse = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, noise, smooth.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        files.append(buffer.getvalue())
    return files


def plain_pipeline(image_size: int):
    transform = ImageTransform(pretrain_transform(image_size), "image")

    def run(data: bytes):
        image = Image.open(io.BytesIO(data))
        image.load()  # what datasets.Image does when it decodes a row
        return transform({"image": [image]})["pixel_values"][0]

    return run


def our_pipeline(image_size: int):
    transform = FastRandomResizedCrop(image_size)
    return lambda data: transform({"bytes": data, "path": None})


def rate(files, pipeline) -> float:
    start = time.perf_counter()
    for data in files:
        pipeline(data)
    return len(files) / (time.perf_counter() - start)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def gpu_rate(files, image_size: int, batch_size: int, device: str, rounds: int) -> float:
    """Images/s of the device half of `--image_decoding gpu` (the worker half is `EncodedCropFlip`)."""
    worker, decoder = EncodedCropFlip(image_size), GPUImageDecoder(image_size)
    batches = [
        collate_encoded([{"pixel_values": worker({"bytes": data})} for data in files[i : i + batch_size]])
        for i in range(0, len(files) - batch_size + 1, batch_size)
    ]
    rates = []
    for _ in range(rounds + 1):  # the first round warms nvJPEG up
        synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            decoder(batch["encoded_images"], batch["crops"], batch["flips"], device)
        synchronize(device)
        rates.append(len(batches) * batch_size / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cuda: also time the GPU decoder (the CPU pipelines always run on one CPU thread)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="GPU decoder batch")
    parser.add_argument("--noise", type=float, default=10.0, help="pixel noise std (0: smooth, light files)")
    parser.add_argument("--smoke", action="store_true", help="20 images, 1 round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.rounds = 20, 1
    torch.set_num_threads(1)  # a dataloader worker runs single-threaded
    files = make_jpegs(args.images, noise=args.noise)
    pipelines = {"plain": plain_pipeline(args.image_size), "ours": our_pipeline(args.image_size)}
    for pipeline in pipelines.values():
        rate(files[:5], pipeline)  # warm-up
    rates = {name: [] for name in pipelines}
    for _ in range(args.rounds):
        for name, pipeline in pipelines.items():
            rates[name].append(rate(files, pipeline))
    ratio = median_ratio(rates["ours"], rates["plain"])
    mean_kb = sum(map(len, files)) / len(files) / 1024
    mean_px = statistics.mean(
        Image.open(io.BytesIO(data)).width * Image.open(io.BytesIO(data)).height for data in files
    )
    print(
        f"{args.images} generated JPEGs (mean {mean_kb:.0f} KB, {mean_px / 1000:.0f}k pixels), noise "
        f"{args.noise}, output {args.image_size} px, {args.rounds} rounds, 1 thread"
    )
    print("| pipeline | median img/s per worker | min-max |")
    print("|---|---|---|")
    for name, label in (
        ("plain", "plain: PIL decode + torchvision v2 on PIL"),
        ("ours", "ours: reduced-scale decode + uint8 tensor ops"),
    ):
        print(f"| {label} | {statistics.median(rates[name]):.1f} | {min(rates[name]):.1f}-{max(rates[name]):.1f} |")
    if args.device == "cuda":
        batch = min(args.batch_size, len(files))
        print(
            f"| gpu: nvJPEG batch {batch} + crop/flip/normalise on {torch.cuda.get_device_name()} | "
            f"{gpu_rate(files, args.image_size, batch, 'cuda', args.rounds):.1f} (device side) | |"
        )
    print(
        f"input pipeline: ours {ratio:.2f}x the plain pipeline's images/s per worker "
        f"({statistics.median(rates['ours']):.0f} vs {statistics.median(rates['plain']):.0f} img/s)"
    )
    return ratio


if __name__ == "__main__":
    main()
