#!/usr/bin/env python
"""Does MAE pretraining pay for segmentation when labels are few? One command, on `digits_seg`, on the CPU:

    python experiments/digits_seg_label_efficiency.py          # the README's table (see there for the time)
    python experiments/digits_seg_label_efficiency.py --tiny   # the same steps on a tiny model, in seconds (CI)
    # the learning curves behind the table: longer fine-tunes of the same encoders, evaluated every 250 steps
    python experiments/digits_seg_label_efficiency.py --pretrained outputs/digits_seg_label_efficiency/pretrain \
        --labelled 800 --steps 2000 --eval_steps 250 --work_dir outputs/digits_seg_curves

1. MAE pretraining on the 10,000 unlabelled canvases (`--dataset_config_name unlabelled`,
   configs/pretrain_digits_seg.yaml);
2. UperNet fine-tuning (configs/segment_digits.yaml) of that encoder and of a randomly initialised one, on 10 % of
   the 800 labelled canvases (the first 80; seeds 0, 1, 2) and on all 800 (seed 0) -- every run the same number
   of steps;
3. evaluation on the 200 validation canvases, whose digits no training canvas uses; a table of mIoU (each seed and
   mean ± std), per-class IoU of the 100 % runs, and the overlay figure of the MAE encoder's 100 % run.

The scripts run in this process (`main(argv)`), one after the other.
"""

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import run_pretraining
import run_semantic_segmentation
from mae_hf.data import digits_seg

LABELLED = 800
ARMS = ("random init", "MAE")
QUIET = ["--disable_tqdm", "true", "--log_level", "warning", "--report_to", "none", "--overwrite_output_dir"]
# --tiny: a 1-block, 32-wide model and a few steps on a few canvases; the same code path, in seconds.
TINY_MODEL = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
              "--intermediate_size", "64"]
TINY_PRETRAIN = [*TINY_MODEL, "--decoder_hidden_size", "16", "--decoder_num_hidden_layers", "1",
                 "--decoder_intermediate_size", "32", "--num_train_epochs", "1", "--warmup_epochs", "0",
                 "--max_eval_samples", "16"]
TINY_FINETUNE = [*TINY_MODEL, "--out_indices", "0", "0", "0", "0", "--decode_channels", "8",
                 "--auxiliary_channels", "8", "--max_steps", "2", "--warmup_steps", "0", "--max_eval_samples", "8",
                 "--eval_strategy", "no", "--num_visualized_images", "2"]


@contextlib.contextmanager
def logged(work: Path, name: str):
    """The scripts' own printout (metrics tables) goes to WORK/NAME.log; this script prints the summary."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / f"{name}.log", "w") as log, contextlib.redirect_stdout(log):
        yield


def pretrain(work: Path, tiny: bool) -> tuple[str, float]:
    """MAE pretraining on the unlabelled canvases; (encoder folder, seconds)."""
    out = work / "pretrain"
    start = time.perf_counter()
    with logged(work, "pretrain"):
        run_pretraining.main([str(ROOT / "configs" / "pretrain_digits_seg.yaml"), "--output_dir", str(out), *QUIET,
                              *(TINY_PRETRAIN if tiny else [])])
    return str(out), time.perf_counter() - start


def finetune(work: Path, encoder: str | None, labelled: int, seed: int, extra: list[str]) -> dict:
    name = f"{'mae' if encoder else 'scratch'}_{labelled}_seed{seed}"
    argv = [str(ROOT / "configs" / "segment_digits.yaml"), "--output_dir", str(work / name), "--seed", str(seed),
            "--max_train_samples", str(labelled), *QUIET, *extra]
    if encoder:
        argv += ["--model_name_or_path", encoder]
    start = time.perf_counter()
    with logged(work, name):
        metrics = run_semantic_segmentation.main(argv)
    history = json.loads((work / name / "trainer_state.json").read_text())["log_history"]
    return {"run": name, "seconds": time.perf_counter() - start, "mean_iou": 100 * metrics["eval_mean_iou"],
            "per_class_iou": {key.removeprefix("eval_iou_"): 100 * value for key, value in metrics.items()
                              if key.startswith("eval_iou_")},
            "curve": [(h["step"], 100 * h["eval_mean_iou"]) for h in history if "eval_mean_iou" in h]}


def mean_std(values: list[float]) -> str:
    """'mean ± std (each run)' for several runs, the value alone for one."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"


