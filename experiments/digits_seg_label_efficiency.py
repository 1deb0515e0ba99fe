#!/usr/bin/env python
"""`make demo-seg`: MAE pretraining and UperNet segmentation on `digits_seg`, one command, on the CPU:

    python experiments/digits_seg_label_efficiency.py          # the README's table and figures (`make demo-seg`)
    python experiments/digits_seg_label_efficiency.py --tiny   # the same steps on a tiny model, in seconds (CI)
    python experiments/digits_seg_label_efficiency.py --labelled 80 800 --seeds 0 1 2   # + 10 % labels, 3 seeds

1. MAE pretraining on the 10,000 unlabelled canvases (`--dataset_config_name unlabelled`,
   configs/pretrain_digits_seg.yaml);
2. UperNet fine-tuning (configs/segment_digits.yaml: 1,500 steps, or `--steps`) of that encoder and of a randomly
   initialised one on the first `--labelled` of the 800 labelled canvases (default: all; seeds `--seeds` below 800,
   the first seed at 800), each evaluated on the 200 validation canvases (digits no training canvas uses) every
   `--eval_steps`, scored as mmsegmentation scores;
3. a table of mIoU (each seed and mean ± std), per-class IoU of the runs on the most labels and whether they reach
   the demo's targets (mIoU >= 60, every digit >= 40), the learning curves (mIoU against fine-tuning steps: table
   and figure) and the overlay figures (image / ground truth / prediction) of both encoders (`--figures_dir`).

`--workers` processes (one torch thread each) share the runs: the random-init fine-tunes run while the encoder is
pretrained, the MAE fine-tunes once it is saved. Each run's own printout goes to WORK_DIR/RUN.log.
experiments/digits_seg_pretraining_budget.py asks the 10 %-label question against the pretraining budget with
these functions.
"""

import argparse
import contextlib
import json
import multiprocessing
import shutil
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LABELLED = 800
ARMS = ("random init", "MAE")
TARGET_MIOU, TARGET_CLASS_IOU = 60.0, 40.0  # what "decent" means for the demo (issue 21): mIoU, every digit's IoU
QUIET = ["--disable_tqdm", "true", "--log_level", "warning", "--report_to", "none", "--overwrite_output_dir"]
# --tiny: a 1-block, 32-wide model and a few steps on a few canvases; the same code path, in seconds.
TINY_MODEL = [
    "--hidden_size",
    "32",
    "--num_hidden_layers",
    "1",
    "--num_attention_heads",
    "2",
    "--intermediate_size",
    "64",
]
TINY_PRETRAIN = [
    *TINY_MODEL,
    "--decoder_hidden_size",
    "16",
    "--decoder_num_hidden_layers",
    "1",
    "--decoder_intermediate_size",
    "32",
    "--num_train_epochs",
    "1",
    "--warmup_epochs",
    "0",
    "--max_eval_samples",
    "16",
]
TINY_FINETUNE = [
    *TINY_MODEL,
    "--out_indices",
    "0",
    "0",
    "0",
    "0",
    "--decode_channels",
    "8",
    "--auxiliary_channels",
    "8",
    "--max_steps",
    "2",
    "--warmup_steps",
    "0",
    "--max_eval_samples",
    "8",
    "--num_visualized_images",
    "2",
]
TINY_CANVASES = {"train": 64, "validation": 16, "unlabelled": 64}  # the splits keep their seeds and digit pools


@contextlib.contextmanager
def logged(work: Path, name: str):
    """The scripts' own printout (metrics tables) goes to WORK/NAME.log; this script prints the summary."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / f"{name}.log", "w") as log, contextlib.redirect_stdout(log):
        yield


def start_worker(tiny: bool) -> None:
    """Each worker process: one torch thread (the runs share the cores), tiny canvases for --tiny."""
    import torch

    torch.set_num_threads(1)
    if tiny:
        from mae_hf.data import digits_seg

        digits_seg.NUM_CANVASES.update(TINY_CANVASES)


def pretrain(work: Path, tiny: bool, name: str = "pretrain", extra: tuple[str, ...] = ()) -> dict:
    """MAE pretraining on the unlabelled canvases (in a worker) into WORK/NAME, `extra` overriding the config: the
    encoder folder, its training steps, wall and CPU seconds."""
    import run_pretraining

    out, start, cpu = work / name, time.perf_counter(), time.process_time()
    with logged(work, name):
        run_pretraining.main(
            [
                str(ROOT / "configs" / "pretrain_digits_seg.yaml"),
                "--output_dir",
                str(out),
                *QUIET,
                *(TINY_PRETRAIN if tiny else []),
                *extra,
            ]
        )
    steps = json.loads((out / "trainer_state.json").read_text())["global_step"]
    return {
        "encoder": str(out),
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
    }


def finetune(work: Path, encoder: str | None, labelled: int, seed: int, extra: list[str], prefix: str = "mae") -> dict:
    """One UperNet fine-tune (in a worker) into WORK/NAME, NAME = PREFIX_LABELLED_seedSEED (`scratch` for random
    init): final mIoU and per-class IoU (%), its curve [(step, mIoU)], wall and CPU seconds."""
    import run_semantic_segmentation

    name = f"{prefix if encoder else 'scratch'}_{labelled}_seed{seed}"
    argv = [
        str(ROOT / "configs" / "segment_digits.yaml"),
        "--output_dir",
        str(work / name),
        "--seed",
        str(seed),
        "--max_train_samples",
        str(labelled),
        *QUIET,
        *extra,
    ]
    if encoder:
        argv += ["--model_name_or_path", encoder]
    start, cpu = time.perf_counter(), time.process_time()
    with logged(work, name):
        metrics = run_semantic_segmentation.main(argv)
    history = json.loads((work / name / "trainer_state.json").read_text())["log_history"]
    curve = sorted({h["step"]: 100 * h["eval_mean_iou"] for h in history if "eval_mean_iou" in h}.items())
    return {
        "run": name,
        "arm": ARMS[bool(encoder)],
        "labelled": labelled,
        "seed": seed,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "mean_iou": 100 * metrics["eval_mean_iou"],
        "per_class_iou": {
            key.removeprefix("eval_iou_"): 100 * value for key, value in metrics.items() if key.startswith("eval_iou_")
        },
        "curve": curve,
    }


def mean_std(values: list[float]) -> str:
    """'mean ± std (each run)' for several runs, the value alone for one."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"


