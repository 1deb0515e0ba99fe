#!/usr/bin/env python
"""Train-step throughput of `mae_hf.MAEForPreTraining` against `transformers.ViTMAEForPreTraining`.

One train step = forward (loss) + backward + `AdamW.step()` + `zero_grad(set_to_none=True)`, exactly the same for
both models. Both models are built in ONE process from the SAME config (default ViT-B/16 at 224 with the official
512-wide, 8-deep decoder, mask ratio 0.75, norm_pix_loss, the same layer_norm_eps) and the same seed; our weights
are then copied into the transformers model (its fused-qkv <-> q/k/v split included), so it also gets non-zero
decoder position embeddings, which its 5.x init leaves at zero. Both see the same input batch and the same masking
noise, so they do the same work; the first warm-up losses are printed side by side as a check.

Timing: after `--warmup` untimed steps per model (the first one allocates the AdamW state), `--rounds` rounds each
time `--steps-per-round` consecutive steps of each model; the order of the two models alternates from round to
round (A B, B A, ...) so that neither always runs first. Per round and model: images/s = batch * steps / wall time
(`time.perf_counter`, with `torch.cuda.synchronize()` before and after the block on CUDA). Reported: the median
images/s of each model and the MEDIAN OF THE PER-ROUND RATIOS (mae_hf images/s / transformers images/s), which
cancels slow drifts of the machine (thermal, other load) that hit both models of a round alike.

`--mask-speedup` instead alternates OUR model at `--mask-ratio` (default 0.75) and at 0.0 (one model, one
optimizer, the same weights) and reports the median per-round ratio of step times, t(mask 0.0) / t(mask 0.75),
i.e. how much faster a step is thanks to encoding only the visible patches.

Memory (two numbers per model):
  * state MiB: exact bytes of parameters + buffers + AdamW state (the memory that stays between steps).
  * step peak MiB: the measured peak ABOVE that resting state during one step (activations, gradients, temporaries).
    CUDA: `torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()` around each timed block, after
    `torch.cuda.reset_peak_memory_stats()` (always on; both models live in the process, but the difference only
    counts what the step allocates). Caching-allocator reserve is not counted.
    CPU (only with `--memory`, it costs one extra process per model): a FRESH subprocess per model builds just that
    model, runs the warm-up step(s), then per step: `gc.collect()`, `malloc_trim(0)` (returns freed heap pages to
    the OS, so the baseline is not inflated by glibc's cache of the previous step), baseline = VmRSS, reset the
    kernel's peak-RSS mark by writing "5" to /proc/self/clear_refs, run the step, peak = VmHWM; the reported value
    is max(VmHWM - baseline) over `--steps-per-round` steps. This is resident memory of the whole process (torch's
    CPU allocator does not cache, so it tracks tensor memory closely), sampled exactly by the kernel rather than
    by a polling thread. If clear_refs is not writable the worker falls back to `ru_maxrss` of its first step
    minus the RSS before it (an upper bound that also counts the AdamW state allocation); the method used is
    printed and written to the JSON.

FLOPs / MFU (`--mfu`): analytic matmul FLOPs of a train step, taken as 3 x forward (backward = 2 x forward), with
    forward = 2*L*(p*p*C)*D                                   patch embedding, all L patches (before masking)
            + depth * [2*n*(4*D*D + 2*D*M) + 4*n*n*D]          encoder blocks on n = 1 + kept tokens
              (qkv + output projections, MLP, and the two attention matmuls QK^T and AV)
            + 2*n*D*Dd                                         decoder embedding
            + ddepth * [2*N*(4*Dd*Dd + 2*Dd*Md) + 4*N*N*Dd]    decoder blocks on N = 1 + L tokens
            + 2*N*Dd*(p*p*C)                                   pixel prediction
  (norms, GELU, softmax, loss and the optimizer are not counted). The peak is MEASURED: the best rate of a
  square matmul (2048 on CPU, 8192 on CUDA) in the step's compute dtype over ~1 s. MFU = images/s * FLOPs/image /
  that peak. The analytic GFLOPs/image are always written to the JSON.

Examples:
    python benchmarks/bench_pretrain_step.py --smoke                      # seconds, for CI
    python benchmarks/bench_pretrain_step.py --smoke --mask-speedup
    python benchmarks/bench_pretrain_step.py --rounds 3 --steps-per-round 1 --warmup 1 --batch-size 8   # CPU, minutes
    python benchmarks/bench_pretrain_step.py --device cuda --dtype bf16 --batch-size 128 --rounds 5 --steps-per-round 10 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from harness import (
    environment,
    format_mib,
    malloc_trim,
    matmul_peak_flops,
    median_ratio,
    mfu,
    reset_peak_rss,
    status_kib,
    timed,
)

ENCODERS = {  # name -> (hidden, depth, heads, mlp)
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "huge": (1280, 32, 16, 5120),
}
SIZE_NAMES = {(768, 12): "B", (1024, 24): "L", (1280, 32): "H"}
DECODER = dict(
    decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16, decoder_intermediate_size=2048
)
SMOKE = dict(
    image_size=32,
    patch_size=8,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=256,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=128,
)
WORKER_MARK = "BENCH_MEMORY_JSON "


# ----------------------------------------------------------------------------------------------------- arguments
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train-step throughput (forward + backward + AdamW step) of mae_hf.MAEForPreTraining vs "
        "transformers.ViTMAEForPreTraining on the same config, input and masking noise, alternating the two "
        "models round by round in one process. See the module docstring for the method.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16 = torch.autocast(bfloat16) around the forward (fp32 weights and AdamW state); "
        "meant for CUDA, also accepted on CPU",
    )
    parser.add_argument(
        "--attn",
        choices=("sdpa", "eager"),
        default="sdpa",
        help="attention implementation of the transformers model (sdpa is its fastest on CPU/GPU "
        "without extra packages); mae_hf always uses its default fused SDPA path",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model before the first round")
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument(
        "--mask-speedup",
        action="store_true",
        help="alternate mae_hf at --mask-ratio and at 0.0 (no transformers model) and report the "
        "median per-round ratio of step times t(0.0) / t(--mask-ratio)",
    )
    parser.add_argument("--model", choices=tuple(ENCODERS), default="base", help="encoder size (official decoder)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--layer-norm-eps", type=float, default=1e-6, help="used by BOTH models")
    parser.add_argument("--no-norm-pix-loss", action="store_true", help="plain pixel targets (default: norm_pix_loss)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny config (image 32, patch 8, hidden 64, depth 2, heads 4, mlp 256, decoder 32/1/4/128) "
        "that runs in seconds; overrides --model/--image-size/--patch-size",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--memory",
        action="store_true",
        help="on CPU, measure the step's peak RSS in a fresh subprocess per model (costs one extra "
        "process per model); on CUDA memory is always measured in-process",
    )
    parser.add_argument("--mfu", action="store_true", help="measure a matmul peak and report model FLOPs utilisation")
    parser.add_argument("--json", metavar="PATH", help="write all results to this JSON file")
    # Internal: the fresh process that measures CPU memory of one model.
    parser.add_argument(
        "--_memory-worker", dest="memory_worker", choices=("mae_hf", "transformers"), help=argparse.SUPPRESS
    )
    parser.add_argument("--_worker-mask-ratio", dest="worker_mask_ratio", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # forwarded to the memory workers
    for name in ("batch_size", "rounds", "steps_per_round"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if not 0.0 <= args.mask_ratio < 1.0:
        parser.error("--mask-ratio must be in [0, 1)")
    if args.mask_speedup and args.mask_ratio == 0.0:
        parser.error("--mask-speedup compares --mask-ratio with 0.0: give a --mask-ratio above 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    return args


def config_fields(args) -> dict:
    """Fields shared by MAEConfig and transformers.ViTMAEConfig (same names)."""
    if args.smoke:
        fields = dict(SMOKE)
    else:
        hidden, depth, heads, mlp = ENCODERS[args.model]
        fields = dict(
            image_size=args.image_size,
            patch_size=args.patch_size,
            hidden_size=hidden,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            intermediate_size=mlp,
            **DECODER,
        )
    fields.update(
        num_channels=3,
        hidden_act="gelu",
        qkv_bias=True,
        layer_norm_eps=args.layer_norm_eps,
        mask_ratio=args.mask_ratio,
        norm_pix_loss=not args.no_norm_pix_loss,
    )
    return fields


def describe(fields: dict, smoke: bool) -> str:
    size = SIZE_NAMES.get((fields["hidden_size"], fields["num_hidden_layers"]))
    size = size or f"D{fields['hidden_size']}x{fields['num_hidden_layers']}"
    text = f"ViT-{size}/{fields['patch_size']} {fields['image_size']}"
    return f"smoke {text}" if smoke else text


# -------------------------------------------------------------------------------------------------------- models
def build_mae_hf(fields: dict, seed: int, device: torch.device):
    from mae_hf import MAEConfig, MAEForPreTraining

    torch.manual_seed(seed)
    return MAEForPreTraining(MAEConfig(**fields)).to(device).train()


def build_transformers(fields: dict, seed: int, attn: str, device: torch.device):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(seed)
    config = ViTMAEConfig(**fields, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation=attn)
    return ViTMAEForPreTraining(config).to(device).train()


def copy_weights(ours, theirs) -> None:
    from mae_hf.checkpoint import to_transformers_state_dict

    theirs.load_state_dict(to_transformers_state_dict(ours.state_dict()), strict=True)


def make_optimizer(model, batch_size: int) -> torch.optim.Optimizer:
    """The MAE recipe's AdamW (lr = 1.5e-4 * batch / 256, betas (0.9, 0.95), wd 0.05), same for both models."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1.5e-4 * batch_size / 256, betas=(0.9, 0.95), weight_decay=0.05)


