"""What the three training scripts share: argument parsing (with config files), the output-dir, resume and Hub
checks, logging, the recipe's learning-rate and warmup arithmetic, and the train / evaluate / save ending."""

import json
import logging
import os

import datasets
import torch
import transformers
from transformers.trainer_utils import has_length

from .argument_checks import check_schedule, check_trainer_arguments, check_training_plan, steps_per_epoch
from .arguments import card_settings, config_overrides, data_source, run_settings
from .cli import parse_arguments  # noqa: F401 - the scripts' entry point to their command line
from .distributed import check_distributed_run, checkpoint_state_dict
from .preflight import check_model_folder, check_writable_dir
from .run_directory.checkpoints import checkpoint_step
from .run_directory.files import read_manifest
from .run_directory.identity import run_identity
from .run_directory.lifecycle import (
    check_output_dir,
    mark_finished,
    mark_trained,
    open_run,
    run_status,
    stop_reason,
)
from .run_directory.preemption import EvaluationInterrupted, TrainingPreempted, stop_request
from .run_directory.resume import (
    check_resume_argument,
    check_run_length,
    choose_checkpoint,
    move_aside_previous_checkpoints,
    resume_request,
)

logger = logging.getLogger("mae_hf")


def start_run(
    model_args,
    training_args,
    label_names: list[str],
    metrics: tuple[str, ...],
    smoothing_hint: str = "",
    streaming: bool = False,
    model_class=None,
) -> None:
    """What every script does first, before any data or model work: logging, the GPU fast paths, the settings that
    follow from others (no evaluation strategy without --do_eval, layer decay 1.0 = off), and every check that
    needs no data (`argument_checks`, the output dir, the Hub, the model path, the resume request), so that a run
    that cannot work fails in seconds. label_names / metrics / smoothing_hint: see `check_trainer_arguments`;
    model_class: the script's model, whose every weight --model_name_or_path must hold in an evaluation alone. From
    here until the run directory is opened, a stop signal exits with status 75 at once (nothing is trained yet)."""
    stop_request.install_before_training()
    setup_logging(training_args)
    apply_gpu_fast_paths(training_args)
    if not training_args.do_eval:
        training_args.eval_strategy = "no"
    if training_args.layer_decay == 1.0:
        training_args.layer_decay = None
    check_trainer_arguments(training_args, label_names, metrics, smoothing_hint)
    check_training_plan(training_args, streaming)
    check_writable_dir(training_args.output_dir)  # every process: each writes its RNG state into checkpoints
    check_output_dir(training_args)
    check_hub_access(training_args)
    check_model_path(model_args.model_name_or_path)
    evaluated = None if training_args.do_train else model_class  # nothing is trained: no layer may be new
    check_model_folder(model_args.model_name_or_path, config_overrides(model_args, "encoder"), model_class=evaluated)
    check_resume_argument(training_args)
    check_distributed_run(training_args)  # processes, engine and checkpoint agree


def apply_gpu_fast_paths(training_args) -> list[str]:
    """What `--gpu_fast_paths` turns on when training on CUDA; returns the names of the settings it changed.
    Precision is left alone when anything chose it: --fp16/--bf16, `accelerate launch --mixed_precision`, DeepSpeed."""
    if not training_args.gpu_fast_paths or training_args.device.type != "cuda":
        return []
    changed = []
    precision_chosen = training_args.fp16 or training_args.bf16 or training_args.mixed_precision != "no"
    if not precision_chosen and not training_args.deepspeed and torch.cuda.is_bf16_supported():
        training_args.bf16, training_args.mixed_precision = True, "bf16"  # mixed_precision is derived in post_init
        changed.append("bf16")
    if training_args.tf32 is None:
        training_args.tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        changed.append("tf32")
    if training_args.dataloader_num_workers > 0 and not training_args.dataloader_persistent_workers:
        training_args.dataloader_persistent_workers = True
        changed.append("dataloader_persistent_workers")
    if training_args.dataloader_pin_memory and not training_args.accelerator_config.non_blocking:
        training_args.accelerator_config.non_blocking = True  # batches copied from pinned memory without a wait
        changed.append("non_blocking")
    if training_args.logging_nan_inf_filter:
        training_args.logging_nan_inf_filter = False  # its isnan test syncs every step; non-finite losses stop us
        changed.append("logging_nan_inf_filter=False")
    if changed:
        logger.info(f"GPU fast paths (--gpu_fast_paths): {', '.join(changed)}")
    return changed


