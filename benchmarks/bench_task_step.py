#!/usr/bin/env python
"""Train-step images/s, peak memory and model-FLOP utilisation of the fine-tuning tasks at ViT-B/16:

- `--task classification` (224 px, 1000 classes, mean pooling + fc_norm, soft mixup targets; drop path 0 here
  because transformers' ViT has none, so both do the same work):
  `mae_hf.MAEForImageClassification` against `transformers.ViTForImageClassification` on the same encoder
  config (transformers' ViTMAE has no classifier; ViT is its encoder with a head), alternated round by round in
  one process; the summary is the median of per-round ratios (mae_hf / transformers images/s).
- `--task segmentation` (512 px, ADE20K's 150 classes, UperNet 768 wide on blocks 3/5/7/11 + auxiliary FCN head,
  the mmseg recipe's sizes): `mae_hf.MAEForSemanticSegmentation` alone (transformers has no plain-ViT UperNet
  to compare with).

A step is forward (loss) + backward + AdamW step + zero_grad, like `bench_pretrain_step.py` (timing, CPU peak RSS
and the matmul peak from `harness.py`). FLOPs are COUNTED, not estimated: `torch.utils.flop_counter`
over one forward + backward (matmuls and convolutions); MFU = images/s x FLOPs/image / the measured matmul peak.
Peak memory: CUDA `max_memory_allocated` above the resting state; CPU the step's peak RSS above the resting RSS
(in this process, `/proc/self/clear_refs`), per model.

    python benchmarks/bench_task_step.py --task classification --batch-size 8 --rounds 5
    python benchmarks/bench_task_step.py --task segmentation --batch-size 2 --rounds 3
    python benchmarks/bench_task_step.py --task segmentation --smoke               # seconds, for CI
    python benchmarks/bench_task_step.py --task classification --device cuda --dtype bf16 --batch-size 128
"""

import argparse
import statistics
from functools import partial

import torch
from harness import environment, matmul_peak_flops, median_ratio, mfu, timed
from torch.utils.flop_counter import FlopCounterMode

from mae_hf import MAEConfig, MAEForImageClassification, MAEForSemanticSegmentation
from mae_hf.configuration_mae import segmentation_config

BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16)
SMOKE = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, patch_size=8)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["classification", "segmentation"], default="classification")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast around forward")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny config (hidden 64, depth 4, 64 px), 2 rounds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.rounds, args.steps_per_round = 2, 2, 1
    return args


def classification_models(args, device):
    """(name, model, inputs) for mae_hf and transformers' ViT with the same encoder."""
    from transformers import ViTConfig, ViTForImageClassification

    sizes = SMOKE if args.smoke else BASE
    image_size, classes = (64, 10) if args.smoke else (224, 1000)
    torch.manual_seed(args.seed)
    ours = MAEForImageClassification(
        MAEConfig(**sizes, image_size=image_size, num_labels=classes, drop_path_rate=0.0, pooling="mean")
    )
    theirs = ViTForImageClassification(
        ViTConfig(**sizes, image_size=image_size, num_labels=classes, layer_norm_eps=1e-6, attn_implementation="sdpa")
    )
    pixels = torch.randn(args.batch_size, 3, image_size, image_size)
    soft_labels = torch.softmax(torch.randn(args.batch_size, classes), -1)  # mixup / cutmix targets
    hard_labels = soft_labels.argmax(-1)  # ViTForImageClassification takes class indices
    return [
        ("mae_hf", ours.to(device), {"pixel_values": pixels.to(device), "labels": soft_labels.to(device)}),
        ("transformers ViT", theirs.to(device), {"pixel_values": pixels.to(device), "labels": hard_labels.to(device)}),
    ]


def segmentation_models(args, device):
    sizes = SMOKE if args.smoke else BASE
    image_size, classes = (64, 150) if args.smoke else (512, 150)
    torch.manual_seed(args.seed)
    encoder = MAEConfig(**sizes, image_size=image_size, drop_path_rate=0.1)
    small_head = dict(out_indices=(0, 1, 2, 3), decode_channels=32, auxiliary_channels=16) if args.smoke else {}
    config = segmentation_config(encoder, num_labels=classes, **small_head)  # else the recipe's: blocks 3/5/7/11, 768
    model = MAEForSemanticSegmentation(config)
    pixels = torch.randn(args.batch_size, 3, image_size, image_size)
    labels = torch.randint(0, classes, (args.batch_size, image_size, image_size))
    return [("mae_hf UperNet", model.to(device), {"pixel_values": pixels.to(device), "labels": labels.to(device)})]


def step(model, inputs, optimizer, autocast):
    with autocast():
        loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def counted_flops(model, inputs, autocast) -> int:
    """Matmul + convolution FLOPs of one forward + backward, counted by torch."""
    with FlopCounterMode(display=False) as counter:
        with autocast():
            loss = model(**inputs).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    bf16 = args.dtype == "bf16"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    models = (classification_models if args.task == "classification" else segmentation_models)(args, device)
    rows = []
    for name, model, inputs in models:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        flops = counted_flops(model, inputs, autocast) / args.batch_size
        for _ in range(args.warmup):
            step(model, inputs, optimizer, autocast)
        rows.append(
            {
                "name": name,
                "model": model,
                "inputs": inputs,
                "optimizer": optimizer,
                "flops": flops,
                "ips": [],
                "peak": [],
            }
        )
    for round_index in range(args.rounds):
        order = rows if round_index % 2 == 0 else rows[::-1]
        for row in order:
            train_step = partial(step, row["model"], row["inputs"], row["optimizer"], autocast)
            seconds, peak = timed(train_step, args.steps_per_round, device, cpu_rss=True)
            row["ips"].append(args.batch_size * args.steps_per_round / seconds)
            row["peak"].append(peak)
    peak_flops = matmul_peak_flops(device, bf16)
    env = environment(device)
    print(
        f"# {args.task}, batch {args.batch_size}, {args.device} {args.dtype}, {env['device_name']}, torch "
        f"{env['torch']}, transformers {env['transformers']}, threads {env['threads']}; matmul peak "
        f"{peak_flops / 1e9:.0f} GFLOP/s"
    )
    print("| model | median img/s | min-max | step peak MiB | GFLOP/img (fwd+bwd) | MFU |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ips = statistics.median(row["ips"])
        print(
            f"| {row['name']} | {ips:.3g} | {min(row['ips']):.3g}-{max(row['ips']):.3g} | "
            f"{max(row['peak']) / 2**20:.0f} | {row['flops'] / 1e9:.1f} | {mfu(ips, row['flops'], peak_flops):.1%} |"
        )
    if len(rows) == 2:
        ratio = median_ratio(rows[0]["ips"], rows[1]["ips"])
        print(
            f"{args.task} step: mae_hf {ratio:.2f}x transformers' images/s (median of {args.rounds} per-round ratios)"
        )
    else:
        ips = statistics.median(rows[0]["ips"])
        print(f"{args.task} step: mae_hf {ips:.3g} images/s, MFU {mfu(ips, rows[0]['flops'], peak_flops):.1%}")


if __name__ == "__main__":
    main()