def make_batch(fields: dict, batch_size: int, seed: int, device: torch.device):
    generator = torch.Generator().manual_seed(seed + 1)
    size, patch = fields["image_size"], fields["patch_size"]
    pixel_values = torch.randn(batch_size, fields["num_channels"], size, size, generator=generator)
    noise = torch.rand(batch_size, (size // patch) ** 2, generator=generator)
    return pixel_values.to(device), noise.to(device)


@dataclass
class Variant:
    label: str
    kind: str  # "mae_hf" or "transformers"
    mask_ratio: float
    attn: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    forward: Callable[[], torch.Tensor]
    round_seconds: list = field(default_factory=list)  # wall time per step, one entry per round
    round_ips: list = field(default_factory=list)
    step_peak_bytes: list = field(default_factory=list)  # CUDA, per round
    first_loss: float | None = None


def mae_hf_forward(model, pixel_values, noise, mask_ratio):
    return lambda: model(pixel_values, noise=noise, mask_ratio=mask_ratio).loss


def transformers_forward(model, pixel_values, noise):
    return lambda: model(pixel_values, noise=noise).loss


def build_variants(args, fields, device, pixel_values, noise, only: str | None = None) -> list[Variant]:
    """Compare mode: [mae_hf, transformers]; --mask-speedup: [mae_hf @ mask_ratio, mae_hf @ 0.0] (one model).
    `only` (memory worker): build just that model."""
    variants = []
    if args.mask_speedup:
        ratio = args.mask_ratio if only is None else args.worker_mask_ratio
        ratios = [args.mask_ratio, 0.0] if only is None else [ratio]
        model = build_mae_hf(fields, args.seed, device)
        optimizer = make_optimizer(model, args.batch_size)
        attn = model.config._attn_implementation or "sdpa"
        for r in ratios:
            variants.append(
                Variant(
                    f"mae_hf mask {r:g}",
                    "mae_hf",
                    r,
                    attn,
                    model,
                    optimizer,
                    mae_hf_forward(model, pixel_values, noise, r),
                )
            )
        return variants
    ours = build_mae_hf(fields, args.seed, device)  # also the weight source of the transformers model
    if only in (None, "mae_hf"):
        variants.append(
            Variant(
                "mae_hf",
                "mae_hf",
                args.mask_ratio,
                ours.config._attn_implementation or "sdpa",
                ours,
                make_optimizer(ours, args.batch_size),
                mae_hf_forward(ours, pixel_values, noise, args.mask_ratio),
            )
        )
    if only in (None, "transformers"):
        theirs = build_transformers(fields, args.seed, args.attn, device)
        copy_weights(ours, theirs)
        if only == "transformers":
            del ours
        variants.append(
            Variant(
                "transformers",
                "transformers",
                args.mask_ratio,
                theirs.config._attn_implementation,
                theirs,
                make_optimizer(theirs, args.batch_size),
                transformers_forward(theirs, pixel_values, noise),
            )
        )
    return variants


# ---------------------------------------------------------------------------------------------------------- steps
def autocast_factory(args, device):
    if args.dtype == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def train_step(variant: Variant, autocast) -> torch.Tensor:
    """forward + backward + AdamW step + zero_grad(set_to_none=True). No torch.no_grad() anywhere here."""
    with autocast():
        loss = variant.forward()
    loss.backward()
    variant.optimizer.step()
    variant.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def state_bytes(variant: Variant) -> int:
    """Parameters + buffers + optimizer state (exact tensor bytes)."""
    total = sum(t.numel() * t.element_size() for t in variant.model.parameters())
    total += sum(t.numel() * t.element_size() for t in variant.model.buffers())
    for state in variant.optimizer.state.values():
        total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    return total


# --------------------------------------------------------------------------------------------------- CPU memory
def memory_worker(args) -> int:
    """Runs in a fresh process: peak RSS above the resting state during one train step of one model."""
    device = torch.device("cpu")
    fields = config_fields(args)
    pixel_values, noise = make_batch(fields, args.batch_size, args.seed, device)
    (variant,) = build_variants(args, fields, device, pixel_values, noise, only=args.memory_worker)
    gc.collect()
    autocast = autocast_factory(args, device)
    result = {}
    if reset_peak_rss():
        for _ in range(max(1, args.warmup)):
            train_step(variant, autocast)
        deltas = [
            timed(partial(train_step, variant, autocast), 1, device, cpu_rss=True)[1]
            for _ in range(args.steps_per_round)
        ]
        result["method"] = (
            "fresh subprocess per model; max over steps of VmHWM - VmRSS around one step after "
            "warm-up (peak reset via /proc/self/clear_refs, malloc_trim before the baseline)"
        )
        result["step_peak_bytes"] = max(deltas)
        result["step_peak_bytes_all"] = deltas
    else:
        gc.collect()
        malloc_trim()
        base = status_kib("VmRSS")
        train_step(variant, autocast)
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        result["method"] = (
            "fresh subprocess per model; ru_maxrss - VmRSS around the FIRST step (upper bound: "
            "includes the AdamW state allocation; /proc/self/clear_refs not writable)"
        )
        result["step_peak_bytes"] = (peak_kib - base) * 1024
    result["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(WORKER_MARK + json.dumps(result), flush=True)
    return 0


def measure_cpu_memory(args, variant: Variant) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        *args.argv,
        "--_memory-worker",
        variant.kind,
        "--_worker-mask-ratio",
        repr(variant.mask_ratio),
    ]
    proc = subprocess.run(command, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(WORKER_MARK):
            return json.loads(line[len(WORKER_MARK) :])
    raise RuntimeError(f"memory worker for {variant.label} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


# ------------------------------------------------------------------------------------------------------ FLOPs/MFU
def train_flops_per_image(fields: dict, mask_ratio: float) -> float:
    """Analytic matmul FLOPs of one train step per image: 3 x forward (see the module docstring)."""
    p, c = fields["patch_size"], fields["num_channels"]
    length = (fields["image_size"] // p) ** 2
    keep = int(length * (1 - mask_ratio))
    d, m, depth = fields["hidden_size"], fields["intermediate_size"], fields["num_hidden_layers"]
    dd, md, ddepth = (
        fields["decoder_hidden_size"],
        fields["decoder_intermediate_size"],
        fields["decoder_num_hidden_layers"],
    )

    def blocks(n, width, mlp, count):
        return count * (2 * n * (4 * width * width + 2 * width * mlp) + 4 * n * n * width)

    n_enc, n_dec = 1 + keep, 1 + length
    forward = 2 * length * p * p * c * d + blocks(n_enc, d, m, depth) + 2 * n_enc * d * dd
    forward += blocks(n_dec, dd, md, ddepth) + 2 * n_dec * dd * p * p * c
    return 3.0 * forward


# ------------------------------------------------------------------------------------------------------ reporting
def print_table(rows: list[dict], show_memory: bool, show_mfu: bool) -> None:
    header = ["model", "attn", "mask", "median img/s", "min-max img/s", "median step ms", "state MiB"]
    if show_memory:
        header.append("step peak MiB")
    if show_mfu:
        header += ["GFLOP/img", "MFU"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        cells = [
            row["label"],
            row["attn"],
            f"{row['mask_ratio']:g}",
            f"{row['median_images_per_s']:.2f}",
            f"{min(row['round_images_per_s']):.2f}-{max(row['round_images_per_s']):.2f}",
            f"{row['median_step_s'] * 1000:.1f}",
            format_mib(row["state_bytes"]),
        ]
        if show_memory:
            cells.append(format_mib(row.get("step_peak_bytes")))
        if show_mfu:
            cells += [f"{row['train_flops_per_image'] / 1e9:.2f}", f"{row['mfu'] * 100:.1f}%"]
        print("| " + " | ".join(cells) + " |")


# ----------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        return memory_worker(args)
    load_before = os.getloadavg()
    device = torch.device(args.device)
    fields = config_fields(args)
    desc = describe(fields, args.smoke)
    env = environment(device)
    print_header(args, desc, env, load_before)

    pixel_values, noise = make_batch(fields, args.batch_size, args.seed, device)
    built = time.perf_counter()
    variants = build_variants(args, fields, device, pixel_values, noise)
    print(
        f"# built in {time.perf_counter() - built:.1f} s; trainable parameters: "
        + ", ".join(f"{v.label} {sum(p.numel() for p in v.model.parameters() if p.requires_grad):,}" for v in variants)
    )
    autocast = autocast_factory(args, device)
    loss_check = warm_up(args, variants, autocast)
    states = {id(v): state_bytes(v) for v in variants}
    timed_s = run_rounds(args, variants, device, autocast)
    ratios = [x / y for x, y in zip(variants[0].round_ips, variants[1].round_ips, strict=True)]
    ratio = median_ratio(variants[0].round_ips, variants[1].round_ips)
    rows, memory_method, peak_flops = result_rows(args, fields, variants, states, device)

    summary, setting, load_after = report(args, desc, rows, ratios, ratio, memory_method, peak_flops, timed_s)
    if args.json:
        write_json(
            args.json,
            {
                "summary": summary,
                "mode": "mask_speedup" if args.mask_speedup else "compare",
                "ratio_definition": (
                    "step time at mask 0 / step time at --mask-ratio (= images/s ratio)"
                    if args.mask_speedup
                    else "mae_hf images/s / transformers images/s"
                ),
                "median_ratio": ratio,
                "round_ratios": ratios,
                "setting": setting,
                "args": {
                    k: v for k, v in vars(args).items() if k not in ("memory_worker", "worker_mask_ratio", "argv")
                },
                "config": fields,
                "environment": env,
                "load_average_before": load_before,
                "load_average_after": load_after,
                "loss_check": loss_check,
                "memory_method": memory_method,
                "matmul_peak_flops": peak_flops,
                "results": rows,
            },
        )
    return 0


def print_header(args, desc: str, env: dict, load_before) -> None:
    print(
        f"# {desc}, batch {args.batch_size}, {args.device} {args.dtype}, threads {env['threads']}, "
        f"torch {env['torch']}, transformers {env['transformers']}, {env['device_name']}"
    )
    print(
        f"# load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
        f"({env['cpu_count']} CPUs)"
    )
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        print("# WARNING: the machine looks busy (1-min load average above half the CPUs): timings may be noisy")
    if not args.mask_speedup and args.mask_ratio == 0.0:
        print("# WARNING: mask ratio 0 makes transformers' loss 0/0 = NaN (the work done is the same)")


def warm_up(args, variants: list[Variant], autocast) -> dict | None:
    """`--warmup` untimed steps per model; in compare mode, the first losses of both models side by side."""
    for i in range(args.warmup):
        for variant in variants:
            loss = train_step(variant, autocast)
            if i == 0:
                variant.first_loss = float(loss)
    if not args.warmup or args.mask_speedup:
        return None
    a, b = (v.first_loss for v in variants)
    print(
        f"# same weights, input and noise: first warm-up loss mae_hf {a:.6f}, transformers {b:.6f} "
        f"(|diff| {abs(a - b):.2e})"
    )
    return {"mae_hf": a, "transformers": b, "abs_diff": abs(a - b)}


def run_rounds(args, variants: list[Variant], device, autocast) -> float:
    """The timed rounds, the order of the variants alternating; returns the seconds they took."""
    started = time.perf_counter()
    for r in range(args.rounds):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            seconds, peak = timed(partial(train_step, variant, autocast), args.steps_per_round, device)
            variant.round_seconds.append(seconds / args.steps_per_round)
            variant.round_ips.append(args.batch_size * args.steps_per_round / seconds)
            if peak is not None:
                variant.step_peak_bytes.append(peak)
        print(
            f"# round {r + 1}/{args.rounds}: " + ", ".join(f"{v.label} {v.round_ips[-1]:.2f} img/s" for v in variants),
            flush=True,
        )
    return time.perf_counter() - started


def result_rows(args, fields, variants: list[Variant], states: dict, device):
    """(one row per variant, how the step peak memory was measured, the matmul peak FLOP/s or None)."""
    memory_method = None
    if device.type == "cuda":
        memory_method = "in-process torch.cuda.max_memory_allocated() - memory_allocated() around each timed block"
    peak_flops = matmul_peak_flops(device, args.dtype == "bf16") if args.mfu else None
    rows = []
    for variant in variants:
        row = {
            "label": variant.label,
            "kind": variant.kind,
            "attn": variant.attn,
            "mask_ratio": variant.mask_ratio,
            "round_images_per_s": variant.round_ips,
            "round_step_s": variant.round_seconds,
            "median_images_per_s": statistics.median(variant.round_ips),
            "median_step_s": statistics.median(variant.round_seconds),
            "state_bytes": states[id(variant)],
            "first_warmup_loss": variant.first_loss,
            "train_flops_per_image": train_flops_per_image(fields, variant.mask_ratio),
        }
        if variant.step_peak_bytes:
            row["step_peak_bytes"] = max(variant.step_peak_bytes)
        elif args.memory:
            measured = measure_cpu_memory(args, variant)
            row["step_peak_bytes"] = measured["step_peak_bytes"]
            row["memory_worker"] = measured
            memory_method = measured["method"]
        if peak_flops:
            row["mfu"] = mfu(row["median_images_per_s"], row["train_flops_per_image"], peak_flops)
        rows.append(row)
    return rows, memory_method, peak_flops


def report(args, desc, rows, ratios, ratio, memory_method, peak_flops, timed_s) -> tuple[str, str, tuple]:
    """Print the table and the summary line; returns (summary, setting, load average after)."""
    print()
    print_table(rows, show_memory="step_peak_bytes" in rows[0], show_mfu=peak_flops is not None)
    print()
    print("per-round ratios: " + ", ".join(f"{r:.3f}" for r in ratios))
    if memory_method:
        print(f"memory: state = params + buffers + AdamW state (exact); step peak = {memory_method}")
    if peak_flops:
        print(
            f"MFU: analytic matmul FLOPs (3 x forward) / measured {args.dtype} matmul peak "
            f"{peak_flops / 1e9:.1f} GFLOP/s"
        )
    setting = f"{desc}, batch {args.batch_size}, {args.device} {args.dtype}"
    if args.mask_speedup:
        summary = (
            f"mae_hf train-step time mask 0 / mask {args.mask_ratio:g}: {ratio:.2f}x "
            f"(median of {args.rounds} rounds), {setting}"
        )
    else:
        summary = (
            f"mae_hf / transformers train-step images/s: {ratio:.2f}x (median of {args.rounds} "
            f"rounds), {setting}, transformers attn {args.attn}"
        )
    load_after = os.getloadavg()
    print(
        f"# timed part {timed_s:.1f} s; load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"
    )
    print(summary)
    return summary, setting, load_after


def write_json(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
