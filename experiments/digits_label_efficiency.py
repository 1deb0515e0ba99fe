#!/usr/bin/env python
"""The seed's table at laptop scale: fine-tuning accuracy on scikit-learn's digits, from scratch vs from the MAE
encoder of `make demo`, with 10 % and 100 % of the labels, several seeds (mean ± std).

    make demo                                          # the pretrained encoder: outputs/pretrain_digits
    python experiments/digits_label_efficiency.py      # 12 fine-tuning runs, about 2 minutes each on 2 cores

Each run is announced with the time left, and shows its start banner and progress bar (stderr).

Every run trains for the same number of optimizer steps (480 at batch 64), so both label fractions get the same
compute; the subset of labelled examples is the same for every seed and arm (--label_fraction_seed 0).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = {1.0: 20, 0.1: 160}  # 24 vs 3 steps per epoch at batch 64: 480 steps either way


def run(pretrained: str | None, fraction: float, seed: int, out: Path) -> float:
    command = [
        sys.executable,
        str(ROOT / "run_image_classification.py"),
        str(ROOT / "configs" / "finetune_digits.yaml"),
        "--output_dir",
        str(out),
        "--overwrite_output_dir",
        "--seed",
        str(seed),
        "--label_fraction",
        str(fraction),
        "--num_train_epochs",
        str(EPOCHS[fraction]),
        "--eval_strategy",
        "no",
        "--disable_tqdm",
        "false",
    ]
    if pretrained:
        command += ["--model_name_or_path", pretrained]
    # stdout only repeats the metrics read below; stderr carries the run's banner, progress bar and warnings
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((out / "eval_results.json").read_text())["eval_accuracy"]


def time_left(elapsed: float, done: int, total: int) -> str:
    if not done:
        return ""
    return f" (about {elapsed / done * (total - done) / 60:.0f} min left)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default=str(ROOT / "outputs" / "pretrain_digits"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--work_dir", default=str(ROOT / "outputs" / "digits_label_efficiency"))
    parser.add_argument("--json", default=None, help="write the accuracies here")
    args = parser.parse_args(argv)
    if not (Path(args.pretrained) / "config.json").is_file():
        parser.error(f"no pretrained model in {args.pretrained}: run `make demo` first")

    arms = (("from scratch", None), ("MAE-pretrained", args.pretrained))
    runs = [(arm, path, fraction, seed) for arm, path in arms for fraction in args.fractions for seed in args.seeds]
    results, start = {}, time.monotonic()
    for number, (arm, pretrained, fraction, seed) in enumerate(runs, 1):
        out = Path(args.work_dir) / f"{arm.split()[0].lower()}_{fraction}_{seed}"
        print(
            f"[{number}/{len(runs)}] {arm}, {fraction:.0%} labels, seed {seed} -> {out}"
            f"{time_left(time.monotonic() - start, number - 1, len(runs))}",
            flush=True,
        )
        accuracy = 100 * run(pretrained, fraction, seed, out)
        results.setdefault((arm, fraction), []).append(accuracy)
        print(f"[{number}/{len(runs)}] {arm}, {fraction:.0%} labels, seed {seed}: {accuracy:.2f} %", flush=True)

    print("\n| encoder | " + " | ".join(f"{f:.0%} labels" for f in args.fractions) + " |")
    print("|---|" + "---|" * len(args.fractions))
    for arm in ("from scratch", "MAE-pretrained"):
        cells = [
            f"{statistics.mean(results[(arm, f)]):.1f} ± {statistics.stdev(results[(arm, f)]) if len(args.seeds) > 1 else 0:.1f}"
            for f in args.fractions
        ]
        print(f"| {arm} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{a} {f}": v for (a, f), v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
