"""How a command line's `main` runs and how its process ends (the three scripts, `evaluate_features`)."""

import atexit
import os
import sys
import threading

import torch.distributed as dist

from .run_directory.preemption import EXIT_PREEMPTED


def run_main(main, *args) -> None:
    """`main(*args)`; then, in a process with a process group, after a finish (status 0) or a pre-emption (status
    `EXIT_PREEMPTED`): the process group destroyed (`destroy_process_group`, as torch asks before a process exits), the
    non-daemon threads joined and atexit handlers run (logging flushed, wandb / tensorboard closed, temporary folders removed), stdout and stderr
    flushed, and the process ended with `os._exit(status)`, without the interpreter's finalisation.

    Why not a normal exit: objects that hold the process group (the DDP model, the Trainer, in reference cycles) are
    freed only during finalisation, and a C++ thread of torch (gloo's workers) that takes the GIL then is ended by
    CPython with `pthread_exit`, which C++ turns into `std::terminate`: "terminate called without an active
    exception", SIGABRT, exit -6 for a finished run (seen twice in CI in a two-process test: once without and once
    with `destroy_process_group`; pytorch/pytorch#179291 proposed the atexit fix upstream and was abandoned). After a
    failure the exception ends the process as usual (its status is already non-zero; another process may still wait
    in a collective). Without a process group (one process, no launcher) `main` returns as it is.
    Raises what `main` raises."""
    try:
        main(*args)
        status = 0
    except SystemExit as stop:
        if stop.code not in (None, 0, EXIT_PREEMPTED) or not _has_process_group():
            raise
        status = stop.code or 0
    if _has_process_group():
        _end_process(status)


def _has_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def _end_process(status: int) -> None:
    dist.destroy_process_group()
    # What a normal exit does before the finalisation, in its order; Python has no public call for either.
    threading._shutdown()  # the other threads' own exit hooks (concurrent.futures), then non-daemon threads joined
    atexit._run_exitfuncs()  # multiprocessing's children call it too before their os._exit
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)
