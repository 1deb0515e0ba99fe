"""The start and the end of a run in its output directory: what a run may find there when it starts, and the
record that it finished."""

import os

from .files import file_sizes, write_manifest
from .resume import resume_request


def check_output_dir(training_args) -> None:
    """Never write over what the user has: a non-empty output dir needs --overwrite_output_dir or a resume. (With
    --overwrite_output_dir, a previous run's checkpoints are moved aside once all checks have passed: `_train`.)"""
    out = training_args.output_dir
    if out is None:
        raise ValueError("--output_dir is required")
    if os.path.isfile(out):
        raise ValueError(f"--output_dir {out} is a file")
    if (
        os.path.isdir(out)
        and os.listdir(out)
        and training_args.do_train
        and not training_args.overwrite_output_dir
        and not resume_request(training_args)
    ):
        raise ValueError(
            f"--output_dir {out} already exists and is not empty; pass --overwrite_output_dir to write into it, "
            "or --resume_from_checkpoint latest to continue its training"
        )


def mark_finished(trainer, training_args) -> None:
    """The run's manifest in the output dir, written last: this run's model (its files and sizes) is complete."""
    out = training_args.output_dir
    write_manifest(out, trainer.run_identity, trainer.state.global_step, file_sizes(out, trainer.published_model_files))
