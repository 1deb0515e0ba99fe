"""What to resume, and whether it fits: a run's identity (the arguments that define it), the newest complete
checkpoint of this run (`--resume_from_checkpoint latest`, with the reasons any other was skipped), a check that a
checkpoint holds a model of this run's size, and what `--overwrite_output_dir` does with a previous run's
checkpoints (moved aside, never mixed with the new run's)."""

import json
import logging
import os
import time

from ..checkpoint import read_shapes, weight_files
from .checkpoints import checkpoint_folders, checkpoint_problems, checkpoint_step
from .files import MANIFEST_NAME, folder_problems, is_leftover, read_manifest
from .identity import RunIdentity, applied_changes, describe, identity_differences

logger = logging.getLogger("mae_hf")


def resume_request(training_args) -> str | None:
    """--resume_from_checkpoint as None (no resume), "latest" (also "true"), "auto" or the path given."""
    wanted = training_args.resume_from_checkpoint
    if wanted in (None, "", "false", "False"):
        return None
    return "latest" if wanted in ("latest", "true", "True") else wanted


def _summary(problems: list[str], shown: int = 3) -> str:
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more


def newest_complete_checkpoint(output_dir: str, identity: RunIdentity | None = None) -> tuple[str | None, list[str]]:
    """(the newest complete and intact checkpoint-N of `output_dir` of the run `identity` (any run when None),
    the reasons each newer one was skipped: a file missing, short, unreadable or corrupt (checksum), steps that
    disagree, or another run (its defining settings differ))."""
    skipped = []
    for _step, path in checkpoint_folders(output_dir):
        if problems := checkpoint_problems(path):
            skipped.append(f"{os.path.basename(path)} is incomplete or corrupt: {_summary(problems)}")
        elif identity is not None and (diff := identity_differences(_identity_of(path), identity)):
            skipped.append(f"{os.path.basename(path)} belongs to another run ({_summary(diff, 4)})")
        else:
            return path, skipped
    return None, skipped


def _identity_of(folder: str) -> dict | None:
    return (read_manifest(folder) or {}).get("run_identity")


def check_resume_argument(training_args) -> None:
    """Before any data work: `latest` needs a complete checkpoint in the output dir, a path must be a complete,
    intact checkpoint (a corrupt file is named); `auto` needs nothing. (Which one `latest` or `auto` takes is decided
    once the run identity is known: `choose_checkpoint`.)"""
    wanted = resume_request(training_args)
    if wanted in (None, "auto"):
        return
    if wanted == "latest":
        found, skipped = newest_complete_checkpoint(training_args.output_dir)
        if found is None and not skipped:
            raise ValueError(
                f"--resume_from_checkpoint latest: no checkpoint-* folder in {training_args.output_dir} "
                "(--resume_from_checkpoint auto starts the run when it has none)"
            )
        if found is None:
            raise ValueError(
                f"--resume_from_checkpoint latest: no complete checkpoint in {training_args.output_dir}: "
                + "; ".join(skipped)
            )
        return
    if not os.path.isdir(wanted):
        raise ValueError(f"--resume_from_checkpoint {wanted} does not exist")
    if problems := checkpoint_problems(wanted):
        raise ValueError(
            f"--resume_from_checkpoint {wanted} is not a complete, intact checkpoint: {'; '.join(problems)}. "
            "--resume_from_checkpoint latest takes the newest complete one"
        )


def _latest(training_args, identity: RunIdentity, wanted: str) -> tuple[str | None, str]:
    found, skipped = newest_complete_checkpoint(training_args.output_dir, identity)
    for reason in skipped:
        logger.warning(f"--resume_from_checkpoint {wanted}: skipping {reason}")
    # `auto` starts the run only where there is nothing to continue: not over checkpoints that are corrupt (a
    # requeued job would silently discard the run's progress and then write over them) or another run's.
    nothing = not skipped and not _holds_another_run(training_args.output_dir, identity)
    if found is None and wanted == "auto" and nothing:
        return None, ""
    if found is None:
        raise ValueError(
            f"--resume_from_checkpoint {wanted}: no complete checkpoint of this run in "
            f"{training_args.output_dir} ({'; '.join(skipped)}). Start this run in another --output_dir, or run it "
            "once with --overwrite_output_dir and without --resume_from_checkpoint, which moves these checkpoints aside"
        )
    return found, "the newest complete checkpoint of this run" + (" (newer ones skipped, see above)" if skipped else "")


