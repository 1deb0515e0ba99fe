#!/usr/bin/env python
"""What the checksums of a checkpoint's manifest cost at ViT-L size, and which hash to take.

A ViT-L MAE checkpoint holds the weights (`model.safetensors`, ~1.3 GB: 329 M float32 parameters with the decoder)
and AdamW's two moments (`optimizer.pt`, ~2.6 GB). This writes files of those sizes (random float32 tensors, with
safetensors and torch.save, flushed to disk as a checkpoint save flushes them), then times, in seconds per GB:

- write: hashing the files just written (what `describe_files` adds to every save; the pages are still cached);
- verify (cached): `folder_problems` on the folder (what `--resume_from_checkpoint latest` does before resuming);
- verify (from disk): the same after the files' pages were dropped from the page cache (posix_fadvise DONTNEED), as
  on a node that did not write them: the disk's read speed then bounds it.

The hashes compared, each reading the files in 8 MiB chunks on one thread: xxh3_128 (xxhash, what the manifests
use), zlib's crc32, and hashlib's sha256 (OpenSSL) and blake2b. `describe_files` / `folder_problems` read the files
of a folder in parallel threads (one per file, up to the cores).

    python benchmarks/bench_checksums.py                     # ViT-L sizes (writes ~3.9 GB under --dir)
    python benchmarks/bench_checksums.py --model_gb 0.35     # ViT-B
    python benchmarks/bench_checksums.py --smoke             # 16 MB, seconds, for CI
"""

import argparse
import hashlib
import os
import shutil
import tempfile
import time
import zlib

import torch
import xxhash
from harness import environment, load_average
from safetensors.torch import save_file

from mae_hf.run_directory.files import CHUNK_BYTES, describe_files, folder_problems, write_manifest

VIT_L_MAE_PARAMETERS = 329_000_000  # encoder 304 M + decoder 26 M (8 blocks x 512)


def _read(path: str, update) -> None:
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while count := file.readinto(buffer):
            update(view[:count])


def crc32(path: str) -> str:
    value = 0

    def update(chunk):
        nonlocal value
        value = zlib.crc32(chunk, value)

    _read(path, update)
    return f"{value:08x}"


def hashlib_digest(name: str):
    def digest(path: str) -> str:
        state = hashlib.new(name)
        _read(path, state.update)
        return state.hexdigest()

    return digest


def xxh3(path: str) -> str:
    state = xxhash.xxh3_128()
    _read(path, state.update)
    return state.hexdigest()


HASHES = {"xxh3_128": xxh3, "crc32": crc32, "sha256": hashlib_digest("sha256"), "blake2b": hashlib_digest("blake2b")}


def write_checkpoint(folder: str, parameters: int) -> float:
    """model.safetensors and optimizer.pt of a model with `parameters` float32 parameters, flushed; seconds."""
    start = time.perf_counter()
    save_file({"weight": torch.rand(parameters)}, os.path.join(folder, "model.safetensors"))
    torch.save(
        {"state": {0: {"exp_avg": torch.rand(parameters), "exp_avg_sq": torch.rand(parameters)}}},
        os.path.join(folder, "optimizer.pt"),
    )
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as file:
            os.fsync(file.fileno())
    return time.perf_counter() - start


def drop_cache(folder: str) -> None:
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as file:
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_gb", type=float, default=VIT_L_MAE_PARAMETERS * 4 / 1e9, help="weights file size")
    parser.add_argument("--dir", default=None, help="where the files are written (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="16 MB of weights: seconds, for CI")
    args = parser.parse_args(argv)
    gigabytes = 0.016 if args.smoke else args.model_gb
    folder = tempfile.mkdtemp(prefix="bench_checksums_", dir=args.dir)
    try:
        save = write_checkpoint(folder, int(gigabytes * 1e9 / 4))
        names = sorted(os.listdir(folder))
        total = sum(os.path.getsize(os.path.join(folder, name)) for name in names) / 1e9
        print(environment(torch.device("cpu")), f"load average {load_average()}")
        print(f"checkpoint: {', '.join(names)}: {total:.2f} GB, written and flushed in {save:.1f} s")
        print("| hash | write (files cached), s/GB | verify from disk, s/GB |\n|---|---|---|")
        paths = [os.path.join(folder, n) for n in names]
        for name, digest in HASHES.items():
            cached = seconds(lambda digest=digest: [digest(path) for path in paths]) / total
            drop_cache(folder)
            cold = seconds(lambda digest=digest: [digest(path) for path in paths]) / total
            print(f"| {name} (one thread) | {cached:.3f} | {cold:.3f} |")
        manifest = {}
        write_time = seconds(lambda: manifest.update(describe_files(folder))) / total
        write_manifest(folder, None, 0, manifest)
        verify = seconds(lambda: folder_problems(folder)) / total
        drop_cache(folder)
        verify_cold = seconds(lambda: folder_problems(folder)) / total
        print(
            f"| describe_files / folder_problems (xxh3_128, a thread per file) | {write_time:.3f} | "
            f"{verify_cold:.3f} (cached: {verify:.3f}) |"
        )
        print(
            f"checksums at {total:.2f} GB: +{write_time * total:.2f} s per save ({write_time:.3f} s/GB, "
            f"{100 * write_time * total / save:.1f}% of writing the files), verify {verify_cold:.3f} s/GB from disk, "
            f"{verify:.3f} s/GB cached"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
