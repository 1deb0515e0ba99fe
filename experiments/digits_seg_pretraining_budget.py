#!/usr/bin/env python
"""How does MAE's advantage at 10 % labels change with the pretraining budget? One command, on `digits_seg`:

    python experiments/digits_seg_pretraining_budget.py --work_dir /work/outputs/i21   # hours on one thread
    python experiments/digits_seg_pretraining_budget.py --tiny --work_dir /tmp/budget  # the same path, seconds (CI)

For each budget (`--epochs`, default 5, 20 and 64 epochs of the 10,000 unlabelled canvases = 785, 3,140 and 10,048
steps of 64), its OWN MAE pretraining run with its own full schedule (configs/pretrain_digits_seg.yaml with
`--num_train_epochs E --warmup_epochs E/10`: the 5-epoch run is `make demo-seg`'s encoder), then

1. the per-patch linear probe of experiments/digits_seg_probe.py on each block (and once on the random init);
2. the demo's fine-tuning recipe (configs/segment_digits.yaml, unchanged, none of it tuned on the validation
   canvases) on 10 % of the labels (the first 80 canvases), seeds 0, 1, 2 -- from that encoder, and once from
   random init with the same seeds;

and a table and a figure (`--figures_dir`): the mIoU gain of MAE over random init (per seed: MAE seed s minus random
init seed s, the same data order) against the pretraining steps, the mIoU of both arms, the probe beside them.

One worker process with one torch thread runs everything in order. Each finished run is written at once to
WORK_DIR/results.json and skipped when the command is started again; a pretraining run saves a checkpoint every
`--save_steps` and resumes the newest complete one, so a crash or a killed session loses minutes, not runs.
"""

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import digits_seg_label_efficiency as base  # noqa: E402
from digits_seg_probe import probe_encoder  # noqa: E402

from mae_hf.run_directory.files import write_json_atomic  # noqa: E402
from mae_hf.run_directory.resume import newest_complete_checkpoint  # noqa: E402

MAE_LEAD = 5.0  # mIoU points: the lead the question asks about
WARMUP_SHARE = 0.1  # of each budget's epochs: the demo's 0.5 of 5


def budget_name(epochs: float) -> str:
    return f"mae{epochs:g}ep"


def pretrain_budget(work: Path, tiny: bool, epochs: float, save_steps: int) -> dict:
    """One budget's pretraining (in the worker), resumed from its newest complete checkpoint if a previous start
    left one."""
    out = work / f"pretrain_{epochs:g}ep"
    extra = [
        "--num_train_epochs",
        f"{epochs:g}",
        "--warmup_epochs",
        f"{WARMUP_SHARE * epochs:g}",
        "--save_strategy",
        "steps",
        "--save_steps",
        str(save_steps),
        "--save_total_limit",
        "1",
    ]
    if out.is_dir() and newest_complete_checkpoint(str(out))[0]:
        extra += ["--resume_from_checkpoint", "latest"]
    return base.pretrain(work, tiny, out.name, tuple(extra))


def probe(encoder: str, canvases: int, random_init: bool) -> dict:
    """The probe (in the worker): accuracy per block in %, wall seconds."""
    start, cpu = time.perf_counter(), time.process_time()
    accuracy = probe_encoder(encoder, canvases, random_init)
    return {
        "probe": [100 * a for a in accuracy],
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
    }


class Record:
    """WORK/results.json: {"pretraining": {name: result}, "probes": {name: result}, "finetunes": {name: result}},
    rewritten (atomically) after every run; a run already in it is not run again."""

    def __init__(self, work: Path):
        self.path = work / "results.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        for section in ("pretraining", "probes", "finetunes"):
            self.data.setdefault(section, {})

    def run(self, pool, section: str, name: str, function, *args) -> dict:
        if name in self.data[section]:
            print(f"{section}/{name}: already recorded, skipped", flush=True)
            return self.data[section][name]
        print(f"{section}/{name}: running ({time.strftime('%H:%M:%S')})", flush=True)
        result = pool.submit(function, *args).result()
        self.data[section][name] = result
        write_json_atomic(str(self.path), self.data)
        shown = {k: v for k, v in result.items() if k in ("steps", "probe", "mean_iou", "seconds", "cpu_seconds")}
        print(f"{section}/{name}: {json.dumps(shown)}", flush=True)
        return result


