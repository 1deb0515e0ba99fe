"""The scripts' options as dataclasses, every fact about a flag declared once, on its field (`flag`, `like`). The
command line and its --help (`cli`), the run identity (`run_settings`), the model card (`card_settings`) and the
model config (`config_overrides`) read them there. TrainingArguments' fields whose facts we need are redeclared on
`RecipeArguments` (`hf`); each script's recipe redeclares the shared fields with its defaults and their sources."""

import copy
from dataclasses import MISSING, dataclass, field, fields
from functools import partial

from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType
from transformers.training_args import OptimizerNames, trainer_log_levels

from .configuration_mae import MAEConfig, MAESegmentationConfig

DEFINES, APPLIED = "defines", "applied"  # `run` facts: see `flag`
ANY = "any value"  # `implies` / `evaluates`: whatever value the flag is given
MMSEG = "mmsegmentation configs/mae (ADE20K, ViT-B)"
# A config flag's default for a fresh model: its config class's, from (`config` fact: the part of the model it sets).
CONFIGS = {"encoder": (MAEConfig(), "official ViT-B/16 of models_mae.py")}
CONFIGS.update(decoder=CONFIGS["encoder"], segmentation=(MAESegmentationConfig(), "mmsegmentation configs/mae"))


def flag(default, help: str, source: str | None = None, **facts):
    """A dataclass field with its facts as metadata (list and dict defaults copied for each instance):

    help, source, shown: the --help line: the help, then the default (`shown`, else the value) and where it comes from
    (paper table, official repository, mmsegmentation config). run: DEFINES the run (a resume that changes it is
    refused), or APPLIED (part of the run's identity; a resume applies a change); absent: neither.
    way=(setting, side): one of two ways (sides 0, 1) of giving a setting: the side given in the highest layer wins,
    the other side's fields get their `off` value; both in one layer are refused unless a field of the setting
    `wins_in_layer`. implies={value or ANY: {setting: value}}: what giving the flag sets too. belongs_to: a setting
    whose change above this one resets it to `off`. evaluates: the value (or ANY but off) that needs an evaluation.
    preset: settings put under the layer that switches the flag on. unused: why the script refuses it (hidden).
    hidden: not in --help. card: on the model card. config: the model config part it sets (None: the checkpoint's
    value). choices, nargs, const: argparse's."""
    copied = isinstance(default, list | dict)
    values = {"default_factory": lambda: copy.deepcopy(default)} if copied else {"default": default}
    return field(**values, metadata={"help": help, **({"source": source} if source else {}), **facts})


def like(owner, name: str, default=MISSING, source: str | None = None, **changes):
    """The field `name` of the dataclass `owner` redeclared (with its type), `changes` made to its facts. A new
    `default` comes with its own `source` and `shown` (none unless given)."""
    base = next(spec for spec in fields(owner) if spec.name == name)
    facts = dict(base.metadata)
    if default is MISSING:
        default = base.default if base.default_factory is MISSING else base.default_factory()
    else:
        facts.pop("shown", None)
        facts["source"] = source
    return flag(default, **{**facts, **changes})


hf = partial(like, TrainingArguments)  # a TrainingArguments field, redeclared with our facts


def help_line(name: str, facts, default) -> str:
    """The --help text of flag `name`: its help, its default (`shown`, else the value) and the default's source."""
    text, source = facts.get("help") or "", facts.get("source")
    if "(default" in text:
        return text
    shown = facts.get("shown", default)
    if facts.get("config") and default is None and "shown" not in facts:
        config, source = CONFIGS[facts["config"]]
        shown = f"the checkpoint's; a new model: {_shown(getattr(config, name, None))}"
    shown = str(shown).replace("%", "%%")  # argparse formats help with %
    return f"{text} (default: {shown}{'; ' + source if source else ''})"


