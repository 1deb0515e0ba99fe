"""Past one process: what DDP, FSDP (FSDP2 `fully_shard`, FSDP1) and DeepSpeed ZeRO change for the code around the
model, and the checks that keep a run from silently training with another engine, or resuming what it cannot.

Under parameter sharding (FSDP, ZeRO-3) each process holds a slice of every parameter and a forward pass gathers the
others' slices: every process must run every forward pass (a figure drawn by the main process alone waits forever
for an all-gather), a parameter's local tensor does not have its shape (FSDP1 shows flat 1-D shards, ZeRO-3 empty
tensors), and the whole model exists only once gathered (`whole_state_dict`). DDP and ZeRO-1/2 keep every parameter
whole on every process.
"""

import logging
import os
import re

import torch
import torch.distributed as dist
from accelerate.utils import extract_model_from_parallel

logger = logging.getLogger("mae_hf")

# Prefixes that wrappers add to parameter names (FSDP1 units, activation checkpointing, torch.compile).
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
DEEPSPEED, FSDP = "DeepSpeed", "FSDP"
CPU_ENGINES = (
    "accelerate (1.16) turns FSDP on only for GPU-like devices, and DeepSpeed only when the process is not told to "
    "use the CPU: on a CPU (--use_cpu) it trains with plain DDP instead, without a word"
)


def _fsdp_types() -> tuple[type, ...]:
    from torch.distributed.fsdp import FullyShardedDataParallel

    try:
        from torch.distributed.fsdp import FSDPModule  # FSDP2, torch >= 2.6
    except ImportError:
        return (FullyShardedDataParallel,)
    return FullyShardedDataParallel, FSDPModule


def uses_fsdp(model: torch.nn.Module) -> bool:
    return any(isinstance(module, _fsdp_types()) for module in model.modules())


def _zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")  # DeepSpeed ZeRO-3 marks the parameters it partitions


def parameters_sharded(model: torch.nn.Module | None) -> bool:
    """Whether `model` (wrapped or not) has its parameters split across processes: FSDP1, FSDP2 or ZeRO-3. Then
    every process must take part in every forward pass."""
    if model is None:
        return False
    return uses_fsdp(model) or any(_zero3(param) for param in model.parameters())