def table(results: dict, seeds: list[int]) -> str:
    """The README's tables: mIoU per label count (mean ± std over seeds), per-class IoU of the one-seed runs."""
    counts = sorted(results[ARMS[0]])
    header = " | ".join(f"{n} labelled canvases ({100 * n // LABELLED} %), mIoU" for n in counts)
    lines = [f"| encoder | {header} |", "|---|" + "---|" * len(counts)]
    for arm in ARMS:
        lines.append(f"| {arm} | " + " | ".join(mean_std([r["mean_iou"] for r in results[arm][n]]) for n in counts) + " |")
    most = counts[-1]
    classes = list(results[ARMS[0]][most][0]["per_class_iou"])
    lines += ["", f"IoU per class, {most} labelled canvases (seed {seeds[0]}):", "",
              "| encoder | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for arm in ARMS:
        per_class = results[arm][most][0]["per_class_iou"]
        lines.append(f"| {arm} | " + " | ".join(f"{per_class[c]:.1f}" for c in classes) + " |")
    curves = [(arm, n, r) for arm in ARMS for n in counts for r in results[arm][n] if r["curve"]]
    if curves:
        steps = [step for step, _ in curves[0][2]["curve"]]
        lines += ["", "mIoU during fine-tuning (steps):", "",
                  "| run | " + " | ".join(map(str, steps)) + " |", "|---|" + "---|" * len(steps)]
        lines += [f"| {r['run']} | " + " | ".join(f"{v:.1f}" for _, v in r["curve"]) + " |" for _, _, r in curves]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default=str(ROOT / "outputs" / "digits_seg_label_efficiency"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="fine-tuning seeds at 10 %% labels (mean ± std, each shown); 100 %%: the first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, a few steps: checks the command (CI)")
    parser.add_argument("--pretrained", default=None, help="reuse this MAE encoder instead of pretraining one")
    parser.add_argument("--labelled", type=int, nargs="+", default=[LABELLED // 10, LABELLED],
                        help="labelled canvases per run (all seeds for fewer than 800, the first seed for 800)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the config's)")
    parser.add_argument("--eval_steps", type=int, default=None, help="also evaluate every N steps (curves)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    saved = dict(digits_seg.NUM_CANVASES)
    if args.tiny:  # few canvases to build; the splits keep their seeds and pools
        digits_seg.NUM_CANVASES.update(train=64, validation=16, unlabelled=64)
    extra = [*(TINY_FINETUNE if args.tiny else []), *(["--max_steps", str(args.steps)] if args.steps else []),
             *(["--eval_strategy", "steps", "--eval_steps", str(args.eval_steps)] if args.eval_steps else [])]
    try:
        return run_all(Path(args.work_dir), args, extra)
    finally:
        digits_seg.NUM_CANVASES.update(saved)


def run_all(work: Path, args, extra: list[str]) -> dict:
    start = time.perf_counter()
    encoder, pretrain_seconds = (args.pretrained, 0.0) if args.pretrained else pretrain(work, args.tiny)
    print(f"MAE pretraining: {pretrain_seconds:.0f} s", flush=True)
    results = {arm: {n: [] for n in args.labelled} for arm in ARMS}
    for arm, source in zip(ARMS, (None, encoder)):
        for labelled in args.labelled:
            for seed in args.seeds if labelled < LABELLED else args.seeds[:1]:
                result = finetune(work, source, labelled, seed, extra)
                results[arm][labelled].append(result)
                print(f"{arm}, {labelled} labelled, seed {seed}: mIoU {result['mean_iou']:.1f} "
                      f"({result['seconds']:.0f} s)", flush=True)
    total = time.perf_counter() - start
    figure = work / f"mae_{max(args.labelled)}_seed{args.seeds[0]}" / "segmentation.png"
    shutil.copy(figure, work / "segmentation_mae.png")
    print(f"\n{table(results, args.seeds)}\n\ntotal {total / 60:.1f} min (pretraining {pretrain_seconds / 60:.1f} min); "
          f"figure: {work / 'segmentation_mae.png'}")
    summary = {"seconds": total, "pretrain_seconds": pretrain_seconds, "results": results}
    (work / "results.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
