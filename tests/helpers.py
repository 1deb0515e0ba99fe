"""What the script tests share: the repository root, the tiny models' command lines, and two-process launches.

Two processes run under torchrun (gloo, `--use_cpu` in the script's arguments), each with one thread, from the
repository root, under a timeout shorter than pytest's (600 s): a hang fails its own test, with every process of
the launch killed, instead of the whole run."""

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_TIMEOUT = 300  # seconds for one launch of a tiny model


def flags(**settings) -> list[str]:
    """Command-line words: flags(image_size=16, out_indices=(0, 1)) -> ["--image_size", "16", "--out_indices",
    "0", "1"] (in the order given)."""
    words = []
    for name, value in settings.items():
        words += [f"--{name}", *(map(str, value) if isinstance(value, (tuple, list)) else [str(value)])]
    return words


def tiny_encoder(patch_size: int, layers: int) -> list[str]:
    """The ViT of every script test: 32 wide, 2 heads, an MLP of 64."""
    return flags(
        patch_size=patch_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64
    )


QUIET = flags(report_to="none", dataloader_num_workers=0)  # no tracker, data loaded in the process
TINY_DECODER = flags(
    decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32
)
TINY_SEGMENTATION_HEADS = flags(
    crop_size=32, resize_scale=(128, 32), out_indices=(0, 1, 2, 3), decode_channels=16, auxiliary_channels=8
)

# run_pretraining.py: 16 px, patch 4, one block, a one-block decoder
PRETRAIN_TINY = [
    *flags(image_size=16),
    *tiny_encoder(patch_size=4, layers=1),
    *TINY_DECODER,
    *flags(per_device_train_batch_size=8, per_device_eval_batch_size=16, base_learning_rate="1e-3", warmup_steps=0),
    *flags(logging_steps=1),
    *QUIET,
    *flags(num_visualized_images=2, seed=0),
]
# run_image_classification.py on 64 digits at 16 px, without the architecture (FINETUNE_ARCHITECTURE: 2 blocks, as
# the MAE checkpoints that the tests fine-tune)
FINETUNE_TINY = [
    *flags(dataset_name="digits", image_size=16, per_device_train_batch_size=16, per_device_eval_batch_size=64),
    *flags(max_train_samples=64, max_eval_samples=48, warmup_epochs=0, logging_steps=1),
    *QUIET,
    *flags(save_strategy="no", seed=0),
]
FINETUNE_ARCHITECTURE = tiny_encoder(patch_size=4, layers=2)
# run_semantic_segmentation.py: 32 px, patch 8, four blocks (one per pyramid level)
SEGMENT_TINY = [
    *flags(image_size=32),
    *tiny_encoder(patch_size=8, layers=4),
    *TINY_SEGMENTATION_HEADS,
    *flags(per_device_train_batch_size=4, per_device_eval_batch_size=4, warmup_steps=0, logging_steps=1),
    *QUIET,
    *flags(save_strategy="no", eval_strategy="no", num_visualized_images=2, seed=0),
    *flags(max_eval_samples=8, max_train_samples=16),
]


def run_group(line: list, env: dict, timeout: int = LAUNCH_TIMEOUT, cwd=ROOT) -> subprocess.CompletedProcess:
    """subprocess.run(line) in `cwd`, its output captured as text, in a process group of its own: on a timeout the
    whole group is killed (a launcher's workers would outlive it, waiting on each other) and
    subprocess.TimeoutExpired raised. (Also the launcher of experiments/engines_on_cpu.py.)"""
    line = [str(word) for word in line]
    process = subprocess.Popen(
        line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise subprocess.TimeoutExpired(line, timeout, out, err) from None
    return subprocess.CompletedProcess(line, process.returncode, out, err)


def torchrun_launcher(processes: int = 2) -> list[str]:
    """`torchrun --standalone --nproc_per_node {processes}`, through this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]


def torchrun(program, argv, launcher=(), processes: int = 2, timeout: int = LAUNCH_TIMEOUT):
    """`torchrun --standalone --nproc_per_node {processes} [launcher] program argv` (program: a script's path),
    one thread per process, this checkout's mae_hf; the finished launch (subprocess.CompletedProcess)."""
    # PYTHONFAULTHANDLER: a process that aborts prints where each of its threads was
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONFAULTHANDLER="1")
    return run_group([*torchrun_launcher(processes), *launcher, program, *argv], env, timeout)