def clean_name(name: str) -> str:
    """A parameter name without the prefixes that wrappers add (FSDP1's `_fsdp_wrapped_module.` ...)."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def logical_shape(param: torch.Tensor) -> torch.Size:
    """The parameter's own shape, not that of this process's slice (ZeRO-3 keeps it in `ds_shape`; an FSDP2 DTensor
    reports it itself)."""
    return param.ds_shape if _zero3(param) else param.shape


def logical_numel(param: torch.Tensor) -> int:
    return param.ds_numel if _zero3(param) else param.numel()


def local_tensor(param: torch.Tensor) -> torch.Tensor:
    """This process's slice of a parameter: the local shard of an FSDP2 DTensor, ZeRO-3's partition, the tensor
    itself otherwise. Reading it involves no other process."""
    if _zero3(param):
        return param.ds_tensor
    return param.to_local() if hasattr(param, "to_local") else param


def parameter_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    """{name without wrapper prefixes: logical shape} of every parameter. Taken before an engine wraps the model,
    it still tells the optimizer groups which tensors are matrices once FSDP1 has flattened them."""
    return {clean_name(name): logical_shape(param) for name, param in model.named_parameters()}


def call_through(wrapped: torch.nn.Module, function, *args, **kwargs):
    """`function(*args, **kwargs)` run as the forward pass of `wrapped` (an engine's wrapper, or a model that FSDP2
    sharded in place), so that the engine gathers the parameters as for the model's own forward: FSDP unshards the
    root's, nested FSDP units and ZeRO-3's hooks gather the others when `function` reaches them. Use it to run a part
    of the model (the encoder alone). Collective under parameter sharding: every process must call it."""
    inner = extract_model_from_parallel(wrapped, keep_torch_compile=False)  # what the wrapper's forward calls
    saved = inner.__dict__.get("forward")  # accelerate's mixed precision sets an instance forward
    # Into __dict__ directly: nn.Module.__setattr__ would register a module `function` as a child named "forward".
    inner.__dict__["forward"] = function
    try:
        return wrapped(*args, **kwargs)
    finally:
        if saved is None:
            del inner.__dict__["forward"]
        else:
            inner.__dict__["forward"] = saved


def whole_state_dict(wrapped: torch.nn.Module) -> dict | None:
    """The whole model's state dict (on the CPU, on the main process; {} or None on the others), gathered from the
    processes' shards whatever the engine's own checkpoint format (FSDP's SHARDED_STATE_DICT too). None when the
    parameters are not sharded (the model's own state dict is whole). Collective: every process must call it.
    ZeRO-3 gives the weights in the dtype it trains them in (16-bit with bf16/fp16), as DeepSpeed saves them."""
    if uses_fsdp(wrapped):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(wrapped, options=options)
    if hasattr(wrapped, "_zero3_consolidated_16bit_state_dict") and parameters_sharded(wrapped):
        return wrapped._zero3_consolidated_16bit_state_dict()
    return None


def checkpoint_state_dict(folder: str) -> dict:
    """The whole model's state dict of a training checkpoint, read without the engine that wrote it: its
    model.safetensors (DDP, ZeRO-2, ZeRO-3 with stage3_gather_16bit_weights_on_model_save, FSDP FULL_STATE_DICT),
    else FSDP's distributed checkpoint (`pytorch_model_fsdp_0/`, consolidated by torch's `dcp_to_torch_save`), else
    DeepSpeed's ZeRO partitions (consolidated to fp32 by DeepSpeed's `zero_to_fp32`)."""
    from transformers.modeling_utils import load_state_dict

    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        return load_state_dict(os.path.join(folder, "model.safetensors"))
    sharded = os.path.join(folder, "pytorch_model_fsdp_0")
    if os.path.isdir(sharded):
        import tempfile

        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as temporary:
            dcp_to_torch_save(sharded, os.path.join(temporary, "model.pt"))
            state = torch.load(os.path.join(temporary, "model.pt"), weights_only=True)
        return state.get("model", state)  # accelerate saves {"model": state dict}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(folder)


def broadcast_buffers(model: torch.nn.Module | None) -> None:
    """The main process's buffers (BatchNorm running statistics) on every process. Without SyncBatchNorm each
    process keeps statistics of its own batches (DDP overwrites them with the main process's before each forward,
    FSDP and ZeRO never do): this makes every process evaluate, and every engine checkpoint, what the main process
    saves. Collective: every process must call it."""
    if model is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


# ---------------------------------------------------------------------------------------------------- Trainer


class EngineHooks:
    """A `transformers.Trainer` mixin (before Trainer in the bases): what a run does differently past one process.

    - It refuses an engine that accelerate dropped (`check_engine`).
    - Every process evaluates, and every engine checkpoints, the main process's buffers (`broadcast_buffers`).
    - The final model (saved after training) is gathered whole from a sharding engine, whatever its checkpoint
      format (FSDP's SHARDED_STATE_DICT writes no model.safetensors; ZeRO-3 without
      stage3_gather_16bit_weights_on_model_save neither), and saved by the main process as one model.safetensors
      with its config, processor and code; a final model without config or weights raises (`check_final_model`).
      Checkpoints stay in the engine's own format, which resuming needs. A run killed during its final save saves
      it from its last checkpoint, read without the engine (`checkpoint_state_dict`).
    - transformers' schedulers that read optimizer.defaults (polynomial, cosine_with_min_lr) work with DeepSpeed's
      ZeRO optimizers, which lack it."""

    _whole_model = None  # the final model's state dict gathered from a sharding engine, while it is saved

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_engine(self)

    def evaluate(self, *args, **kwargs):
        broadcast_buffers(self.model_wrapped)
        return super().evaluate(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        broadcast_buffers(self.model_wrapped)  # whichever process the engine saves them from
        return super()._save_checkpoint(model, trial)

    def _engine_without_model(self) -> bool:
        """An engine is on but has not taken the model yet (no training in this process: the final save of a run
        killed during it, resumed from its last checkpoint)."""
        return (self.is_fsdp_enabled or self.is_deepspeed_enabled) and self.model_wrapped is self.model

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self.is_in_train:  # a checkpoint
            return super().save_model(output_dir, _internal_call)
        broadcast_buffers(self.model_wrapped)
        sharded = parameters_sharded(self.model_wrapped)
        if not sharded and not self._engine_without_model():
            super().save_model(output_dir, _internal_call)
        else:
            engines = self.is_fsdp_enabled, self.is_deepspeed_enabled
            # Trainer.save_model then takes its plain path (`_save`), which saves the gathered state dict.
            self.is_fsdp_enabled = self.is_deepspeed_enabled = False
            self._whole_model = whole_state_dict(self.model_wrapped) if sharded else None  # collective
            try:
                super().save_model(output_dir, _internal_call)
            finally:
                self._whole_model = None
                self.is_fsdp_enabled, self.is_deepspeed_enabled = engines
        if self.args.should_save:
            folder = output_dir or self.args.output_dir
            check_final_model(folder, os.listdir(folder))

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if self._whole_model is None:
            return super()._save(output_dir, state_dict)
        if self.is_world_process_zero():  # the one process that holds the gathered model
            super()._save(output_dir, self._whole_model)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        zero = getattr(optimizer if optimizer is not None else self.optimizer, "optimizer", None)  # in accelerate's
        if zero is not None and not hasattr(zero, "defaults") and hasattr(getattr(zero, "optimizer", None), "defaults"):
            zero.defaults = zero.optimizer.defaults  # the defaults of the optimizer ZeRO wraps
        return super().create_scheduler(num_training_steps, optimizer)


# ---------------------------------------------------------------------------------------------------- engines


def _env_on(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def requested_engine(training_args) -> str | None:
    """The sharding engine the run asks for: by TrainingArguments (--deepspeed, --fsdp) or by `accelerate launch`
    (--use_deepspeed / --use_fsdp, or a config file that sets them). None: DDP or one process."""
    if training_args.deepspeed or _env_on("ACCELERATE_USE_DEEPSPEED"):
        return DEEPSPEED
    if training_args.fsdp or _env_on("ACCELERATE_USE_FSDP"):
        return FSDP
    return None


def fsdp_version(training_args) -> int:
    """The FSDP version a run asks for: the Trainer's fsdp_config, else accelerate's FSDP_VERSION (2 by default)."""
    plugin = getattr(training_args, "fsdp_plugin_args", None) or {}
    return int(plugin.get("fsdp_version") or os.environ.get("FSDP_VERSION", 2))


def granted_engine(trainer) -> str | None:
    """The sharding engine the Trainer's accelerator actually set up."""
    if trainer.is_deepspeed_enabled:
        return DEEPSPEED
    return FSDP if trainer.is_fsdp_enabled else None