def table(results: dict, seeds: list[int]) -> str:
    """The README's tables: mIoU per label count (mean ± std over seeds), per-class IoU of the one-seed runs, and
    mIoU at each evaluation of every run (the learning curves)."""
    counts = sorted(results[ARMS[0]])
    header = " | ".join(f"{n} labelled canvases ({100 * n // LABELLED} %), mIoU" for n in counts)
    lines = [f"| encoder | {header} |", "|---|" + "---|" * len(counts)]
    for arm in ARMS:
        lines.append(
            f"| {arm} | " + " | ".join(mean_std([r["mean_iou"] for r in results[arm][n]]) for n in counts) + " |"
        )
    most = counts[-1]
    classes = list(results[ARMS[0]][most][0]["per_class_iou"])
    lines += [
        "",
        f"IoU per class, {most} labelled canvases (seed {seeds[0]}):",
        "",
        "| encoder | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
    ]
    for arm in ARMS:
        per_class = results[arm][most][0]["per_class_iou"]
        lines.append(f"| {arm} | " + " | ".join(f"{per_class[c]:.1f}" for c in classes) + " |")
    for n in counts:  # one table per label count: the runs of one count share their evaluation steps
        curves = [r for arm in ARMS for r in results[arm][n] if r["curve"]]
        if curves:
            steps = [step for step, _ in curves[0]["curve"]]
            lines += [
                "",
                f"mIoU during fine-tuning, {n} labelled canvases (steps):",
                "",
                "| run | " + " | ".join(map(str, steps)) + " |",
                "|---|" + "---|" * len(steps),
            ]
            lines += [f"| {r['run']} | " + " | ".join(f"{v:.1f}" for _, v in r["curve"]) + " |" for r in curves]
    return "\n".join(lines)