def run_all(args, work: Path, record: Record) -> None:
    """Every run in order, one worker: per budget pretraining, probe, fine-tunes; random init after the first
    budget (its probe needs a saved config), so the first comparison is complete early."""
    extra = [*(base.TINY_FINETUNE if args.tiny else []), *(["--max_steps", str(args.steps)] if args.steps else [])]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=base.start_worker, initargs=(args.tiny,)) as pool:
        for index, epochs in enumerate(args.epochs):
            name = budget_name(epochs)
            encoder = record.run(pool, "pretraining", name, pretrain_budget, work, args.tiny, epochs, args.save_steps)
            record.run(pool, "probes", name, probe, encoder["encoder"], args.probe_canvases, False)
            if index == 0:
                record.run(pool, "probes", "random init", probe, encoder["encoder"], args.probe_canvases, True)
                for seed in args.seeds:
                    record.run(
                        pool,
                        "finetunes",
                        f"scratch_{args.labelled}_seed{seed}",
                        base.finetune,
                        work,
                        None,
                        args.labelled,
                        seed,
                        extra,
                    )
            for seed in args.seeds:
                record.run(
                    pool,
                    "finetunes",
                    f"{name}_{args.labelled}_seed{seed}",
                    base.finetune,
                    work,
                    encoder["encoder"],
                    args.labelled,
                    seed,
                    extra,
                    name,
                )


def rows(args, data: dict) -> list[dict]:
    """One row per budget: steps, probe per block, mIoU per seed of both arms, gain per seed (MAE - random init)."""
    finetunes = data["finetunes"]
    scratch = [finetunes[f"scratch_{args.labelled}_seed{s}"]["mean_iou"] for s in args.seeds]
    found = []
    for epochs in args.epochs:
        name = budget_name(epochs)
        mae = [finetunes[f"{name}_{args.labelled}_seed{s}"]["mean_iou"] for s in args.seeds]
        found.append(
            {
                "epochs": epochs,
                "steps": data["pretraining"][name]["steps"],
                "probe": data["probes"][name]["probe"],
                "mae": mae,
                "scratch": scratch,
                "gain": [m - s for m, s in zip(mae, scratch)],
            }
        )
    return found


def table(args, data: dict, found: list[dict]) -> str:
    blocks = len(data["probes"]["random init"]["probe"])
    probe_header = "probe per block (%, " + ", ".join(map(str, range(blocks))) + ")"
    seeds = ", ".join(map(str, args.seeds))
    lines = [
        f"| pretraining | steps | {probe_header} | MAE mIoU (seeds {seeds}) | random init mIoU | MAE - random init |",
        "|---|---|---|---|---|---|",
        "| none (random init) | 0 | "
        + " / ".join(f"{p:.1f}" for p in data["probes"]["random init"]["probe"])
        + f" | | {base.mean_std(found[0]['scratch'])} | |",
    ]
    for row in found:
        lines.append(
            f"| {row['epochs']:g} epochs | {row['steps']} | "
            + " / ".join(f"{p:.1f}" for p in row["probe"])
            + f" | {base.mean_std(row['mae'])} | {base.mean_std(row['scratch'])} | {signed(row['gain'])} |"
        )
    return "\n".join(lines)


def signed(gains: list[float]) -> str:
    mean = statistics.mean(gains)
    spread = f" ± {statistics.stdev(gains):.1f}" if len(gains) > 1 else ""
    return f"{mean:+.1f}{spread} ({', '.join(f'{g:+.1f}' for g in gains)})"


def verdict(found: list[dict]) -> str:
    """Which budgets give MAE a lead of >= 5 mIoU on the mean of the seeds (and on every seed)."""
    leads = [r for r in found if statistics.mean(r["gain"]) >= MAE_LEAD]
    if not leads:
        best = max(found, key=lambda r: statistics.mean(r["gain"]))
        return (
            f"MAE never leads by >= {MAE_LEAD:g} mIoU on the mean of the seeds; the largest mean gain is "
            f"{statistics.mean(best['gain']):+.1f} at {best['steps']} pretraining steps"
        )
    return "; ".join(
        f"MAE leads by {statistics.mean(r['gain']):+.1f} mIoU at {r['steps']} pretraining steps "
        f"({'on every seed' if min(r['gain']) >= MAE_LEAD else 'not on every seed'})"
        for r in leads
    )