def check_engine(trainer) -> None:
    """Refuses a run whose accelerator dropped the engine it asked for (a run meant to shard would replicate the
    model on every process, and fail or run out of memory much later)."""
    requested, granted = requested_engine(trainer.args), granted_engine(trainer)
    if requested == granted:
        return
    raise ValueError(
        f"{requested} was asked for, but the Trainer's accelerator set up {granted or 'no sharding engine'} "
        f"(device {trainer.args.device}, {trainer.args.world_size} process(es)): {CPU_ENGINES}. Run it on GPUs, or "
        "drop the engine's arguments for DDP (see README, 'Past one node')."
    )


def check_launch(training_args) -> None:
    """Before any work: the number of processes the launcher started is the one the run set up. A mismatch means the
    processes would each train on all the data (DeepSpeed on a machine without a GPU and without --use_cpu: each
    process thinks it is alone); one process started by `accelerate launch`'s simple launcher with a port set is
    what `accelerate launch --cpu --num_processes N` does (it runs ONE process)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != training_args.world_size:
        raise ValueError(
            f"the launcher started {launched} processes (WORLD_SIZE) but this one runs as {training_args.world_size} "
            f"of {training_args.world_size}: each process would train on all the data. On a machine without a GPU "
            "pass --use_cpu (gloo); DeepSpeed and FSDP need GPUs (README, 'Past one node')."
        )
    if launched == 1 and "ACCELERATE_USE_CPU" in os.environ and "MASTER_PORT" in os.environ:
        logger.warning(
            "started by `accelerate launch` as ONE process although a port was set for several: accelerate's "
            "--cpu launcher runs one process whatever --num_processes says. For N processes on CPUs run `accelerate "
            "launch --multi_gpu --num_processes N --num_machines 1 --mixed_precision no --dynamo_backend no SCRIPT "
            "... --use_cpu` or `torchrun --nproc_per_node N SCRIPT ... --use_cpu`"
        )


# ---------------------------------------------------------------------------------------------------- resume

DEEPSPEED_STEP = re.compile(r"^global_step\d+$")
DEEPSPEED_OPTIMIZER = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")
RNG_STATE = re.compile(r"^rng_state(?:_(\d+))?\.pth$")


def checkpoint_engine(folder: str) -> tuple[str | None, int | None]:
    """(the engine that wrote a checkpoint: DEEPSPEED, FSDP or None for DDP / one process, how many processes
    wrote it; None when the folder does not say)."""
    names = os.listdir(folder)
    for name in names:
        if DEEPSPEED_STEP.match(name) and os.path.isdir(os.path.join(folder, name)):
            ranks = {m.group(1) for n in os.listdir(os.path.join(folder, name)) if (m := DEEPSPEED_OPTIMIZER.match(n))}
            return DEEPSPEED, len(ranks) or None
    engine = FSDP if any(name.startswith("pytorch_model_fsdp") for name in names) else None
    ranks = [m.group(1) for name in names if (m := RNG_STATE.match(name))]
    return engine, (1 if ranks == [None] else len(ranks) or None)


def _checkpoint_to_resume(training_args) -> str | None:
    """The checkpoint --resume_from_checkpoint names (`latest`, and `auto`, which a requeued job passes: the newest
    complete one of the output dir)."""
    from .run_directory.resume import newest_complete_checkpoint, resume_request

    wanted = resume_request(training_args)
    if wanted in ("latest", "auto"):
        return newest_complete_checkpoint(training_args.output_dir)[0]
    return wanted


def check_resume_engine(training_args, checkpoint: str | None = None) -> None:
    """Before any work: the checkpoint to resume (default: the one --resume_from_checkpoint names) was written by
    the engine this run uses, and by as many processes when the engine cannot reshard it. DDP checkpoints and FSDP's
    (SHARDED_STATE_DICT through torch's distributed checkpoint, FULL_STATE_DICT whole) resume on any number of
    processes; DeepSpeed ZeRO's partitioned optimizer states need the same number (or a conversion to DeepSpeed's
    universal checkpoint)."""
    checkpoint = checkpoint or _checkpoint_to_resume(training_args)
    if checkpoint is None or not os.path.isdir(checkpoint):
        return
    engine, processes = checkpoint_engine(checkpoint)
    wanted = requested_engine(training_args)
    if engine != wanted:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} was written with {engine or 'DDP / one process'}, this run uses "
            f"{wanted or 'DDP / one process'}: the optimizer state of one engine does not load into another. Resume "
            f"with the engine that wrote it, or start a new run from its weights with --model_name_or_path "
            f"{checkpoint} (a fresh optimizer and schedule)"
        )
    if engine == FSDP and fsdp_version(training_args) == 1 and os.path.isdir(os.path.join(checkpoint, "optimizer_0")):
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} holds FSDP1 SHARDED_STATE_DICT optimizer states, which accelerate "
            "(1.16) does not restore: it loads them into a template made from the fresh optimizer's empty state, so "
            "AdamW would silently restart from zero moments. Resume it with FSDP2 (configs/fsdp/fsdp2.json), or run "
            'FSDP1 with "state_dict_type": "FULL_STATE_DICT" (configs/fsdp/fsdp1.json)'
        )
    if engine == DEEPSPEED and processes not in (None, training_args.world_size):
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} holds DeepSpeed ZeRO optimizer states partitioned for "
            f"{processes} processes; this run has {training_args.world_size}, and DeepSpeed does not repartition "
            f"them. Resume with {processes} processes, or convert the checkpoint to DeepSpeed's universal checkpoint "
            '(python -m deepspeed.checkpoint.ds_to_universal) and load it with "checkpoint": {"load_universal": '
            "true} in the DeepSpeed config"
        )


def check_distributed_run(training_args) -> None:
    """Before any data or model work: the launch (`check_launch`) and the checkpoint to resume
    (`check_resume_engine`) fit the run."""
    check_launch(training_args)
    check_resume_engine(training_args)


def check_final_model(folder: str, names) -> None:
    """Raises before a run is marked finished when the files saved as its final model (`names`, in `folder`) hold no
    config.json or no weights: from_pretrained could not load it."""
    names = set(names)
    weights = [n for n in names if re.match(r"^(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)$", n)]
    missing = [what for what, ok in (("config.json", "config.json" in names), ("model weights", weights)) if not ok]
    if missing:
        raise RuntimeError(
            f"the final model in {folder} has no {' and no '.join(missing)} (saved: {sorted(names) or 'nothing'}); "
            "the run is not marked finished. Its checkpoints are intact: resume with --resume_from_checkpoint latest"
        )
