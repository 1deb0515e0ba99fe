"""The start and the end of a run in its output directory.

Start: `check_output_dir` (never write over what the user has; another live run's lock is named), then, once the
data and the model are ready, `open_run`: the lock (one run per output directory), the stop-signal handlers
(`preemption`), the wandb run id (a resumed run continues the same wandb run). `RunDirectory.close` releases them,
whatever happened.

End: a run is *trained* once its final model is saved (`mark_trained`), *finished* once it is evaluated and
described too (`mark_finished`), each recorded in the output dir's manifest with what ended the training: its
planned steps, or a stopping rule (early stopping). A stop on a signal, an exception or a kill is never recorded as
an end: a resume continues it (`run_status`).
"""

import atexit
import logging
import os
import uuid

import torch.distributed as dist

from .checkpoints import checkpoint_folders, checkpoint_step
from .files import WRITE_PROBE_PREFIX, describe_files, folder_problems, read_manifest, write_manifest
from .lock import LOCK_NAME, RunLock, RunLocked
from .preemption import EXIT_PREEMPTED, RunPreempted, gloo_group, stop_request
from .resume import resume_request, resumed_changes

logger = logging.getLogger("mae_hf")

TRAINER_STATE = "trainer_state.json"  # transformers' TRAINER_STATE_NAME


def check_output_dir(training_args) -> None:
    """Never write over what the user has: an output dir in use by another live run is refused (naming it); a
    non-empty one needs --overwrite_output_dir or a resume. (With --overwrite_output_dir, a previous run's
    checkpoints are moved aside once all checks have passed: `resume.move_aside_previous_checkpoints`.)"""
    out = training_args.output_dir
    if out is None:
        raise ValueError("--output_dir is required")
    if os.path.isfile(out):
        raise ValueError(f"--output_dir {out} is a file")
    RunLock(out).check()
    entries = (
        [name for name in os.listdir(out) if not name.startswith((LOCK_NAME, WRITE_PROBE_PREFIX))]
        if os.path.isdir(out)
        else []
    )
    if (
        entries
        and training_args.do_train
        and not training_args.overwrite_output_dir
        and not resume_request(training_args)
    ):
        raise ValueError(
            f"--output_dir {out} already exists and is not empty; pass --overwrite_output_dir to write into it, "
            "or --resume_from_checkpoint latest to continue its training"
        )


