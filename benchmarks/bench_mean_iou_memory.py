#!/usr/bin/env python
"""Peak memory of a semantic-segmentation evaluation: streaming confusion matrix vs keeping every map.

Random 512x512 prediction / reference maps over 150 classes (ADE20K-like; references with ~10 % ignored 255
pixels, predictions right on ~60 % of pixels) are generated batch by batch (batch 8) as int64 tensors -- what
`logits.argmax(dim=1)` gives the Trainer. Each setting runs in a fresh subprocess and reports its peak resident
set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`; tracemalloc does not see torch's allocations), also
measured right after the imports, so that "growth" is what the evaluation itself added:

* stream  N=100 and N=1000: `StreamingMeanIoU.update` per batch -- memory should not grow with N;
* keep-all N=100: every batch appended to a list (what gathering every prediction does: Trainer without
  `batch_eval_metrics`, the Hub's `mean_iou`), the metric computed at the end.

    python benchmarks/bench_mean_iou_memory.py            # N = 100 / 1000 (keep-all: 100)
    python benchmarks/bench_mean_iou_memory.py --smoke    # N = 10 / 20, seconds
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, count: int, batch: int, size: int, classes: int, seed: int, threads: int) -> dict:
    """One setting, in this (fresh) process: imports, then the evaluation; returns the measurements."""
    import torch

    sys.path.insert(0, ROOT)
    from mae_hf.metrics import StreamingMeanIoU  # imports evaluate too (mean_iou.py is an evaluate script)

    torch.set_num_threads(threads)
    after_imports = rss_mb()
    generator = torch.Generator().manual_seed(seed)

    def batches():
        for start in range(0, count, batch):
            n = min(batch, count - start)
            references = torch.randint(0, classes, (n, size, size), generator=generator)
            predictions = references.clone()
            wrong = torch.rand(n, size, size, generator=generator) < 0.4
            predictions[wrong] = torch.randint(0, classes, (int(wrong.sum()),), generator=generator)
            references[torch.rand(n, size, size, generator=generator) < 0.1] = 255
            yield predictions, references

    start = time.perf_counter()
    stream = StreamingMeanIoU(classes, ignore_index=255)
    if mode == "stream":
        for predictions, references in batches():
            stream.update(predictions, references)
    elif mode == "keep-all":
        kept_predictions, kept_references = [], []
        for predictions, references in batches():
            kept_predictions.append(predictions)
            kept_references.append(references)
        for predictions, references in zip(kept_predictions, kept_references):  # the metric at the end
            stream.update(predictions, references)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    result = stream.compute()
    return {
        "mode": mode,
        "images": count,
        "peak_rss_mb": rss_mb(),
        "after_imports_rss_mb": after_imports,
        "growth_mb": rss_mb() - after_imports,
        "seconds": time.perf_counter() - start,
        "mean_iou": result["mean_iou"],
        "pixels_counted": int(stream.matrix.sum()),
    }


def run_setting(mode: str, count: int, args) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        mode,
        str(count),
        "--batch",
        str(args.batch),
        "--size",
        str(args.size),
        "--classes",
        str(args.classes),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} N={count} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="N = 10 / 20 (keep-all: 10): runs in seconds")
    parser.add_argument("--batch", type=int, default=8, help="maps generated (and updated) per batch (default 8)")
    parser.add_argument("--size", type=int, default=512, help="map height and width (default 512)")
    parser.add_argument("--classes", type=int, default=150, help="number of classes (default 150, ADE20K)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each run (default 1)")
    parser.add_argument("--json", help="also write the measurements to this file")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        mode, count = args.child
        print(json.dumps(child(mode, int(count), args.batch, args.size, args.classes, args.seed, args.threads)))
        return None

    small, large = (10, 20) if args.smoke else (100, 1000)
    settings = [("stream", small), ("stream", large), ("keep-all", small)]
    print(
        f"{args.size}x{args.size} int64 maps, {args.classes} classes, batch {args.batch}, one fresh process each; "
        "RSS in MiB (ru_maxrss)"
    )
    rows = []
    for mode, count in settings:
        rows.append(run_setting(mode, count, args))
        row = rows[-1]
        print(f"  done {mode} N={count}: peak {row['peak_rss_mb']:.0f} MiB in {row['seconds']:.1f} s", flush=True)

    print()
    print(
        f"{'setting':<10} {'N':>6} {'peak RSS':>10} {'after imports':>14} {'growth':>9} {'seconds':>8} {'mean IoU':>9}"
    )
    for row in rows:
        print(
            f"{row['mode']:<10} {row['images']:>6} {row['peak_rss_mb']:>10.1f} {row['after_imports_rss_mb']:>14.1f} "
            f"{row['growth_mb']:>9.1f} {row['seconds']:>8.1f} {row['mean_iou']:>9.5f}"
        )
    stream_small, stream_large, keep_small = rows
    raw = keep_small["images"] * args.size * args.size * 8 * 2 / 2**20
    print()
    print(
        f"keep-all / stream peak RSS at N={small}: {keep_small['peak_rss_mb'] / stream_small['peak_rss_mb']:.2f}x "
        f"(growth over the imports: {keep_small['growth_mb'] / stream_small['growth_mb']:.2f}x; "
        f"the kept maps alone are {raw:.0f} MiB)"
    )
    print(
        f"stream peak RSS N={large} / N={small}: {stream_large['peak_rss_mb'] / stream_small['peak_rss_mb']:.2f}x "
        f"(growth: {stream_large['growth_mb'] / stream_small['growth_mb']:.2f}x)"
    )
    print(
        f"same metric with and without keeping the maps (N={small}): "
        f"{stream_small['mean_iou'] == keep_small['mean_iou']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
