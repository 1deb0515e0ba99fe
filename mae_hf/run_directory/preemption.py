"""Pre-emption: the signals a cluster scheduler sends before it kills a job (SIGTERM from Slurm, Kubernetes and
torchrun; SIGUSR1 / SIGUSR2, what Slurm's `--signal` is usually given) stop the run at a step boundary with one
complete checkpoint, and the process exits with `EXIT_PREEMPTED` (75, EX_TEMPFAIL: "try again later").

The handler only sets a flag. The processes agree on it at points that every process passes in the same order — the
end of each optimizer step, each checkpoint save, each evaluation batch, the phases of the feature monitor — with one
all-reduce (MAX) of one integer: a signal that reaches one process only (or the processes at different instants)
still stops all of them at the same step. What is done then:

- between steps: the step that was running ends, its checkpoint is written (an evaluation due at that step is left
  for the resumed run, which runs it first), and training stops;
- during a checkpoint save: the save completes (it is the checkpoint wanted), and training stops;
- during an evaluation or the feature monitor: the evaluation is abandoned at the next batch (or phase), the step's
  checkpoint is written recording that its evaluation is pending, and training stops: an evaluation can take longer
  than the grace period (Slurm's KillWait is 30 s by default), and the resumed run runs it first, so that its metrics,
  the best checkpoint and early stopping are those of an uninterrupted run;
- after training (saving the final model, the final evaluation): the run stops with its final model recorded as
  trained; the resumed run evaluates it and finishes without training again;
- before training (arguments checked, data loaded and verified, model built: `install_before_training`), there is
  nothing to save and loading can outlast the grace period: the process exits with `EXIT_PREEMPTED` at once.

The all-reduce goes through a gloo process group (the default one under gloo, a side group under NCCL): a CPU
integer, no GPU synchronisation. Without torch.distributed the flag is read as it is.
"""

import logging
import os
import signal
import time

import torch
import torch.distributed as dist
from transformers import TrainerCallback

logger = logging.getLogger("mae_hf")

EXIT_PREEMPTED = os.EX_TEMPFAIL  # 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class TrainingPreempted(Exception):
    """Raised inside training once every process agreed to stop; the step's checkpoint is complete on disk."""


class EvaluationInterrupted(Exception):
    """Raised inside an evaluation (or the feature monitor) once every process agreed to stop."""


class RunPreempted(SystemExit):
    """What the script exits with after a pre-emption: status `EXIT_PREEMPTED`; `message` says what was saved."""

    def __init__(self, message: str):
        super().__init__(EXIT_PREEMPTED)
        self.message = message


_side_group = None


def gloo_group():
    """The process group for small CPU collectives of the run directory: the default group under gloo, a gloo side
    group under NCCL (created at the first call, which every process makes at the same point)."""
    global _side_group
    if dist.get_backend() == "gloo":
        return None
    if _side_group is None:
        _side_group = dist.new_group(backend="gloo")
    return _side_group