def _any_error(error: str | None) -> str | None:
    """The first process's error, on every process (None when none failed)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return error
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error, group=gloo_group())
    return next((e for e in errors if e), None)


class RunDirectory:
    """A run's hold on its output directory while it trains: the lock (taken by the first process, global rank 0;
    the others learn whether it succeeded), the stop-signal handlers, the wandb run id in the environment."""

    def __init__(self, training_args):
        self.args = training_args
        self.lock = RunLock(training_args.output_dir) if training_args.process_index == 0 else None
        self._environment: dict[str, str | None] = {}
        self.was_preempted = False

    def open(self) -> None:
        stop_request.install()  # first: a signal while the lock is written must not leave a half-written lock
        error = None
        if self.lock is not None:
            try:
                self.lock.acquire()
            except RunLocked as locked:
                error = str(locked)
            except OSError as failure:  # every process must learn it, or the others wait for this one forever
                error = f"--output_dir {self.args.output_dir}: cannot take the run's lock ({failure})"
        if error := _any_error(error):
            self.close()
            raise RunLocked(error)

    def close(self) -> None:
        stop_request.uninstall()
        if "WANDB_RUN_ID" in self._environment:
            _finish_wandb(EXIT_PREEMPTED if self.was_preempted else 0)
        if self.lock is not None:
            self.lock.release()
        for name, value in self._environment.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        self._environment = {}

    def prepare(self, trainer, checkpoint: str | None, source: str | None) -> None:
        """What the trainer carries from the manifest the run continues (`source`: the checkpoint resumed, or the
        output dir of a trained run; None for a fresh start) into the manifests it writes: the settings changed at
        each resume (with this resume's, `resume.resumed_changes`, applied at the start of training), the wandb run
        id, and an evaluation that a pre-emption left pending."""
        previous = read_manifest(source) if source else {}
        changes = resumed_changes(checkpoint, trainer.run_identity)
        history = list((previous or {}).get("changes", []))
        if changes:
            history.append({"step": checkpoint_step(checkpoint), "settings": {k: list(v) for k, v in changes.items()}})
        trainer.resumed_changes = changes
        trainer.run_record = {"changes": history}
        trainer.evaluation_pending = bool(checkpoint and (previous or {}).get("evaluation_pending"))
        self.continue_wandb_run(trainer.run_record, previous)

    def preempted(self, stop: Exception) -> RunPreempted:
        """The exit after a stop signal (status EXIT_PREEMPTED), logged with what to do; wandb is told the run was
        pre-empted (so that it shows as such, not as crashed, until it continues)."""
        if checkpoint_folders(self.args.output_dir) or read_manifest(self.args.output_dir):
            advice = "continue the run with --resume_from_checkpoint latest (or auto): no step is lost"
        else:  # stopped before its first checkpoint: `latest` would find none
            advice = "nothing is saved yet: start the run again with --resume_from_checkpoint auto"
        message = f"pre-empted: {stop}. Exiting with status {EXIT_PREEMPTED}; {advice}"
        logger.warning(message)
        self.was_preempted = True
        try:
            import wandb

            if wandb.run is not None:
                wandb.mark_preempting()
        except ImportError:
            pass
        return RunPreempted(message)

    def continue_wandb_run(self, record: dict, previous: dict | None) -> None:
        """One run, one wandb run: the id recorded in the manifest the run resumes (`previous`), else the one of
        WANDB_RUN_ID, else a new one, goes into the environment (WANDB_RUN_ID, WANDB_RESUME=allow), where
        transformers' WandbCallback's `wandb.init` reads it, and into `record` (every manifest written after)."""
        if "wandb" not in (self.args.report_to or []):
            return
        run_id = (previous or {}).get("wandb_run_id") or os.environ.get("WANDB_RUN_ID") or uuid.uuid4().hex[:8]
        for name, value in (("WANDB_RUN_ID", run_id), ("WANDB_RESUME", os.environ.get("WANDB_RESUME", "allow"))):
            self._environment.setdefault(name, os.environ.get(name))
            os.environ[name] = value
        record["wandb_run_id"] = run_id


def _finish_wandb(exit_code: int) -> None:
    """End the wandb run this run directory continued (a later run in this process must not log into it)."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


_open: RunDirectory | None = None


def open_run(training_args) -> RunDirectory:
    """Open the run directory (see RunDirectory); a run opened earlier in this process (e.g. a test) is closed."""
    global _open
    if _open is not None:
        _open.close()
    _open = RunDirectory(training_args)
    _open.open()
    return _open


atexit.register(lambda: _open is not None and _open.close())


# ---------------------------------------------------------------------------------------------------- the end


def stop_reason(trainer) -> str | None:
    """Why training ended, when it ended on purpose: its planned steps, a stopping rule (early stopping, or
    another callback's `should_training_stop`), or the end of a streamed data set; None after a stop signal."""
    state = trainer.state
    if stop_request.requested:
        return None
    if state.global_step >= state.max_steps:
        return f"planned steps ({state.max_steps})"
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "EarlyStoppingCallback":
            if callback.early_stopping_patience_counter >= callback.early_stopping_patience:
                return (
                    f"early stopping (no improvement of {trainer.args.metric_for_best_model} in "
                    f"{callback.early_stopping_patience} evaluations)"
                )
    if trainer.control.should_training_stop:
        return "a stopping rule (a callback set should_training_stop)"
    return f"the training data ended at step {state.global_step} of {state.max_steps}"


def _mark(trainer, training_args, status: str) -> None:
    if not training_args.should_save:
        return
    out = training_args.output_dir
    files = set(trainer.published_model_files or (read_manifest(out) or {}).get("files", {}))
    if os.path.isfile(os.path.join(out, TRAINER_STATE)):  # what the resume of a trained run restores
        files.add(TRAINER_STATE)
    record = {**(trainer.run_record or {}), "status": status, "stopped_by": trainer.stopped_by}
    write_manifest(out, trainer.run_identity, trainer.state.global_step, describe_files(out, files), **record)


def mark_trained(trainer, training_args) -> None:
    """The output dir's manifest, written once the final model and state are saved: status "trained" (evaluation
    and model card still to come: a resume after a stop then only does those)."""
    _mark(trainer, training_args, "trained")


def mark_finished(trainer, training_args) -> None:
    """The output dir's manifest, written last: status "finished", with what ended the training (`stop_reason`,
    `trainer.stopped_by`) and the sizes and checksums of the final model's files. A resume of the same run then
    changes nothing. The one place a run is marked finished: call it after anything that must precede (e.g.
    consolidating a sharded model)."""
    if trainer.stopped_by is None:
        raise RuntimeError("mark_finished: training did not end on purpose (a stop signal); the run is not finished")
    _mark(trainer, training_args, "finished")


def run_status(output_dir: str, identity: dict, step: int = 0) -> str | None:
    """ "finished" or "trained" when the output dir holds this run's (same settings) final model, intact, of `step`
    or later (a run can end after its newest checkpoint: early stopping; --save_total_limit 1 with
    --load_best_model_at_end keeps only the best one); else None. A manifest without status (older mae_hf) was
    written at the end: "finished"."""
    manifest = read_manifest(output_dir)
    if manifest is None or manifest.get("run_identity") != identity or manifest.get("global_step", -1) < step:
        return None
    if problems := folder_problems(output_dir):
        logger.warning(
            f"the final model in {output_dir} is incomplete or corrupt ({'; '.join(problems)}): the run continues "
            "from its newest intact checkpoint, which saves it again"
        )
        return None
    return manifest.get("status", "finished")