def _holds_another_run(output_dir: str, identity: RunIdentity) -> bool:
    """Whether `output_dir` holds a complete checkpoint or a final model of another run (which `auto` must not
    start over)."""
    folders = [path for _step, path in checkpoint_folders(output_dir) if not folder_problems(path, verify=False)]
    if read_manifest(output_dir) is not None:
        folders.append(output_dir)
    return any(identity_differences(_identity_of(folder), identity) for folder in folders)


def choose_checkpoint(training_args, identity: RunIdentity, model) -> str | None:
    """The checkpoint to resume, logged with why. `latest`: the newest complete and intact checkpoint of this run
    (newer ones that are incomplete, corrupt or another run's are named with the reason). `auto`: the same, or none
    (a fresh start) when the output dir holds no checkpoint folder and nothing of another run. A path: taken as
    given, refused when it belongs to another run (naming the defining settings that differ). The settings that
    differ otherwise are applied from the resumed step on (`resumed_changes`). Any checkpoint chosen must hold a
    model that fits `model` (`check_checkpoint_fits`)."""
    wanted = resume_request(training_args)
    if wanted is None:
        return None
    if wanted in ("latest", "auto"):
        found, why = _latest(training_args, identity, wanted)
        if found is None:
            logger.info(f"--resume_from_checkpoint auto: no checkpoint in {training_args.output_dir}; starting the run")
            return None
    else:
        found, why = wanted, "as given"
        check_checkpoint_fits(found, model, identity.defining)  # first: it names the sizes of both models
        if diff := identity_differences(_identity_of(found), identity):
            raise ValueError(
                f"--resume_from_checkpoint {found} belongs to another run: {'; '.join(diff)}. These settings define "
                "a run and cannot change when it resumes (its data position, model and optimizer state depend on "
                "them). Resume with the settings of the run that wrote it, or pass it as --model_name_or_path to "
                "start a new run from its weights"
            )
    check_checkpoint_fits(found, model, identity.defining)
    logger.info(f"resuming from {found} (step {checkpoint_step(found)}; {why})")
    return found


def check_run_length(checkpoint: str | None, planned_steps: int | None, training_args) -> None:
    """A resumed checkpoint must not lie beyond the steps this run now plans: a run shortened below the step it
    reached cannot be done (its model is of that step), so the ValueError names the length setting and what to do.
    A checkpoint at the planned step is the end of training (the run stopped during its final save). None: nothing
    resumed (or the output dir holds this run's trained model)."""
    step = checkpoint_step(checkpoint)
    if checkpoint is None or planned_steps is None or step <= planned_steps:
        return
    if training_args.max_steps > 0:
        length = f"--max_steps {training_args.max_steps}"
    else:
        length = f"--num_train_epochs {training_args.num_train_epochs:g}"
    raise ValueError(
        f"--resume_from_checkpoint: {os.path.basename(checkpoint)} is at step {step}, beyond the {planned_steps} "
        f"steps of {length}: a run cannot be shortened below the step it reached. Resume with a length of {step} "
        f"steps or more, or give a checkpoint of step {planned_steps} or earlier by its path"
    )


def resumed_changes(checkpoint: str | None, identity: RunIdentity) -> dict[str, tuple]:
    """{name: (value in the checkpoint's run, value now)} of the settings this resume changes, logged: they are
    applied from the resumed step on (see `apply_resumed_settings`) and recorded in the manifests written after."""
    if checkpoint is None or (theirs := _identity_of(checkpoint)) is None:
        return {}
    changes = applied_changes(theirs, identity)
    if changes:
        logger.warning(
            f"settings changed since {os.path.basename(checkpoint)} was saved, applied from step "
            f"{checkpoint_step(checkpoint) + 1} on: {'; '.join(describe(changes))}"
        )
    return changes


# ---------------------------------------------------------------------------------------------------- model fit