def _shown(value) -> str:
    """A default as it is written on the command line."""
    if isinstance(value, list | tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def config(part: str, help: str, **facts):
    """A model config field as a flag, None by default: the checkpoint's value (a fresh model: the config's)."""
    return flag(None, help, config=part, **facts)


@dataclass
class ModelArguments:
    """Which model: a checkpoint and/or MAEConfig fields (None keeps the checkpoint's value)."""

    model_name_or_path: str | None = flag(
        None, "An MAE checkpoint to start from", shown="none, random init", run=DEFINES
    )
    image_size: int | None = config("encoder", "Input image side in pixels.", run=DEFINES)
    patch_size: int | None = config("encoder", "Patch side in pixels.", run=DEFINES)
    num_channels: int | None = config("encoder", "Image channels (1: grayscale).", run=DEFINES)
    hidden_size: int | None = config("encoder", "Encoder width.", run=DEFINES)
    num_hidden_layers: int | None = config("encoder", "Encoder depth.", run=DEFINES)
    num_attention_heads: int | None = config("encoder", "Encoder attention heads.", run=DEFINES)
    intermediate_size: int | None = config("encoder", "Encoder MLP width.", run=DEFINES)
    drop_path_rate: float | None = config("encoder", "Stochastic depth rate.", run=APPLIED)
    attn_implementation: str | None = config(
        "encoder", "'sdpa' or 'eager'.", shown="the checkpoint's; a new model: sdpa"
    )


@dataclass
class DecoderModelArguments(ModelArguments):
    """ModelArguments plus the pretraining decoder and masking."""

    decoder_hidden_size: int | None = config("decoder", "Decoder width.", run=DEFINES)
    decoder_num_hidden_layers: int | None = config("decoder", "Decoder depth.", run=DEFINES)
    decoder_num_attention_heads: int | None = config("decoder", "Decoder attention heads.", run=DEFINES)
    decoder_intermediate_size: int | None = config("decoder", "Decoder MLP width.", run=DEFINES)
    mask_ratio: float | None = config("decoder", "Share of the patches removed.", run=APPLIED)
    norm_pix_loss: bool | None = config("decoder", "Regress per-patch normalised pixels.", run=APPLIED)


@dataclass
class SegmenterModelArguments(ModelArguments):
    """ModelArguments plus UperNet's neck and heads (MAESegmentationConfig)."""

    out_indices: list[int] | None = config("segmentation", "Blocks whose outputs feed the neck.", run=DEFINES)
    neck_rescales: list[float] | None = config("segmentation", "Neck scale factor per level.", run=DEFINES)
    decode_channels: int | None = config("segmentation", "UperNet width.", run=DEFINES)
    auxiliary_channels: int | None = config("segmentation", "FCN auxiliary head width.", run=DEFINES)
    use_auxiliary_head: bool | None = config("segmentation", "Train with the FCN auxiliary head.", run=DEFINES)
    auxiliary_loss_weight: float | None = config("segmentation", "Weight of the auxiliary loss.", run=APPLIED)
    classifier_dropout_prob: float | None = config(
        "segmentation", "Dropout2d before both heads' 1x1 classifiers (mmsegmentation's dropout_ratio).", run=APPLIED
    )
    classifier_init_std: float | None = config(
        "segmentation",
        "Std of the classifiers' normal init, 0: kaiming-normal (mmsegmentation's conv_seg).",
        run=APPLIED,
    )
    avg_non_ignore: bool | None = config(
        "segmentation", "Average the loss over the non-ignored pixels only (false: ignored ones add 0).", run=APPLIED
    )
    inference_mode: str | None = config("segmentation", "'whole' image or 'slide' (mmsegmentation's test mode).")
    test_crop_size: int | None = config("segmentation", "Sliding-window crop.")
    test_stride: int | None = config("segmentation", "Sliding-window stride.")


def config_names(args, part: str | None = None) -> list[str]:
    """The config fields (of `part`: "encoder", "decoder", "segmentation", ...; None: all) among the flags of `args`."""
    return [f.name for f in fields(args) if f.metadata.get("config") and part in (None, f.metadata["config"])]


def config_overrides(model_args, part: str | None = None) -> dict:
    """The config fields (see `config_names`) given a value; the others keep the checkpoint's."""
    values = {name: getattr(model_args, name) for name in config_names(model_args, part)}
    return {name: value for name, value in values.items() if value is not None}


SOURCE, FOLDERS = ("data source", 0), ("data source", 1)  # a data set, or ImageFolders


@dataclass
class DataArguments:
    """Where the images come from (every script)."""

    dataset_name: str | None = flag(
        None,
        "A Hub dataset id (e.g. ILSVRC/imagenet-1k), a local parquet/arrow folder, or a built-in set: 'digits' "
        "(scikit-learn's handwritten digits).",
        run=DEFINES,
        way=SOURCE,
        off=None,
    )
    dataset_config_name: str | None = flag(
        None, "The Hub dataset configuration.", run=DEFINES, way=SOURCE, off=None, belongs_to="dataset_name"
    )
    image_column_name: str | None = flag(None, "Auto-detected when not given.", run=DEFINES)
    train_val_split: float = flag(0.05, "Share of train carved out for validation when it has none.", run=DEFINES)
    max_train_samples: int | None = flag(None, "Truncate train (debugging, quick runs).", run=DEFINES)
    max_eval_samples: int | None = flag(None, "Truncate validation.")
    verify_images: bool = flag(True, "Decode every image (and annotation) once before training to catch corrupt files.")
    skip_corrupt_images: bool = flag(
        False, "Leave out (and count) images or image/annotation pairs that cannot be decoded.", run=DEFINES
    )
    flip_probability: float = flag(
        0.5,
        "Horizontal flips in training (0 for data where flips change the class).",
        "official main_pretrain.py, main_finetune.py; mmsegmentation configs/mae",
        run=APPLIED,
    )
    cache_dir: str | None = flag(None, "Where datasets stores downloads.")


@dataclass
class ImageDataArguments(DataArguments):
    """Image datasets of pretraining and classification: also ImageFolders, checked image by image."""

    train_dir: str | None = flag(None, "An ImageFolder of training images.", run=DEFINES, way=FOLDERS, off=None)
    validation_dir: str | None = flag(None, "An ImageFolder of validation images.", way=FOLDERS, off=None)
    crop_min_scale: float = flag(0.2, "RandomResizedCrop's smallest area.", "official main_pretrain.py", run=APPLIED)


@dataclass
class AnnotationDataArguments(DataArguments):
    """Segmentation data sets: images and their class maps."""

    annotation_column_name: str | None = flag(None, "Auto-detected when not given.", run=DEFINES)
    reduce_labels: bool = flag(False, "ADE20K: 0 -> 255 (ignored), 1..150 -> 0..149.", run=DEFINES)
    num_labels: int | None = flag(None, "Classes", shown="from the dataset", run=DEFINES)


def data_source(data_args) -> str | None:
    """The data set or folder a run reads (the first given of its `data source` fields)."""
    given = [getattr(data_args, f.name) for f in fields(data_args) if f.metadata.get("way", ("",))[0] == "data source"]
    return next((value for value in given if value), None)


# What --do_eval false switches off: a run without evaluation loads no evaluation data, so nothing may evaluate at
# start, choose a best model or score the monitor.
NO_EVALUATION = {"eval_strategy": "no", "eval_on_start": False, "load_best_model_at_end": False}
NO_EVALUATION.update(metric_for_best_model=None, monitor_dataset=None, monitor_train_dir=None)
TEXT_MODELS = "for text models"
CHECKPOINTS, STEPS = ("checkpoint interval", 0), ("checkpoint interval", 1)  # in epochs, or transformers' own


@dataclass
class RecipeArguments(TrainingArguments):
    """TrainingArguments with the recipes' options (base learning rate, epochs of warmup and checkpoints, layer
    decay, LARS), a safe output dir, and the facts of the TrainingArguments fields that the scripts need (`hf`)."""

    seed: int = hf("seed", run=DEFINES, card=True)
    data_seed: int | None = hf("data_seed", run=DEFINES)
    learning_rate: float | None = flag(
        5e-5, "Peak learning rate (or --base_learning_rate).", run=APPLIED, way=("learning rate", 1), card=True
    )
    base_learning_rate: float | None = flag(
        None,
        "lr = base_learning_rate x global batch / 256, computed once the world size is known; --learning_rate given "
        "instead replaces it.",
        run=APPLIED,
        way=("learning rate", 0),
        off=None,
        card=True,
    )
    layer_decay: float | None = flag(None, "Layer-wise lr decay (1.0: off).", run=APPLIED)
    weight_decay: float = hf(
        "weight_decay", help="AdamW weight decay (none on norms, biases, tokens).", run=APPLIED, card=True
    )
    adam_beta1: float = hf("adam_beta1", help="AdamW beta1.", run=APPLIED, card=True)
    adam_beta2: float = hf("adam_beta2", help="AdamW beta2.", run=APPLIED, card=True)
    adam_epsilon: float = hf("adam_epsilon", run=APPLIED)
    use_lars: bool = flag(
        False, "LARS instead of --optim (the linear probe's optimizer).", run=DEFINES, way=("optimizer", 0), off=False
    )
    optim: OptimizerNames | str = hf("optim", run=DEFINES, way=("optimizer", 1))
    optim_args: str | None = hf("optim_args", run=DEFINES)
    num_train_epochs: float = hf("num_train_epochs", run=APPLIED, way=("training length", 0), card=True)
    # transformers' rule: --max_steps overrides --num_train_epochs
    max_steps: int = hf("max_steps", run=APPLIED, way=("training length", 1), off=-1, wins_in_layer=True, card=True)
    warmup_epochs: float | None = flag(
        None, "Linear warmup epochs (a share of training).", run=APPLIED, way=("warmup", 0), off=None
    )
    warmup_steps: float = flag(
        0, "Linear warmup steps (a share of training if < 1).", run=APPLIED, way=("warmup", 1), off=0, card=True
    )
    lr_scheduler_type: SchedulerType | str = hf("lr_scheduler_type", run=APPLIED, card=True)
    # the recipes' {"min_lr": ...} fails transformers' cosine, linear, ...: reset under another type given above
    lr_scheduler_kwargs: dict | str | None = hf(
        "lr_scheduler_kwargs", run=APPLIED, belongs_to="lr_scheduler_type", off={}
    )
    max_grad_norm: float = hf("max_grad_norm", help="Gradient clipping norm, 0: none.", run=APPLIED, card=True)
    label_smoothing_factor: float = hf("label_smoothing_factor", run=APPLIED, hidden=True)
    train_sampling_strategy: str = hf("train_sampling_strategy", run=DEFINES)
    dataloader_drop_last: bool = hf("dataloader_drop_last", run=DEFINES)
    per_device_train_batch_size: int = hf("per_device_train_batch_size", card=True)
    gradient_accumulation_steps: int = hf("gradient_accumulation_steps", card=True)
    do_train: bool = flag(True, "Train (false: evaluate the given model only).")
    do_eval: bool = flag(True, "Evaluate on the validation split.", implies={False: NO_EVALUATION})
    # We evaluate and checkpoint every epoch by default: --eval_steps N / --save_steps N alone would be ignored.
    eval_strategy: IntervalStrategy | str = hf("eval_strategy", implies={"no": {"load_best_model_at_end": False}})
    eval_steps: float | None = hf("eval_steps", implies={ANY: {"eval_strategy": "steps"}})
    eval_on_start: bool = hf("eval_on_start", evaluates=True)
    load_best_model_at_end: bool = hf("load_best_model_at_end", evaluates=True)
    save_every_epochs: float | None = flag(
        None, "Checkpoint interval in epochs (the seed's --save_checkpoint_interval).", way=CHECKPOINTS, off=None
    )
    save_strategy: SaveStrategy | str = hf(
        "save_strategy", way=STEPS, implies={"no": {"load_best_model_at_end": False}}, evaluates="best"
    )
    save_steps: float = hf("save_steps", way=STEPS, implies={ANY: {"save_strategy": "steps"}})
    fp16: bool = hf("fp16", implies={True: {"bf16": False}})  # one precision
    bf16: bool = hf("bf16", implies={True: {"fp16": False}})
    label_names: list[str] | None = hf("label_names", hidden=True)  # the script's model decides
    # the image column is read by the transforms, not by the model (other values refused by argument_checks)
    remove_unused_columns: bool = hf("remove_unused_columns", False, hidden=True)
    ddp_find_unused_parameters: bool | None = flag(
        None,
        "Whether DDP searches for parameters without gradients every step (default: only where the model has some, "
        "e.g. encoder blocks after the last --out_indices; transformers': always, with a warning on every process)",
    )
    log_level_replica: str = flag(
        "error",
        "Log level of the processes but the main one: with 'error', warnings are shown once, by the main process.",
        choices=list(trainer_log_levels),
    )
    logging_steps: float = flag(50, "Log the training loss every N steps.")
    overwrite_output_dir: bool = flag(False, "Allow writing into a non-empty output dir (it is never emptied).")
    eval_mask_seed: int = flag(1234, "Seed of the masks used in evaluation, so eval_loss is comparable.")
    gpu_fast_paths: bool = flag(
        True,
        "On CUDA: bf16 autocast (where supported and neither --fp16 nor --bf16 is given), TF32 matmuls, persistent "
        "dataloader workers, non-blocking copies from pinned memory, no per-step host sync (loss checked at logging "
        "steps). Each also has its own flag (--bf16, --tf32, --dataloader_persistent_workers, --finite_loss_check); "
        "fused AdamW is the default --optim.",
    )
    sdpa_backend: str = flag(
        "auto", "Attention kernel (auto: PyTorch picks).", choices=["auto", "flash", "efficient", "cudnn", "math"]
    )
    finite_loss_check: str = flag(
        "auto",
        "When a non-finite loss stops training: 'step' (before the update, one host sync per step), 'log' (at "
        "logging and checkpoint steps, no per-step sync), 'auto' (step on CPU, log on GPU).",
        choices=["auto", "step", "log"],
    )
    do_predict: bool = hf("do_predict", unused="there is no prediction stage; --do_eval evaluates the validation split")
    neftune_noise_alpha: float | None = hf("neftune_noise_alpha", unused=TEXT_MODELS)
    use_liger_kernel: bool = hf("use_liger_kernel", unused=TEXT_MODELS)
    liger_kernel_config: dict[str, bool] | None = hf("liger_kernel_config", unused=TEXT_MODELS)
    use_cache: bool = hf("use_cache", unused=TEXT_MODELS)
    include_num_input_tokens_seen: str | bool = hf("include_num_input_tokens_seen", unused=TEXT_MODELS)
    length_column_name: str = hf("length_column_name", unused=TEXT_MODELS)
    average_tokens_across_devices: bool = hf("average_tokens_across_devices", unused=TEXT_MODELS)

    def __post_init__(self):
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"--layer_decay must be in (0, 1] (1.0: off), got {self.layer_decay}")
        super().__post_init__()


# The recipes that give a base learning rate: --learning_rate is derived from it unless given.
SCALED_LEARNING_RATE = dict(default=None, help="Peak learning rate", shown="base_learning_rate x global batch / 256")


def run_settings(*parsed) -> tuple[dict, set[str]]:
    """({name: value} of the settings that are part of a run's identity (`run` fact) and that the script uses, the
    names of those that define the run); see run_directory.identity."""
    used = [(args, f) for args in parsed for f in fields(args) if f.metadata.get("run") and "unused" not in f.metadata]
    settings = {f.name: getattr(args, f.name) for args, f in used}
    return settings, {f.name for _, f in used if f.metadata["run"] == DEFINES}


def card_settings(training_args) -> list[tuple[str, object]]:
    """(name, value) of the training settings the model card lists, and the number of processes."""
    listed = [(f.name, getattr(training_args, f.name)) for f in fields(training_args) if f.metadata.get("card")]
    return [*listed, ("world_size", training_args.world_size)]
