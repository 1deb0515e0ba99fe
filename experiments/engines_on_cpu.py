#!/usr/bin/env python
"""The three scripts under every engine (DDP, DeepSpeed ZeRO-2 / ZeRO-3, FSDP2, FSDP1) with 2 CPU processes, each
compared with one process of the same global batch:

    python experiments/engines_on_cpu.py                 # the whole table (about 10 minutes on 2 cores)
    python experiments/engines_on_cpu.py --engines ZeRO-3 --scripts pretraining

Each row is two launches of a tiny model on the built-in digits: the first is stopped as a kill would stop it
after step 2 (checkpoint-2 written, evaluation with figures and, for pretraining, the feature monitor at step 2);
the second resumes it with `--resume_from_checkpoint latest`, trains steps 3-4, evaluates and saves the final
model. The row then checks: the checkpoint is complete, the resume took it, the final model.safetensors loads
with `from_pretrained` (and with `trust_remote_code=True` in a process that has no mae_hf), and the losses and final
weights equal those of one uninterrupted process (segmentation: of DDP, as its BatchNorm statistics are per
process without SyncBatchNorm, which needs GPUs). Mixup, cutmix and drop path are off in the comparisons: they
draw per process batch. FSDP and DeepSpeed run on CPU through the test-only launcher `tests/cpu_engines.py`;
`tests/test_engines.py` runs a few rows of this table in CI.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIM = ROOT / "tests" / "cpu_engines.py"
sys.path.insert(0, str(ROOT / "tests"))
# The tests' tiny models and launcher (a hang kills the launch's whole process group)
from helpers import TINY_DECODER, TINY_SEGMENTATION_HEADS, flags, run_group, tiny_encoder, torchrun_launcher  # noqa: E402

SCRIPTS = {
    "pretraining": "run_pretraining.py",
    "classification": "run_image_classification.py",
    "segmentation": "run_semantic_segmentation.py",
}
ENGINES = {  # the Trainer's arguments for each engine, with the shipped configs
    "DDP": [],
    "ZeRO-2": ["--deepspeed", "configs/deepspeed/zero2.json"],
    "ZeRO-3": ["--deepspeed", "configs/deepspeed/zero3.json"],
    "FSDP2": ["--fsdp", "--fsdp_config", "configs/fsdp/fsdp2.json"],
    "FSDP1": ["--fsdp", "--fsdp_config", "configs/fsdp/fsdp1.json"],
}
# FSDP1 resumes wrong on CPU: its FULL_STATE_DICT optimizer state loads with exp_avg equal to exp_avg_sq (measured
# here; DESIGN notes it as a torch CPU issue), and accelerate restores nothing of a SHARDED one (refused by mae_hf).
NO_RESUME_ON_CPU = {"FSDP1"}
COMMON = ["--use_cpu", "--report_to", "none", "--dataloader_num_workers", "0", "--logging_steps", "1", "--seed", "0"]
COMMON += ["--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "2", "--save_steps", "2"]
COMMON += ["--warmup_steps", "0"]
# Weight decay strong enough that a parameter wrongly left out of (or put into) the decayed group moves the final
# weights far beyond float noise (FSDP1's flat parameters once left everything undecayed).
TASKS = {
    "pretraining": [*flags(image_size=16), *tiny_encoder(patch_size=4, layers=1), *TINY_DECODER]
    + (
        "--dataset_name digits --max_train_samples 64 --max_eval_samples 32 --per_device_eval_batch_size 16 "
        "--base_learning_rate 1e-3 --weight_decay 5 "
        "--monitor_dataset digits --monitor_train_samples 101 --monitor_eval_samples 37 --monitor_crop_pct 1 "
        "--num_visualized_images 2"
    ).split(),
    "classification": (
        "--dataset_name digits --image_size 16 --max_train_samples 64 --max_eval_samples 48 "
        "--per_device_eval_batch_size 16 --base_learning_rate 1e-2 --weight_decay 5 --mixup_alpha 0 --cutmix_alpha 0 "
        "--drop_path_rate 0"
    ).split(),
    "segmentation": [*flags(image_size=32), *tiny_encoder(patch_size=8, layers=4), *TINY_SEGMENTATION_HEADS]
    + (
        "--dataset_name digits_seg --max_train_samples 32 --max_eval_samples 8 --per_device_eval_batch_size 4 "
        "--drop_path_rate 0 --weight_decay 5 "
        "--num_visualized_images 2"
    ).split(),
}
# Seconds a launch may take before it counts as a hang (each takes under a minute on a loaded 2-core machine); well
# under pytest's 600 s per test, so that the launch's processes are killed by us, not orphaned by pytest-timeout.
LAUNCH_TIMEOUT = 240
GLOBAL_BATCH = {"pretraining": 16, "classification": 16, "segmentation": 8}


def environment() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT))


ACCELERATE_CONFIGS = {"ZeRO-2": "deepspeed_zero2", "ZeRO-3": "deepspeed_zero3", "FSDP2": "fsdp2", "FSDP1": "fsdp1"}


def command(script: str, arguments: list[str], processes: int, accelerate_config: str | None = None) -> list[str]:
    """`torchrun --nproc_per_node N tests/cpu_engines.py SCRIPT ARGUMENTS`, or with `accelerate_config` (a name in
    configs/accelerate/) `accelerate launch --config_file ... --num_processes N tests/cpu_engines.py SCRIPT ...`.
    (One process without a launcher is not an engine run: the Trainer refuses FSDP outside torch.distributed.)"""
    if accelerate_config is None:
        launcher = torchrun_launcher(processes)
    else:
        config = ROOT / "configs" / "accelerate" / f"{accelerate_config}.yaml"
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        launcher += ["--num_processes", str(processes), "--mixed_precision", "no", "--main_process_port", "0"]
    return [*launcher, str(SHIM), str(ROOT / SCRIPTS[script]), *arguments]


def launch(
    script: str,
    arguments: list[str],
    processes: int = 2,
    stop_at: int | None = None,
    accelerate_config: str | None = None,
    timeout: int = LAUNCH_TIMEOUT,
):
    """Runs one launch; a hang fails it after `timeout` seconds (subprocess.TimeoutExpired), with every process of
    the launch killed (the launcher's workers would otherwise outlive it, waiting on each other)."""
    env = environment()
    if stop_at is not None:
        env["MAE_HF_TEST_STOP_AT_STEP"] = str(stop_at)
    line = command(script, arguments, processes, accelerate_config)
    return run_group(line, env, timeout)


def arguments(script: str, output_dir: Path, processes: int, extra=()) -> list[str]:
    per_device = GLOBAL_BATCH[script] // processes
    return [*COMMON, *TASKS[script], "--per_device_train_batch_size", str(per_device), "--output_dir", str(output_dir)]


def tiny_pretrained(folder: Path) -> Path:
    """The MAE checkpoint that classification starts from (16 px, 2 blocks)."""
    from mae_hf import MAEConfig, MAEForPreTraining

    if not (folder / "config.json").exists():
        config = MAEConfig(
            image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2, decoder_intermediate_size=32,
        )  # fmt: skip
        MAEForPreTraining(config).save_pretrained(folder)
    return folder


def history(folder: Path) -> tuple[list[float], list[float]]:
    """(training losses, evaluation losses) logged by a run."""
    logged = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return [e["loss"] for e in logged if "loss" in e], [e["eval_loss"] for e in logged if "eval_loss" in e]


def differences(reference: Path, run: Path) -> dict:
    """Largest absolute differences of the final weights and the logged losses between two runs."""
    from safetensors.torch import load_file

    ours, theirs = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    if ours.keys() != theirs.keys():
        raise AssertionError(f"tensors differ: {sorted(ours.keys() ^ theirs.keys())}")
    (train, evaluation), (train_ref, evaluation_ref) = history(run), history(reference)
    if (len(train), len(evaluation)) != (len(train_ref), len(evaluation_ref)):
        raise AssertionError(
            f"logged {len(train)} / {len(evaluation)} losses, not {len(train_ref)} / {len(evaluation_ref)}"
        )
    return {
        "weights": max((ours[k].float() - theirs[k].float()).abs().max().item() for k in ours),
        "train_loss": max(abs(a - b) for a, b in zip(train, train_ref)),
        "eval_loss": max(abs(a - b) for a, b in zip(evaluation, evaluation_ref)),
    }


AUTO = {
    "pretraining": "AutoModelForPreTraining",
    "classification": "AutoModelForImageClassification",
    "segmentation": "AutoModelForSemanticSegmentation",
}


def loads_without_mae_hf(folder: Path, script: str) -> str:
    """'module class' of the model `trust_remote_code=True` builds from the folder alone, in a process where mae_hf
    cannot be imported (its files must come from the folder)."""
    auto = AUTO[script]
    code = (
        "import sys; sys.modules['mae_hf'] = None\n"
        f"import transformers\nmodel = transformers.{auto}.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        "print(type(model).__module__, type(model).__name__)"
    )
    env = dict(environment(), PYTHONPATH="", HF_HUB_OFFLINE="1")
    done = run_group([sys.executable, "-c", code], env, LAUNCH_TIMEOUT, cwd="/")
    if done.returncode:
        raise AssertionError(done.stderr[-3000:])
    return done.stdout.strip().splitlines()[-1]


def reference(script: str, work: Path, extra=()) -> Path:
    """The run the engines are compared with: one process of the same global batch, uninterrupted (segmentation:
    DDP on 2 processes, see the module's docstring)."""
    out = work / f"{script}-reference"
    if not (out / "model.safetensors").exists():
        if script == "segmentation":
            done = launch(script, [*arguments(script, out, 2), *extra])
        else:
            command_line = [sys.executable, str(ROOT / SCRIPTS[script]), *arguments(script, out, 1), *extra]
            done = subprocess.run(
                command_line, capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=LAUNCH_TIMEOUT
            )
        if done.returncode:
            raise AssertionError(f"the reference run failed:\n{done.stderr[-3000:]}")
    return out


def task_extra(script: str, work: Path) -> list[str]:
    if script == "classification":  # fine-tuning from an MAE checkpoint (ZeRO-3 partitions it as it loads)
        return ["--model_name_or_path", str(tiny_pretrained(work / "pretrained"))]
    return []


def run_row(
    engine: str,
    script: str,
    work: Path,
    processes_after: int = 2,
    accelerate: bool = False,
    remote_code: bool = True,
) -> dict:
    """One row of the table: the two launches described in the module's docstring (one uninterrupted launch for
    engines that cannot resume on CPU), then its checks. Returns {check: result}; raises AssertionError on the
    first failed one. `processes_after`: processes of the resumed launch (a resume across world sizes);
    `accelerate`: launched by `accelerate launch` with the engine's configs/accelerate file instead of torchrun and
    the Trainer's arguments; `remote_code`: also load the final model with trust_remote_code, without mae_hf."""
    out, extra = work / f"{script}-{engine}", task_extra(script, work)
    config = ACCELERATE_CONFIGS[engine] if accelerate else None
    extra += [] if accelerate else ENGINES[engine]
    start = time.perf_counter()
    if engine in NO_RESUME_ON_CPU:
        done = launch(script, [*arguments(script, out, 2), *extra], accelerate_config=config)
        resumed = "not on CPU (FSDP1's AdamW state)"
    else:
        stopped = launch(script, [*arguments(script, out, 2), *extra], stop_at=2, accelerate_config=config)
        if stopped.returncode == 0 or not (out / "checkpoint-2").is_dir() or (out / "checkpoint-4").exists():
            raise AssertionError(f"the first launch did not stop after step 2:\n{stopped.stderr[-3000:]}")
        resume = [*arguments(script, out, processes_after), *extra, "--resume_from_checkpoint", "latest"]
        done = launch(script, resume, processes_after, accelerate_config=config)
        resumed = "checkpoint-2" if f"resuming from {out / 'checkpoint-2'}" in done.stderr else "NO"
        resumed += f", {processes_after} process(es)" if processes_after != 2 else ""
    if done.returncode:
        raise AssertionError(f"{engine} {script} failed:\n{done.stderr[-4000:]}")
    row = {**checks(script, out, done.stderr, remote_code), "resume": resumed}
    row["seconds"] = round(time.perf_counter() - start)
    row.update(differences(reference(script, work, task_extra(script, work)), out))
    return row


def checks(script: str, out: Path, log: str, remote_code: bool) -> dict:
    """Trains, evaluates (figures, monitor), checkpoint complete, final model loads (its class, the parameters the
    start banner counted); raises AssertionError when one fails."""
    import mae_hf  # noqa: F401 - registers the Auto classes
    from mae_hf.run_directory.files import folder_problems

    train, evaluation = history(out)
    folder = {"pretraining": "reconstructions", "segmentation": "segmentations"}.get(script)
    shown = not folder or all((out / folder / f"step_{step}.png").exists() for step in (2, 4))
    logged = json.loads((out / "trainer_state.json").read_text())["log_history"]
    monitored = script != "pretraining" or sum("eval_knn_top1_cls" in e for e in logged) == 2
    auto = getattr(__import__("transformers"), AUTO[script])
    model = auto.from_pretrained(out)
    counted = re.findall(r"Trainable parameters = [\d,]+ of ([\d,]+)", log)
    row = {
        "trains": f"{len(train)} steps",
        "evaluates": "steps 2, 4"
        + (" + figures" if folder and shown else "")
        + (" + monitor" if script == "pretraining" and monitored else ""),
        "checkpoint": "complete" if not folder_problems(str(out / "checkpoint-2")) else "INCOMPLETE",
        "final model": type(model).__name__,
        "banner": counted[-1] if counted else None,
    }
    if remote_code:
        row["final model"] += " (remote code: " + loads_without_mae_hf(out, script).split()[0].split(".")[0] + ")"
    if len(train) != 4 or len(evaluation) != 2 or not shown or not monitored:  # (the final evaluation is not in it)
        raise AssertionError(f"training or evaluations missing: {row}")
    if row["checkpoint"] != "complete" or row["banner"] != f"{sum(p.numel() for p in model.parameters()):,}":
        raise AssertionError(f"incomplete checkpoint or parameters miscounted: {row}")
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--scripts", nargs="+", default=list(SCRIPTS), choices=list(SCRIPTS))
    parser.add_argument("--work_dir", default="outputs/engines_on_cpu")
    parser.add_argument("--processes_after", type=int, default=2, help="Processes of the resumed launch.")
    parser.add_argument("--accelerate", action="store_true", help="Launch with configs/accelerate/*.yaml.")
    args = parser.parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    header = ["engine", "script", "trains", "evaluates", "checkpoint", "resume", "final model", "parity: weights",
              "train loss", "eval loss", "seconds"]  # fmt: skip
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    for script in args.scripts:
        for engine in args.engines:
            if args.accelerate and engine not in ACCELERATE_CONFIGS:
                continue
            try:
                row = run_row(
                    engine,
                    script,
                    work / ("accelerate" if args.accelerate else "torchrun"),
                    args.processes_after,
                    args.accelerate,
                )
                cells = [row[k] for k in ("trains", "evaluates", "checkpoint", "resume", "final model")]
                cells += [f"{row[k]:.1e}" for k in ("weights", "train_loss", "eval_loss")] + [row["seconds"]]
            except (AssertionError, subprocess.TimeoutExpired) as error:
                print(error, file=sys.stderr)
                cells = [f"FAILED: {str(error).splitlines()[0][:200]}"] + [""] * 8
            print("| " + " | ".join(str(c) for c in [engine, script, *cells]) + " |", flush=True)
    print("\nThe launches of a row (MAE_HF_TEST_STOP_AT_STEP=2 ends the first after step 2):")
    for script in args.scripts:
        engine = args.engines[-1]
        first = command(script, [*arguments(script, work / f"{script}-{engine}", 2), *ENGINES[engine]], 2)
        print(
            f"  DS_ACCELERATOR=cpu MAE_HF_TEST_STOP_AT_STEP=2 {' '.join(first[2:])} {' '.join(task_extra(script, work))}"
        )
        print("  ... the same without MAE_HF_TEST_STOP_AT_STEP, with --resume_from_checkpoint latest")


if __name__ == "__main__":
    main()