def figure(args, data: dict, found: list[dict], path: Path) -> None:
    """Three panels against pretraining steps (log axis): the gain per seed and its mean, the mIoU of both arms,
    the probe per block (random init dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["steps"] for r in found]
    fig, (gain, miou, probes) = plt.subplots(1, 3, figsize=(14, 3.9))
    for i, seed in enumerate(args.seeds):
        marker = "osv^D"[i % 5]
        gain.plot(steps, [r["gain"][i] for r in found], marker, color="tab:blue", alpha=0.5, label=f"seed {seed}")
    gain.plot(steps, [statistics.mean(r["gain"]) for r in found], "-", color="tab:blue", lw=2.2, label="mean")
    gain.axhline(0, color="black", lw=0.8)
    gain.axhline(MAE_LEAD, color="tab:red", ls=":", lw=1, label=f"+{MAE_LEAD:g} mIoU")
    gain.set(ylabel="mIoU gain, MAE - random init", title=f"{args.labelled} labelled canvases: MAE's gain")
    for arm, key, colour in (("MAE", "mae", "tab:blue"), ("random init", "scratch", "tab:grey")):
        for i in range(len(args.seeds)):
            miou.plot(steps, [r[key][i] for r in found], "o", color=colour, alpha=0.35)
        miou.plot(steps, [statistics.mean(r[key]) for r in found], "-", color=colour, lw=2.2, label=arm)
    miou.set(ylabel="validation mIoU (%)", title="mIoU (dots: seeds, line: mean)")
    colours = plt.get_cmap("viridis")
    random = data["probes"]["random init"]["probe"]
    for block in range(len(random)):
        colour = colours(block / max(len(random) - 1, 1))
        probes.plot(steps, [r["probe"][block] for r in found], "o-", color=colour, label=f"block {block}")
        probes.axhline(random[block], color=colour, ls="--", lw=0.8)
    probes.axhline(10, color="black", lw=0.8, ls=":")
    probes.set(ylabel="probe accuracy (%)", title="digit per patch, linear probe (dashed: random init)")
    for ax in (gain, miou, probes):
        ax.set_xscale("log")
        ax.set_xlabel("MAE pretraining steps (batch 64)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("digits_seg: does more MAE pretraining pay at 10 % labels?", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default=str(base.ROOT / "outputs" / "digits_seg_pretraining_budget"))
    parser.add_argument("--figures_dir", default=None, help="the figure's folder (default: docs/; --tiny: work dir)")
    parser.add_argument("--epochs", type=float, nargs="+", default=[5, 20, 64], help="pretraining budgets, epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
    parser.add_argument("--labelled", type=int, default=base.LABELLED // 10, help="labelled canvases (the first N)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the config's)")
    parser.add_argument("--probe_canvases", type=int, default=400, help="training canvases of the probe")
    parser.add_argument("--save_steps", type=int, default=500, help="pretraining checkpoint every N steps")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, a few steps: checks the command (CI)")
    args = parser.parse_args(argv)
    if sorted(set(args.epochs)) != args.epochs or min(args.epochs) <= 0:
        parser.error(f"--epochs must be positive and increasing, got {args.epochs}")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    figures = Path(args.figures_dir or (work if args.tiny else base.ROOT / "docs"))
    figures.mkdir(parents=True, exist_ok=True)
    record, start = Record(work), time.perf_counter()
    run_all(args, work, record)
    found = rows(args, record.data)
    path = figures / "digits_seg_pretraining_budget.png"
    figure(args, record.data, found, path)
    runs = [r for section in record.data.values() for r in section.values()]
    print(
        f"\n{table(args, record.data, found)}\n\n{verdict(found)}\n\nthis start: "
        f"{(time.perf_counter() - start) / 60:.1f} min; all runs: {sum(r['seconds'] for r in runs) / 60:.1f} min "
        f"wall, {sum(r['cpu_seconds'] for r in runs) / 60:.1f} min CPU in the worker; "
        f"figure: {path}"
    )
    return {"rows": found, **record.data}


if __name__ == "__main__":
    main()