def verify_splits(datasets, column: str, data_args, training_args, streaming: bool = False) -> None:
    """Decode every image of every split once (see `verify_images`), in place; corrupt ones fail or are skipped.
    A streamed data set (pretraining's --streaming) is not read ahead."""
    from .data import verify_images

    if not data_args.verify_images or streaming or data_args.dataset_name in ("digits", "digits_seg"):
        return
    for split in used_splits(datasets, training_args):
        num_proc = max(1, training_args.dataloader_num_workers) if len(datasets[split]) > 10_000 else None
        datasets[split], skipped = verify_images(
            datasets[split], column, data_args.skip_corrupt_images, num_proc, split
        )
        if skipped:
            logger.warning(f"skipped {skipped} corrupt {split} image(s) (--skip_corrupt_images)")


def train_size(datasets) -> int | None:
    """The training split's size; None when it is streamed (no length) or absent (evaluation alone)."""
    train = datasets.get("train")
    return len(train) if train is not None and has_length(train) else None


def reference_split(datasets):
    """The split whose columns name the data: train, or validation in an evaluation-only run without train."""
    return datasets["train"] if "train" in datasets else datasets["validation"]


def used_splits(datasets, training_args) -> list[str]:
    """The splits the run reads: an evaluation-only run does not read (so does not check) the training split."""
    return [split for split in datasets if training_args.do_train or split != "train"]


class OncePerRun(logging.Filter):
    """Lets each distinct message through once (Python's own registry forgets what it has shown whenever a library
    changes the warning filters, e.g. around checkpoint saving, so a warning could repeat at every evaluation)."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def setup_logging(training_args) -> None:
    """Logs and Python warnings of the main process; the others show only what `--log_level_replica` lets through
    (errors by default). Warnings go through logging ("py.warnings"), each shown once per run."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler()],
    )
    level = training_args.get_process_log_level()
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    logger.setLevel(logging.INFO if training_args.should_log else max(level, logging.WARNING))
    logging.captureWarnings(True)
    python_warnings = logging.getLogger("py.warnings")
    python_warnings.setLevel(logging.WARNING if training_args.should_log else max(level, logging.WARNING))
    for old in [f for f in python_warnings.filters if isinstance(f, OncePerRun)]:
        python_warnings.removeFilter(old)
    python_warnings.addFilter(OncePerRun())


def apply_runtime_defaults(training_args, unused_parameters: bool = False) -> None:
    """Settings that only make noise or cost time where they do not apply: pinned memory without an accelerator
    (torch warns each time a loader starts), and DDP's per-step search for parameters without gradients when the
    model has none (`unused_parameters`: it has some; an explicit --ddp_find_unused_parameters wins)."""
    if training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = unused_parameters


def check_model_path(path: str | None) -> None:
    """--model_name_or_path before any data work: a local folder must exist (a missing one is named as such, not
    reported as a malformed Hub id); anything else is looked up on the Hub now (its config only)."""
    if path is None or os.path.isdir(path):
        return
    where = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(path):
        raise ValueError(
            f"--model_name_or_path {path} is a file, not a model folder; convert a checkpoint file with "
            "`python -m mae_hf.conversion FILE OUTPUT_DIR` and give OUTPUT_DIR"
        )
    # A Hub id is "name" or "namespace/name"; anything else, or a "dir/name" whose dir exists here, is a path.
    looks_local = (
        path.startswith(("/", ".", "~")) or path.count("/") > 1 or ("/" in path and os.path.isdir(path.split("/")[0]))
    )
    if looks_local:
        raise ValueError(f"--model_name_or_path {path}: the folder {where} does not exist")
    from transformers import PretrainedConfig

    try:
        PretrainedConfig.get_config_dict(path)
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0]
        raise ValueError(
            f"--model_name_or_path {path} is neither a local folder (there is none at {where}) nor a "
            f"model the Hub can give here ({type(error).__name__}: {reason})"
        ) from error


