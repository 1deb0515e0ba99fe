#!/usr/bin/env python
"""Resident memory per process of ViT-B/16 MAE pretraining (official decoder, 224 px, batch 2 per process, fp32,
AdamW) with one process and with 2 CPU processes under each engine:

    python benchmarks/bench_engine_memory.py            # about 5 minutes on 2 cores, ~6 GiB of RAM at its peak

Each configuration is one launch of run_pretraining.py (3 training steps, no evaluation, no checkpoint) through the
test launcher tests/cpu_engines.py (which turns FSDP and DeepSpeed on for CPU processes) with the shipped configs.
Each process reports its resident set when training starts (model built, wrapped by the engine) and its peak (the
first optimizer step creates AdamW's two moments). CPU numbers: the CPU allocator keeps freed pages, so what a
sharding engine frees after gathering shows less than on a GPU; the parameter + gradient + optimizer share per
process is what the engines divide (DDP: all of it on every process; ZeRO-2: gradients and optimizer state
split; ZeRO-3 / FSDP: parameters too).
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import environment  # noqa: E402

CONFIGS = {
    "1 process": [],
    "DDP": [],
    "ZeRO-2": ["--deepspeed", "configs/deepspeed/zero2.json"],
    "ZeRO-3": ["--deepspeed", "configs/deepspeed/zero3.json"],
    "FSDP2": ["--fsdp", "--fsdp_config", "configs/fsdp/fsdp2.json"],
    "FSDP1": ["--fsdp", "--fsdp_config", "configs/fsdp/fsdp1.json"],
}
RUN = (
    "--dataset_name digits --max_train_samples 64 --image_size 224 --per_device_train_batch_size 2 --max_steps 3 "
    "--do_eval false --save_strategy no --report_to none --dataloader_num_workers 0 --warmup_steps 0 "
    "--learning_rate 1e-4 --use_cpu --seed 0"
).split()


def measure(name: str, folder: Path) -> list[dict]:
    import subprocess

    processes = 1 if name == "1 process" else 2
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    line = [*launcher, str(ROOT / "tests" / "cpu_engines.py"), str(ROOT / "run_pretraining.py"), *RUN]
    line += ["--output_dir", str(folder / "out"), *CONFIGS[name]]
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT))
    env["MAE_HF_TEST_MEMORY_LOG"] = str(folder)
    done = subprocess.run(line, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    if done.returncode:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return [json.loads((folder / f"memory_{rank}.json").read_text()) for rank in range(processes)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args(argv)
    import torch

    from mae_hf import MAEConfig, MAEForPreTraining

    model = MAEForPreTraining(MAEConfig())  # ViT-B/16 and the official decoder: the defaults
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(environment(torch.device("cpu")))
    print(f"{trainable / 1e6:.1f} M trainable parameters; their weights, gradients and AdamW's two moments in fp32: ")
    print(f"{trainable * 16 / 2**20:.0f} MiB for the whole model\n")
    print("| engine | processes | resident at train start, MiB | peak resident, MiB |\n|---|---|---|---|")
    for name in args.configs:
        with tempfile.TemporaryDirectory() as folder:
            ranks = measure(name, Path(folder))
        start = " / ".join(f"{r['train_begin']:.0f}" for r in ranks)
        peak = " / ".join(f"{r['peak']:.0f}" for r in ranks)
        print(f"| {name} | {len(ranks)} | {start} | {peak} |", flush=True)


if __name__ == "__main__":
    main()
