"""Argument dataclasses shared by the training scripts (parsed with `HfArgumentParser`, also from a .json/.yaml
file). `TrainingArguments` fields keep their transformers names; the MAE recipe adds a few."""

import copy
from dataclasses import dataclass, field, fields, make_dataclass
from typing import ClassVar

from transformers import TrainingArguments
from transformers.training_args import trainer_log_levels

from .configuration_mae import MAEConfig, MAESegmentationConfig


def recipe(default, help: str, source: str, **metadata):
    """A field whose --help line gives its default and where the default comes from (paper table, official
    repository, mmsegmentation config)."""
    values = (
        {"default_factory": lambda: copy.deepcopy(default)}
        if isinstance(default, list | dict)
        else {"default": default}
    )
    return field(**values, metadata={"help": f"{help} (default: %(default)s; {source})", **metadata})


# The config fields a script may set, as flags: {name: (type, help)}. Left at None, a field keeps the value of the
# checkpoint being loaded, or the config class's default for a fresh model (`config_fields`).
ENCODER = {
    "image_size": (int, "Input image side in pixels."),
    "patch_size": (int, "Patch side in pixels."),
    "num_channels": (int, "Image channels (1: grayscale)."),
    "hidden_size": (int, "Encoder width."),
    "num_hidden_layers": (int, "Encoder depth."),
    "num_attention_heads": (int, "Encoder attention heads."),
    "intermediate_size": (int, "Encoder MLP width."),
    "drop_path_rate": (float, "Stochastic depth rate."),
    "attn_implementation": (str, "'sdpa' or 'eager'."),
}
DECODER = {  # pretraining only
    "decoder_hidden_size": (int, "Decoder width."),
    "decoder_num_hidden_layers": (int, "Decoder depth."),
    "decoder_num_attention_heads": (int, "Decoder attention heads."),
    "decoder_intermediate_size": (int, "Decoder MLP width."),
    "mask_ratio": (float, "Share of the patches removed."),
    "norm_pix_loss": (bool, "Regress per-patch normalised pixels."),
}
SEGMENTATION = {  # MAESegmentationConfig's neck and heads
    "out_indices": (list[int], "Blocks whose outputs feed the neck."),
    "neck_rescales": (list[float], "Neck scale factor per level."),
    "decode_channels": (int, "UperNet width."),
    "auxiliary_channels": (int, "FCN auxiliary head width."),
    "use_auxiliary_head": (bool, "Train with the FCN auxiliary head."),
    "auxiliary_loss_weight": (float, "Weight of the auxiliary loss."),
    "classifier_dropout_prob": (
        float,
        ("Dropout2d before both heads' 1x1 classifiers (mmsegmentation's dropout_ratio)."),
    ),
    "classifier_init_std": (
        float,
        (
            "Std of the classifiers' normal init, 0 = kaiming-normal like the other "
            "convolutions (mmsegmentation's conv_seg)."
        ),
    ),
    "avg_non_ignore": (
        bool,
        (
            "Average the loss over the non-ignored pixels only (false: over all pixels, "
            "ignored ones adding 0; mmsegmentation)."
        ),
    ),
    "inference_mode": (str, "'whole' image or 'slide' (sliding window; mmsegmentation's test mode)."),
    "test_crop_size": (int, "Sliding-window crop."),
    "test_stride": (int, "Sliding-window stride."),
}
ARCHITECTURE = {
    **ENCODER,
    **DECODER,
    "pooling": (str, "'mean' (global pool + fc_norm) or 'cls' (class token)."),
    **SEGMENTATION,
}
MODELS_MAE = "official ViT-B/16 of models_mae.py"
MMSEG_MAE = "mmsegmentation configs/mae"