def _weight_shapes(folder: str) -> dict[str, tuple] | None:
    """{tensor name: shape} from the safetensors headers of a saved model (no tensor read); None without them."""
    files = weight_files(folder)
    if not files or not files[0].endswith(".safetensors"):
        return None
    return read_shapes([os.path.join(folder, name) for name in files])


def _describe(saved, current, names) -> str:
    """'field X there, Y here' for the config fields among `names` in which two configs differ."""
    return "; ".join(
        f"{name} {getattr(saved, name, None)!r} there, {getattr(current, name, None)!r} here"
        for name in sorted(names)
        if getattr(saved, name, None) != getattr(current, name, None)
    )


def _architecture(folder: str) -> str | None:
    """The model class a saved config names (`architectures`, written by save_pretrained), or None."""
    try:
        with open(os.path.join(folder, "config.json")) as file:
            return (json.load(file).get("architectures") or [None])[0]
    except (OSError, ValueError, AttributeError):
        return None


def check_checkpoint_fits(checkpoint: str | None, model, defining=()) -> None:
    """Before training: the checkpoint holds a model of this run's class (a pretraining checkpoint given to the
    fine-tuning script fails with the flag to use instead, not with the optimizer's group count) and of its shapes.
    A ValueError names the checkpoint's and this run's sizes (the config fields among the run's `defining` settings
    that differ) and the first tensor that does not fit."""
    if checkpoint is None:
        return
    if (saved_class := _architecture(checkpoint)) not in (None, type(model).__name__):
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} holds a {saved_class}, this run trains a {type(model).__name__}: "
            "a checkpoint resumes the run that wrote it. To start from its weights, pass it as --model_name_or_path"
        )
    if (saved := _weight_shapes(checkpoint)) is None:
        return
    # ZeRO-3 builds the model partitioned (empty tensors); `ds_shape` holds each parameter's own shape.
    current = {name: tuple(getattr(t, "ds_shape", t.shape)) for name, t in model.state_dict(keep_vars=True).items()}
    wrong = [name for name in sorted(saved.keys() & current.keys()) if saved[name] != current[name]]
    if not wrong:
        return
    sizes = _describe(type(model.config).from_pretrained(checkpoint), model.config, defining)
    raise ValueError(
        f"--resume_from_checkpoint {checkpoint} holds a model of another size than this run's: {sizes or 'see below'} "
        f"({len(wrong)} tensor(s) differ, e.g. {wrong[0]} {saved[wrong[0]]} there, {current[wrong[0]]} here). Resume "
        "with the model arguments of the run that wrote it, or start this run in another --output_dir"
    )


# ---------------------------------------------------------------------------------------------------- output dir


# A run's results and per-evaluation figures (the FigureCallback folders), which a new run would merge into
# (all_results.json) or add to.
PREVIOUS_RESULTS = ("all_results.json", "train_results.json", "eval_results.json", "reconstructions", "segmentations")


def move_aside_previous_checkpoints(training_args) -> str | None:
    """--overwrite_output_dir without a resume: a previous run's checkpoint-N folders, results and per-evaluation
    figures (and leftovers of killed saves) go to `overwritten-<time>/` in the output dir, so that the new run never
    resumes, rotates or mixes them. Done by the process that writes the output dir; the others wait. Returns the
    folder they went to."""
    out = training_args.output_dir
    moved_to = None
    with training_args.main_process_first(local=training_args.save_on_each_node, desc="moving old checkpoints"):
        if not training_args.should_save or not os.path.isdir(out):
            return None
        old = [path for _step, path in checkpoint_folders(out)]  # and the previous run's "finished" manifest
        old += [
            os.path.join(out, n)
            for n in os.listdir(out)
            if is_leftover(n) or n == MANIFEST_NAME or n in PREVIOUS_RESULTS
        ]
        if old:
            moved_to = os.path.join(out, time.strftime("overwritten-%Y%m%d-%H%M%S"))
            os.makedirs(moved_to)
            for path in old:
                os.rename(path, os.path.join(moved_to, os.path.basename(path)))
            logger.warning(
                f"--overwrite_output_dir: moved the checkpoints and results of a previous run ({len(old)} "
                f"entries) to {moved_to}; delete it if you do not need them"
            )
    return moved_to