def check_hub_access(training_args) -> None:
    """With --push_to_hub, fail now (not after days of training) when the Hub cannot be reached."""
    if not training_args.push_to_hub:
        return
    from huggingface_hub import HfApi

    try:
        HfApi(token=training_args.hub_token).whoami()
    except Exception as error:  # noqa: BLE001 - offline mode, no token, no network: all end the same way
        raise ValueError(
            f"--push_to_hub needs the Hugging Face Hub, which cannot be used here ({type(error).__name__}: {error}). "
            "Log in with `hf auth login`, check the network and HF_HUB_OFFLINE, or drop --push_to_hub."
        ) from error


def apply_recipe_schedule(training_args, train_size: int | None = None) -> int:
    """lr = base_learning_rate x global batch / 256 (once the world size is known), and warmup given in epochs
    turned into a share of training (an explicit --warmup_steps wins). Returns the global batch size.

    Call it as soon as the training split's size is known, before images are decoded and the model is built: its
    checks (warmup vs length, steps per epoch) then fail in seconds. Evaluation-only runs skip them."""
    global_batch = (
        training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )
    if training_args.base_learning_rate is not None:
        training_args.learning_rate = training_args.base_learning_rate * global_batch / 256
    elif training_args.learning_rate is None:
        raise ValueError("give --base_learning_rate or --learning_rate")
    if not training_args.do_train:
        return global_batch
    check_schedule(training_args, train_size)
    if training_args.warmup_epochs and not training_args.warmup_steps:
        epochs = training_args.num_train_epochs
        if training_args.max_steps > 0:
            if not train_size:
                raise ValueError("--warmup_epochs needs the dataset size; with --streaming give --warmup_steps")
            epochs = training_args.max_steps * global_batch / train_size
        if training_args.warmup_epochs >= epochs:
            raise ValueError(
                f"--warmup_epochs {training_args.warmup_epochs} must be shorter than the training ({epochs:g} epochs)"
            )
        training_args.warmup_steps = training_args.warmup_epochs / epochs  # a share of all steps
    if training_args.save_every_epochs:
        if not train_size:
            raise ValueError("--save_every_epochs needs the dataset size; with --streaming give --save_steps")
        per_epoch = steps_per_epoch(training_args, train_size)
        training_args.save_strategy = "steps"
        training_args.save_steps = max(1, round(training_args.save_every_epochs * per_epoch))
        logger.info(f"checkpoint every {training_args.save_steps} steps ({training_args.save_every_epochs} epochs)")
    return global_batch


def train_evaluate_save(trainer, model, model_args, data_args, training_args) -> dict:
    """What every script ends with, in its output directory (`run_directory`: locked for this run, stop signals
    handled): train (resuming the checkpoint that --resume_from_checkpoint names, checked to fit the model), save the
    model, its processor, metrics and state; evaluate; write the model card; mark the run finished; push to the Hub
    when asked. Returns the train and eval metrics. A stop signal (pre-emption) ends it with RunPreempted (exit
    status 75) once the step's checkpoint, or after training the final model, is saved."""
    run = open_run(training_args)
    try:
        return _train_evaluate_save(trainer, model, model_args, data_args, training_args, run)
    except (TrainingPreempted, EvaluationInterrupted) as stop:
        raise run.preempted(stop) from None
    finally:
        run.close()


