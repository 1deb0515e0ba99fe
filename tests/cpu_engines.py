"""Test-only launcher: runs a training script with accelerate's FSDP or DeepSpeed turned on for CPU processes (gloo).

accelerate 1.16 turns FSDP on only for GPU-like device types and DeepSpeed only when the process is not told to
use the CPU: on a CPU it silently trains with DDP (mae_hf refuses that, see `mae_hf.distributed.check_engine`).
This shim gives the engine back to a CPU run, so that the tests can compare it with one process:

    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 tests/cpu_engines.py run_pretraining.py ... --use_cpu \
        --deepspeed configs/deepspeed/zero3.json

Two CPU-only settings of torch's FSDP1 are adjusted (it refuses `device_id=cpu` and `sync_module_states` on a
CPU; every process builds the same weights from the same seed here), and DeepSpeed does not compile its CPU
shared-memory all-reduce (gloo does that work). Nothing else changes: the engine, its plugin
and the script run as on GPUs. `MAE_HF_TEST_STOP_AT_STEP=N` ends the run as a kill would as step N + 1 begins
(step N's checkpoint written, no final model), for resume tests; `MAE_HF_TEST_MEMORY_LOG=FOLDER` writes each
process's resident memory there (benchmarks/bench_engine_memory.py).
"""

import importlib
import json
import os
import runpy
import sys

import transformers.trainer
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin


def _on(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def enable_engines_on_cpu() -> None:
    original = AcceleratorState.__init__

    def __init__(self, *args, deepspeed_plugin=None, fsdp_plugin=None, **kwargs):
        original(self, *args, deepspeed_plugin=deepspeed_plugin, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type != DistributedType.MULTI_CPU:
            return
        if deepspeed_plugin is not None and _on("ACCELERATE_USE_DEEPSPEED"):  # accelerate's own DeepSpeed branch
            plugins = deepspeed_plugin if isinstance(deepspeed_plugin, dict) else {"default": deepspeed_plugin}
            for plugin in plugins.values():
                plugin.set_mixed_precision(self._mixed_precision)
            next(iter(plugins.values())).select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
            self._mixed_precision = "no"
            self.distributed_type = DistributedType.DEEPSPEED
        elif fsdp_plugin is not None or _on("ACCELERATE_USE_FSDP"):  # and its FSDP branch
            if fsdp_plugin is not None and self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            self.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = self.distributed_type

    AcceleratorState.__init__ = __init__

    plugin_post_init = FullyShardedDataParallelPlugin.__post_init__

    def __post_init__(self):
        self.sync_module_states = False  # refused on CPU; the processes build the same weights from the same seed
        plugin_post_init(self)

    FullyShardedDataParallelPlugin.__post_init__ = __post_init__
    from torch.distributed.fsdp import _init_utils

    _init_utils._get_device_from_device_id = fsdp1_cpu_device(_init_utils._get_device_from_device_id)


def no_deepspeed_compilation() -> None:
    """DeepSpeed's CPU accelerator compiles a shared-memory all-reduce (C++, with ninja) when it starts, which needs
    a compiler and Python's headers and takes long on a fresh machine; gloo does the same collectives without it."""
    # (by module name: the attribute `deepspeed.comm.torch` is the torch package that deepspeed.comm imports)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def fsdp1_cpu_device(device_from_id):
    """torch's FSDP1 takes device_id=cpu (it needs one without an accelerator) but then compares it with its CPU
    handle's "cpu:0" and refuses: the check is skipped for CPU devices."""

    def _get_device_from_device_id(device_id, rank, device_handle):
        device = device_from_id(device_id, rank, device_handle)
        return None if device is not None and device.type == "cpu" else device

    return _get_device_from_device_id


class StopAtStep(transformers.TrainerCallback):
    """Raises as step `step` + 1 begins, as a kill would end the run then."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise SystemExit(f"stopped after step {state.global_step} (MAE_HF_TEST_STOP_AT_STEP)")


class MemoryLog(transformers.TrainerCallback):
    """Writes this process's resident memory (MiB) to `{folder}/memory_{rank}.json`: when training starts (model
    built and wrapped, optimizer made) and its peak (VmHWM) after the last step."""

    def __init__(self, folder: str):
        self.folder, self.memory = folder, {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.memory["train_begin"] = _status_mib("VmRSS")

    def on_train_end(self, args, state, control, **kwargs):
        self.memory["peak"] = _status_mib("VmHWM")
        with open(os.path.join(self.folder, f"memory_{args.process_index}.json"), "w") as file:
            json.dump(self.memory, file)


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(key + ":"))
    return int(line.split()[1]) / 1024


if __name__ == "__main__":
    enable_engines_on_cpu()
    no_deepspeed_compilation()
    if "MAE_HF_TEST_STOP_AT_STEP" in os.environ:
        stop = StopAtStep(int(os.environ["MAE_HF_TEST_STOP_AT_STEP"]))
        transformers.trainer.DEFAULT_CALLBACKS.append(stop)  # added to every Trainer the script makes
    if "MAE_HF_TEST_MEMORY_LOG" in os.environ:  # benchmarks/bench_engine_memory.py
        transformers.trainer.DEFAULT_CALLBACKS.append(MemoryLog(os.environ["MAE_HF_TEST_MEMORY_LOG"]))
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
    runpy.run_path(sys.argv[0], run_name="__main__")