class StopRequest:
    """The pre-emption flag of this process: set by the signal handler, agreed on across processes by `agreed()`."""

    def __init__(self):
        self.signal_name: str | None = None
        self.received_at: float | None = None
        self._agreed = False
        self._previous: dict = {}
        self._owner_pid: int | None = None

    def install(self) -> None:
        """Handle STOP_SIGNALS from now on (main thread only; a fresh flag). DataLoader workers forked later inherit
        the handler and ignore the signal: their process is stopped by the main process, which must not see them die
        first (a worker killed by SIGTERM fails the whole run)."""
        self._set_handlers(self._handle)

    def install_before_training(self) -> None:
        """Until `install` (or `uninstall`): a stop signal ends the process at once with RunPreempted (status
        EXIT_PREEMPTED), raised where the main thread is, as Python raises KeyboardInterrupt on SIGINT. Nothing is
        trained yet, and loading or verifying a large data set can outlast the grace period; without a handler the
        process would die by the signal (status 143), which a requeue rule for EXIT_PREEMPTED counts as a failure.
        Processes forked meanwhile (`datasets.map(num_proc=...)` workers) keep the signal's default action."""
        self._set_handlers(self._exit_now)

    def _set_handlers(self, handler) -> None:
        self.reset()
        self._owner_pid = os.getpid()
        for sig in STOP_SIGNALS:
            previous = signal.signal(sig, handler)
            self._previous.setdefault(sig, previous)

    def _exit_now(self, signum, frame) -> None:
        if os.getpid() != self._owner_pid:  # a forked worker: dies by the signal, as it would without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        name = signal.Signals(signum).name
        message = f"{name} received before training started: nothing to save. Exiting with status {EXIT_PREEMPTED}"
        os.write(2, f"mae_hf: {message}\n".encode())  # no logging call in a handler (see _handle)
        raise RunPreempted(message)

    def uninstall(self) -> None:
        """The handlers there were before `install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def reset(self) -> None:
        self.signal_name, self.received_at, self._agreed = None, None, False

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._owner_pid:  # a forked DataLoader worker
            return
        if self.signal_name is None:
            self.signal_name, self.received_at = signal.Signals(signum).name, time.time()
            # os.write: no lock is taken (a logging call here could wait on the lock the interrupted code holds)
            os.write(2, f"mae_hf: {self.signal_name} received, stopping at the next step boundary\n".encode())

    @property
    def requested(self) -> bool:
        """This process saw a stop signal (or agreed on one with the others)."""
        return self._agreed or self.signal_name is not None

    def agreed(self) -> bool:
        """Whether any process saw a stop signal. Collective under torch.distributed: every process must call it at
        the same point; once True it stays True (without further collectives)."""
        if self._agreed:
            return True
        flag = self.signal_name is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            value = torch.tensor([int(flag)], dtype=torch.int32)
            dist.all_reduce(value, op=dist.ReduceOp.MAX, group=gloo_group())
            flag = bool(value.item())
            if flag and self.signal_name is None:
                self.signal_name = "a stop signal (received by another process)"
        self._agreed = flag
        return flag

    def check_training(self, where: str) -> None:
        """Raise TrainingPreempted when the processes agreed to stop (call it where every process passes)."""
        if self.agreed():
            raise TrainingPreempted(f"{self.signal_name} ({where})")

    def check_evaluation(self) -> None:
        """Raise EvaluationInterrupted when the processes agreed to stop (call it where every process passes)."""
        if self.agreed():
            raise EvaluationInterrupted(f"evaluation abandoned on {self.signal_name}")


stop_request = StopRequest()


class PreemptionCallback(TrainerCallback):
    """Stops training on an agreed stop request: at a step's end it asks for that step's checkpoint (and none of its
    evaluation, which is recorded as pending), and once that checkpoint (or one due anyway) is saved it raises
    TrainingPreempted. Between evaluation batches it raises EvaluationInterrupted (the trainer then saves the step's
    checkpoint, see `checkpoints.CrashSafeCheckpoints._evaluate`). A resumed checkpoint whose evaluation is pending
    is evaluated before the first step (TrainingArguments.eval_on_start for that one run)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.stopping = False

    def on_train_begin(self, args, state, control, **kwargs):
        if stop_request.agreed():  # a signal while data and model were prepared: nothing new to save
            raise TrainingPreempted(f"{stop_request.signal_name} before the first step")
        if self.trainer.evaluation_pending and self.trainer.eval_dataset is not None and not args.eval_on_start:
            args.eval_on_start = True  # read by Trainer right after on_train_begin; reset in on_evaluate

    def on_evaluate(self, args, state, control, **kwargs):
        if self.trainer.evaluation_pending:
            self.trainer.evaluation_pending = False
            args.eval_on_start = False

    def on_step_end(self, args, state, control, **kwargs):
        if stop_request.agreed():
            self.stopping = True
            self.trainer.evaluation_pending = control.should_evaluate or self.trainer.evaluation_pending
            control.should_evaluate = False
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        if self.stopping or stop_request.agreed():
            raise TrainingPreempted(f"{stop_request.signal_name}: stopped after step {state.global_step}")

    def on_prediction_step(self, args, state, control, **kwargs):
        stop_request.check_evaluation()