def _train_evaluate_save(trainer, model, model_args, data_args, training_args, run) -> dict:
    from .model_card import write_model_card

    metrics = {}
    if training_args.do_train:
        result = _train(trainer, model, model_args, data_args, training_args, run)
        if result is None:  # a finished run resumed at its end: its results stay as they are
            return _saved_results(training_args.output_dir)
        metrics.update(result)
        mark_trained(trainer, training_args)
        stop_request.check_training("the final model is saved")
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    if training_args.do_train:
        if trainer.is_world_process_zero():
            data, settings = data_source(data_args), card_settings(training_args)
            write_model_card(training_args.output_dir, model, data, settings, metrics, trainer.state)
        mark_finished(trainer, training_args)
    if training_args.push_to_hub:
        trainer.push_to_hub(finetuned_from=model_args.model_name_or_path, dataset=data_args.dataset_name)
    return metrics


def _train(trainer, model, model_args, data_args, training_args, run) -> dict | None:
    """Train and save; the train metrics ({} when the checkpoint resumed is the end of training, see
    `_nothing_to_train`; those saved when the output dir holds this run's trained model, which is then loaded for
    its evaluation), None when the output dir holds this run's finished results."""
    out = training_args.output_dir
    train_size = len(trainer.train_dataset) if has_length(trainer.train_dataset) else None
    trainer.run_identity = run_identity(*run_settings(model_args, data_args, training_args), training_args, train_size)
    checkpoint = choose_checkpoint(training_args, trainer.run_identity, model)
    status = (
        run_status(out, trainer.run_identity, checkpoint_step(checkpoint)) if resume_request(training_args) else None
    )
    if status == "finished":
        logger.info(f"this run is finished: nothing to train; the model and results in {out} are kept as they are")
        return None
    planned = _planned_steps(trainer) if checkpoint is not None and status is None else None
    check_run_length(checkpoint, planned, training_args)
    if checkpoint is None and status is None and training_args.overwrite_output_dir:
        move_aside_previous_checkpoints(training_args)
    run.prepare(trainer, checkpoint, out if status == "trained" else checkpoint)
    if status == "trained":
        logger.info(f"the final model of this run is saved in {out}: evaluating it (no step to train)")
        _restore(trainer, out)
        return {k: v for k, v in _saved_results(out).items() if not k.startswith("eval_")}
    if planned is not None and checkpoint_step(checkpoint) == planned:
        return _nothing_to_train(trainer, checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.stopped_by = stop_reason(trainer)  # never from train() returning alone: a stop signal is not an end
    stop_request.check_training(f"training returned at step {trainer.state.global_step}")
    trainer.save_model()  # with the image processor passed as processing_class
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return result.metrics


def _planned_steps(trainer) -> int:
    """The run's number of optimizer steps, as Trainer computes it. (Trainer itself, resumed from a checkpoint at
    that step that is not at an epoch's end, would run one step more.)"""
    return trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]


def _restore(trainer, folder: str) -> None:
    """The model weights and trainer state saved in `folder` (a checkpoint or the output dir), before any step is
    trained: no engine has taken the model yet, so its whole state dict is read without one (what Trainer's
    `train(resume_from_checkpoint=...)` loads first, in every engine's format: `checkpoint_state_dict`)."""
    from transformers import TrainerState

    trainer.model.load_state_dict(checkpoint_state_dict(folder))
    trainer.state = TrainerState.load_from_json(os.path.join(folder, "trainer_state.json"))
    trainer.stopped_by = (read_manifest(folder) or {}).get("stopped_by") or stop_reason(trainer)


def _nothing_to_train(trainer, checkpoint: str) -> dict:
    """A resume at the end of training: the run stopped during its final save. Save the checkpoint's model, state and
    end-of-training figure (no train metrics, as no step is trained) and return {}."""
    from .figure_callbacks import FigureCallback

    logger.info(f"{checkpoint} is the end of training: saving its model (the run stopped before its final save)")
    _restore(trainer, checkpoint)
    for callback in trainer.callback_handler.callbacks:  # the end-of-training figure, which the kill may have cut
        if isinstance(callback, FigureCallback):
            callback.on_train_end(trainer.args, trainer.state, trainer.control, model=trainer.model)
    trainer.save_model()
    trainer.save_state()
    return {}


def _saved_results(output_dir: str) -> dict:
    path = os.path.join(output_dir, "all_results.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as file:
        return json.load(file)