def curves_figure(results: dict, path: Path) -> None:
    """mIoU against fine-tuning steps, one panel per label count: each run thin, the mean over seeds thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted(results[ARMS[0]])
    fig, axes = plt.subplots(1, len(counts), figsize=(max(4.5 * len(counts), 7.0), 3.8), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], counts):
        for arm, colour in zip(ARMS, ("tab:grey", "tab:blue")):
            runs = [r["curve"] for r in results[arm][n] if r["curve"]]
            for curve in runs:
                ax.plot(*zip(*curve), color=colour, alpha=0.35, linewidth=1)
            if runs:
                steps = [step for step, _ in runs[0]]
                mean = [statistics.mean(curve[i][1] for curve in runs) for i in range(len(steps))]
                ax.plot(
                    steps,
                    mean,
                    color=colour,
                    linewidth=2.2,
                    marker="o",
                    markersize=3,
                    label=f"{arm} ({len(runs)} seed{'s' * (len(runs) > 1)})",
                )
        ax.set(title=f"{n} labelled canvases ({100 * n // LABELLED} %)", xlabel="fine-tuning step")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    axes[0][0].set_ylabel("validation mIoU (%)")
    fig.suptitle("digits_seg: UperNet fine-tuning from the MAE encoder vs random init", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def schedule(work: Path, args, extra: list[str]) -> dict:
    """Every run on `args.workers` processes: pretraining and the random-init fine-tunes first, the MAE fine-tunes
    as soon as the encoder exists. {arm: {labelled: [result, ...]}} in seed order; the pretraining's result."""
    # the runs on most labels first (their evaluations cost most), so that no worker is left alone with one at the end
    runs = [
        (labelled, seed, extra)
        for labelled in sorted(args.labelled, reverse=True)
        for seed in (args.seeds if labelled < LABELLED else args.seeds[:1])
    ]
    results = {arm: {n: [] for n in args.labelled} for arm in ARMS}
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no torch thread pool inherited by a fork
    with ProcessPoolExecutor(args.workers, mp_context=context, initializer=start_worker, initargs=(args.tiny,)) as pool:
        pending: set[Future] = set()
        if args.pretrained:
            encoder, pretraining = args.pretrained, {"seconds": 0.0, "cpu_seconds": 0.0}
        else:
            encoder = None
            pending.add(pool.submit(pretrain, work, args.tiny))
        pending |= {pool.submit(finetune, work, None, n, seed, more) for n, seed, more in runs}
        if encoder:
            pending |= {pool.submit(finetune, work, encoder, n, seed, more) for n, seed, more in runs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if future.exception() is not None:  # a failed run ends the experiment; the queued ones are dropped
                    pool.shutdown(cancel_futures=True)
                result = future.result()
                if "encoder" in result:
                    encoder, pretraining = result["encoder"], result
                    print(f"MAE pretraining: {result['steps']} steps, {result['seconds']:.0f} s", flush=True)
                    pending |= {pool.submit(finetune, work, encoder, n, seed, more) for n, seed, more in runs}
                    continue
                results[result["arm"]][result["labelled"]].append(result)
                print(
                    f"{result['arm']}, {result['labelled']} labelled, seed {result['seed']}: "
                    f"mIoU {result['mean_iou']:.1f} ({result['seconds']:.0f} s)",
                    flush=True,
                )
    for by_count in results.values():
        for found in by_count.values():
            found.sort(key=lambda r: args.seeds.index(r["seed"]))
    return {"results": results, "pretraining": pretraining}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default=str(ROOT / "outputs" / "digits_seg_label_efficiency"))
    parser.add_argument(
        "--figures_dir",
        default=None,
        help="where the overlay and curves figures go (default: docs/; --tiny: the work dir)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="fine-tuning seeds of the runs on fewer than 800 canvases (mean ± std, each shown); 800: the first",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes sharing the runs, one torch thread each")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, a few steps: checks the command (CI)")
    parser.add_argument("--pretrained", default=None, help="reuse this MAE encoder instead of pretraining one")
    parser.add_argument(
        "--labelled",
        type=int,
        nargs="+",
        default=[LABELLED],
        help="labelled canvases per run, the first N (all seeds for fewer than 800, the first seed for 800)",
    )
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the config's)")
    parser.add_argument(
        "--eval_steps",
        type=int,
        default=None,
        help="evaluate every N steps, the learning curves (default: the config's)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    extra = [
        *(TINY_FINETUNE if args.tiny else []),
        *(["--max_steps", str(args.steps)] if args.steps else []),
        *(["--eval_strategy", "steps", "--eval_steps", str(args.eval_steps)] if args.eval_steps else []),
    ]
    work = Path(args.work_dir)
    figures = Path(args.figures_dir or (work if args.tiny else ROOT / "docs"))
    start = time.perf_counter()
    summary = schedule(work, args, extra)
    summary["seconds"] = time.perf_counter() - start
    report(work, figures, args, summary)
    return summary


def targets(results: dict, seeds: list[int]) -> str:
    """Whether each encoder's run on the most labels (first seed) reaches mIoU >= 60 and every digit >= 40."""
    most = max(results[ARMS[0]])
    lines = []
    for arm in ARMS:
        run = results[arm][most][0]
        digits = {c: v for c, v in run["per_class_iou"].items() if c != "background"}
        worst = min(digits, key=digits.get)
        met = run["mean_iou"] >= TARGET_MIOU and digits[worst] >= TARGET_CLASS_IOU
        lines.append(
            f"{arm}, {most} labelled canvases, seed {seeds[0]}: mIoU {run['mean_iou']:.1f}, lowest digit "
            f"{worst} {digits[worst]:.1f} -> targets (mIoU >= {TARGET_MIOU:g}, every digit >= "
            f"{TARGET_CLASS_IOU:g}) {'met' if met else 'MISSED'}"
        )
    return "\n".join(lines)


def report(work: Path, figures: Path, args, summary: dict) -> None:
    """The tables on stdout, results.json in the work dir, the overlay and curves figures in `figures`."""
    figures.mkdir(parents=True, exist_ok=True)
    most, seed = max(args.labelled), args.seeds[0]
    overlays = [figures / f"digits_seg_{prefix}_overlay.png" for prefix in ("mae", "scratch")]
    for overlay, prefix in zip(overlays, ("mae", "scratch")):
        shutil.copy(work / f"{prefix}_{most}_seed{seed}" / "segmentation.png", overlay)
    curves = figures / "digits_seg_learning_curves.png"
    curves_figure(summary["results"], curves)
    runs = [
        summary["pretraining"],
        *(r for by_count in summary["results"].values() for n in by_count.values() for r in n),
    ]
    print(
        f"\n{table(summary['results'], args.seeds)}\n\n{targets(summary['results'], args.seeds)}\n\n"
        f"total {summary['seconds'] / 60:.1f} min on {args.workers} worker(s) (pretraining "
        f"{summary['pretraining']['seconds'] / 60:.1f} min); CPU time of the runs "
        f"{sum(r['cpu_seconds'] for r in runs) / 60:.1f} min; figures: {', '.join(map(str, overlays))}, {curves}"
    )
    (work / "results.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