def _shown(value) -> str:
    """A default as it is written on the command line."""
    if isinstance(value, list | tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def config_fields(names, config, source: str) -> list[tuple]:
    """(name, type, field) for `make_dataclass` of the config fields `names` (see ENCODER), left at None: the
    checkpoint's value. Their --help gives `config`'s default (a fresh model's) and its `source`."""
    result = []
    for name in names:
        kind, text = ARCHITECTURE[name]
        default = getattr(config, name) if name != "attn_implementation" else "sdpa"
        text += f" (default: the checkpoint's; a new model: {_shown(default)}, {source})"
        result.append((name, kind | None, field(default=None, metadata={"help": text})))
    return result


ModelArguments = make_dataclass(
    "ModelArguments",
    [
        (
            "model_name_or_path",
            str | None,
            field(default=None, metadata={"help": "An MAE checkpoint to start from (default: none, random init)."}),
        ),
        *config_fields(ENCODER, MAEConfig(), MODELS_MAE),
    ],
)
ModelArguments.__doc__ = "Which model: a checkpoint and/or MAEConfig fields (None keeps the checkpoint's value)."
DecoderModelArguments = make_dataclass(
    "DecoderModelArguments", config_fields(DECODER, MAEConfig(), MODELS_MAE), bases=(ModelArguments,)
)
DecoderModelArguments.__doc__ = "ModelArguments plus the pretraining decoder and masking."
SegmenterModelArguments = make_dataclass(
    "SegmenterModelArguments", config_fields(SEGMENTATION, MAESegmentationConfig(), MMSEG_MAE), bases=(ModelArguments,)
)
SegmenterModelArguments.__doc__ = "ModelArguments plus UperNet's neck and heads (MAESegmentationConfig)."


def config_overrides(model_args, names=ARCHITECTURE) -> dict:
    """The config fields among `names` given on the command line (or in the config file)."""
    given = {f.name: getattr(model_args, f.name) for f in fields(model_args) if f.name in names}
    return {name: value for name, value in given.items() if value is not None}


@dataclass
class DataArguments:
    """Where the images come from (every script)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset id (e.g. ILSVRC/imagenet-1k), a local parquet/arrow folder, or a built-in "
            "set: 'digits' (scikit-learn's handwritten digits)."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset configuration."})
    image_column_name: str | None = field(default=None, metadata={"help": "Auto-detected when not given."})
    train_val_split: float = field(
        default=0.05, metadata={"help": "Share of train carved out for validation when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate train (debugging, quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate validation."})
    verify_images: bool = field(
        default=True,
        metadata={"help": "Decode every image (and annotation) once before training to catch corrupt files."},
    )
    skip_corrupt_images: bool = field(
        default=False,
        metadata={
            "help": "Leave out (and count) images (or image/annotation pairs) that cannot be decoded, "
            "instead of failing."
        },
    )
    flip_probability: float = recipe(
        0.5,
        "Horizontal flips in training (0 for data where flips change the class).",
        "official main_pretrain.py, main_finetune.py; mmsegmentation configs/mae",
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets stores downloads."})


@dataclass
class ImageDataArguments(DataArguments):
    """Image datasets of pretraining and classification: also ImageFolders, checked image by image."""

    train_dir: str | None = field(
        default=None, metadata={"help": "An ImageFolder of training images (instead of --dataset_name)."}
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "An ImageFolder of validation images (with --train_dir)."}
    )
    crop_min_scale: float = recipe(0.2, "Lower bound of RandomResizedCrop's area scale.", "official main_pretrain.py")


# The settings whose defaults each script takes from its recipe (`RecipeArguments.RECIPE`): {name: (type, help)}.
RECIPE_SETTINGS = {
    "learning_rate": (
        float | None,
        "Peak learning rate (or give --base_learning_rate: lr = blr x global batch / 256).",
    ),
    "base_learning_rate": (
        float | None,
        "lr = base_learning_rate x global batch / 256; --learning_rate given instead replaces it.",
    ),
    "weight_decay": (float, "AdamW weight decay (none on biases, norms, tokens)."),
    "adam_beta1": (float, "AdamW beta1."),
    "adam_beta2": (float, "AdamW beta2."),
    "layer_decay": (float | None, "Layer-wise lr decay (1.0: off)."),
    "use_lars": (bool, "LARS instead of --optim (the linear probe's optimizer)."),
    "num_train_epochs": (float, "Training epochs."),
    "max_steps": (int, "Training steps; --num_train_epochs given instead replaces it."),
    "warmup_epochs": (float | None, "Linear warmup epochs; --warmup_steps given instead replaces it."),
    "warmup_steps": (float, "Linear warmup steps (or a share of training if < 1)."),
    "lr_scheduler_type": (str, "Learning-rate decay after warmup."),
    "lr_scheduler_kwargs": (dict | str | None, "Scheduler settings (JSON)."),
    "max_grad_norm": (float, "Gradient clipping norm, 0: none."),
    "per_device_train_batch_size": (int, "Images per device and step."),
    "per_device_eval_batch_size": (int, "Images per device in evaluation."),
    "batch_eval_metrics": (bool, "Score evaluation batch by batch."),
    "eval_strategy": (str, "When to evaluate: 'no', 'steps' or 'epoch'."),
    "eval_steps": (float, "Evaluate every N steps."),
    "save_strategy": (str, "When to checkpoint: 'no', 'steps' or 'epoch'."),
    "save_steps": (float, "Checkpoint every N steps."),
    "label_names": (list[str], None),  # hidden: the script's model decides
}
# The recipes that give a base learning rate: --learning_rate is derived from it unless given.
SCALED_LEARNING_RATE = (
    None,
    None,
    (
        "Peak learning rate, used as given instead of --base_learning_rate "
        "(default: base_learning_rate x global batch / 256)"
    ),
)


def recipe_field(name: str, default, source: str | None = None, help: str | None = None):
    """The field of a RECIPE_SETTINGS setting: its default, where that comes from (None: our choice, no source) and,
    where the script says more than the shared help, its own help."""
    text = help or RECIPE_SETTINGS[name][1]
    if source is not None:
        return recipe(default, text, source)
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class RecipeArguments(TrainingArguments):
    """TrainingArguments plus the recipe's epoch-based settings, the optimizer options of the recipes (layer decay,
    LARS) and a safe output dir.

    A script's subclass gives its recipe as `RECIPE = {name: (default, source) or (default, source, help)}` over
    RECIPE_SETTINGS: each becomes a typed field with the shared help, the default and its source (`recipe_field`)."""

    RECIPE: ClassVar[dict[str, tuple]] = {}

    IGNORED: ClassVar[dict[str, str]] = {
        "do_predict": "there is no prediction stage; --do_eval evaluates the validation split",
        **{
            name: "for text models"
            for name in (
                "neftune_noise_alpha",
                "use_liger_kernel",
                "liger_kernel_config",
                "use_cache",
                "include_num_input_tokens_seen",
                "length_column_name",
                "average_tokens_across_devices",
            )
        },
    }
    # Not for users of these scripts; other values are refused by argument_checks.check_trainer_arguments.
    HIDDEN: ClassVar[tuple[str, ...]] = ("remove_unused_columns", "label_names", "label_smoothing_factor")

    learning_rate: float | None = field(
        default=5e-5, metadata={"help": "Peak learning rate; --base_learning_rate replaces it when set."}
    )
    base_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "lr = base_learning_rate x global batch / 256, computed once the world size is known; "
            "--learning_rate given instead replaces it."
        },
    )
    warmup_steps: float = field(
        default=0,
        metadata={"help": "Linear warmup in steps (a share of training if < 1); replaces --warmup_epochs."},
    )
    warmup_epochs: float | None = field(
        default=None,
        metadata={
            "help": "Linear warmup length in epochs (converted to a share of training); --warmup_steps "
            "given instead replaces it."
        },
    )
    save_every_epochs: float | None = field(
        default=None,
        metadata={
            "help": "Checkpoint interval in epochs (the seed's --save_checkpoint_interval); --save_steps or "
            "--save_strategy given instead replace it."
        },
    )
    ddp_find_unused_parameters: bool | None = field(
        default=None,
        metadata={
            "help": "Whether DDP searches for parameters without gradients every step (default: only where "
            "the model has some, e.g. encoder blocks after the last --out_indices; transformers' default "
            "searches always, and warns on every process)"
        },
    )
    log_level_replica: str = field(
        default="error",
        metadata={
            "help": "Log level of the processes other than the main one: with 'error', warnings are shown "
            "once, by the main process (transformers' default: warning).",
            "choices": list(trainer_log_levels),
        },
    )
    logging_steps: float = field(default=50, metadata={"help": "Log the training loss every N steps."})
    do_train: bool = field(default=True, metadata={"help": "Train (false: evaluate the given model only)."})
    do_eval: bool = field(default=True, metadata={"help": "Evaluate on the validation split."})
    remove_unused_columns: bool = False  # the image column is read by the transforms, not by the model
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into a non-empty output dir (it is never emptied)."}
    )
    eval_mask_seed: int = field(
        default=1234, metadata={"help": "Seed of the masks used in evaluation, so eval_loss is comparable."}
    )
    gpu_fast_paths: bool = field(
        default=True,
        metadata={
            "help": "On CUDA: bf16 autocast (where supported and neither --fp16 nor --bf16 is given), TF32 "
            "matmuls, persistent dataloader workers, non-blocking copies from pinned memory, no per-step host "
            "sync (loss checked at logging steps). "
            "Each also has its own flag (--bf16, --tf32, --dataloader_persistent_workers, "
            "--finite_loss_check); fused AdamW is the default --optim."
        },
    )
    sdpa_backend: str = field(
        default="auto",
        metadata={
            "help": "Attention kernel: auto (PyTorch picks flash / memory-efficient / cuDNN), or force one.",
            "choices": ["auto", "flash", "efficient", "cudnn", "math"],
        },
    )
    layer_decay: float | None = field(default=None, metadata={"help": RECIPE_SETTINGS["layer_decay"][1]})
    use_lars: bool = field(default=False, metadata={"help": RECIPE_SETTINGS["use_lars"][1]})
    finite_loss_check: str = field(
        default="auto",
        metadata={
            "help": "When a non-finite loss stops training: 'step' (before the update, one host sync per "
            "step), 'log' (at logging and checkpoint steps, no per-step sync), 'auto' (step on CPU, log on GPU).",
            "choices": ["auto", "step", "log"],
        },
    )

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        annotations = cls.__dict__.get("__annotations__", {})
        for name, (default, *given) in cls.__dict__.get("RECIPE", {}).items():
            if name not in RECIPE_SETTINGS:
                raise TypeError(f"{cls.__name__}.RECIPE: {name} is not one of RECIPE_SETTINGS")
            annotations[name] = RECIPE_SETTINGS[name][0]
            setattr(cls, name, recipe_field(name, default, *given))
        cls.__annotations__ = annotations

    def __post_init__(self):
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"--layer_decay must be in (0, 1] (1.0: off), got {self.layer_decay}")
        super().__post_init__()
