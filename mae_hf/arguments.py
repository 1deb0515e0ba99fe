"""Argument dataclasses shared by the training scripts (parsed with `HfArgumentParser`, also from a .json/.yaml
file). `TrainingArguments` fields keep their transformers names; the MAE recipe adds a few."""

import copy
from dataclasses import dataclass, field, make_dataclass
from typing import ClassVar

from transformers import TrainingArguments
from transformers.training_args import trainer_log_levels

from .configuration_mae import MAEConfig


def recipe(default, help: str, source: str, **metadata):
    """A field whose --help line gives its default and where the default comes from (paper table, official
    repository, mmsegmentation config)."""
    values = {"default_factory": lambda: copy.deepcopy(default)} if isinstance(default, list | dict) else {
        "default": default}
    return field(**values, metadata={"help": f"{help} (default: %(default)s; {source})", **metadata})


# The MAEConfig fields a script may set. Left at None, a field keeps the value of the checkpoint being loaded, or
# MAEConfig's default (ViT-B/16 with the official decoder, models_mae.py) for a fresh model.
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
ARCHITECTURE = {**ENCODER, **DECODER, "pooling": (str, "'mean' (global pool + fc_norm) or 'cls' (class token).")}


def architecture_fields(names) -> list[tuple]:
    """(name, type, field) of MAEConfig fields for `make_dataclass`, left at None: the checkpoint's value."""
    defaults, result = MAEConfig(), []
    for name in names:
        kind, text = ARCHITECTURE[name]
        default = getattr(defaults, name, None) if name != "attn_implementation" else "sdpa"
        text += f" (default: the checkpoint's; a new model: {default}, official ViT-B/16 of models_mae.py)"
        result.append((name, kind | None, field(default=None, metadata={"help": text})))
    return result


ModelArguments = make_dataclass(
    "ModelArguments",
    [
        ("model_name_or_path", str | None, field(
            default=None, metadata={"help": "An MAE checkpoint to start from (default: none, random init)."})),
        *architecture_fields(ENCODER),
    ],
)
ModelArguments.__doc__ = "Which model: a checkpoint and/or MAEConfig fields (None keeps the checkpoint's value)."
DecoderModelArguments = make_dataclass("DecoderModelArguments", architecture_fields(DECODER), bases=(ModelArguments,))
DecoderModelArguments.__doc__ = "ModelArguments plus the pretraining decoder and masking."


def config_overrides(model_args) -> dict:
    """The MAEConfig fields given on the command line (or in the config file)."""
    return {name: getattr(model_args, name) for name in ARCHITECTURE if getattr(model_args, name, None) is not None}


@dataclass
class DataArguments:
    """Where the images come from (every script)."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset id (e.g. ILSVRC/imagenet-1k), a local parquet/arrow folder, or a built-in "
                  "set: 'digits' (scikit-learn's handwritten digits)."},
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
        metadata={"help": "Leave out (and count) images (or image/annotation pairs) that cannot be decoded, "
                  "instead of failing."},
    )
    flip_probability: float = recipe(
        0.5, "Horizontal flips in training (0 for data where flips change the class).",
        "official main_pretrain.py, main_finetune.py; mmsegmentation configs/mae"
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
    crop_min_scale: float = recipe(
        0.2, "Lower bound of RandomResizedCrop's area scale.", "official main_pretrain.py"
    )


@dataclass
class RecipeArguments(TrainingArguments):
    """TrainingArguments plus the recipe's epoch-based settings and a safe output dir."""

    IGNORED: ClassVar[dict[str, str]] = {
        "do_predict": "there is no prediction stage; --do_eval evaluates the validation split",
        **{name: "for text models" for name in (
            "neftune_noise_alpha", "use_liger_kernel", "liger_kernel_config", "use_cache",
            "include_num_input_tokens_seen", "length_column_name", "average_tokens_across_devices")},
    }
    # Not for users of these scripts; other values are refused by argument_checks.check_trainer_arguments.
    HIDDEN: ClassVar[tuple[str, ...]] = ("remove_unused_columns", "label_names", "label_smoothing_factor")

    learning_rate: float | None = field(
        default=5e-5, metadata={"help": "Peak learning rate; --base_learning_rate replaces it when set."}
    )
    base_learning_rate: float | None = field(
        default=None,
        metadata={"help": "lr = base_learning_rate x global batch / 256, computed once the world size is known; "
                  "--learning_rate given instead replaces it."},
    )
    warmup_steps: float = field(
        default=0,
        metadata={"help": "Linear warmup in steps (a share of training if < 1); replaces --warmup_epochs."},
    )
    warmup_epochs: float | None = field(
        default=None,
        metadata={"help": "Linear warmup length in epochs (converted to a share of training); --warmup_steps "
                  "given instead replaces it."},
    )
    save_every_epochs: float | None = field(
        default=None,
        metadata={"help": "Checkpoint interval in epochs (the seed's --save_checkpoint_interval); --save_steps or "
                  "--save_strategy given instead replace it."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=None,
        metadata={"help": "Whether DDP searches for parameters without gradients every step (default: only where "
                  "the model has some, e.g. encoder blocks after the last --out_indices; transformers' default "
                  "searches always, and warns on every process)"},
    )
    log_level_replica: str = field(
        default="error",
        metadata={"help": "Log level of the processes other than the main one: with 'error', warnings are shown "
                  "once, by the main process (transformers' default: warning).",
                  "choices": list(trainer_log_levels)},
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
        metadata={"help": "On CUDA: bf16 autocast (where supported and neither --fp16 nor --bf16 is given), TF32 "
                  "matmuls, persistent dataloader workers, non-blocking copies from pinned memory, no per-step host "
                  "sync (loss checked at logging steps). "
                  "Each also has its own flag (--bf16, --tf32, --dataloader_persistent_workers, "
                  "--finite_loss_check); fused AdamW is the default --optim."},
    )
    sdpa_backend: str = field(
        default="auto",
        metadata={"help": "Attention kernel: auto (PyTorch picks flash / memory-efficient / cuDNN), or force one.",
                  "choices": ["auto", "flash", "efficient", "cudnn", "math"]},
    )
    finite_loss_check: str = field(
        default="auto",
        metadata={"help": "When a non-finite loss stops training: 'step' (before the update, one host sync per "
                  "step), 'log' (at logging and checkpoint steps, no per-step sync), 'auto' (step on CPU, log on GPU).",
                  "choices": ["auto", "step", "log"]},
    )


def each_epoch(what: str):
    """A field that evaluates or checkpoints once per epoch by default (pretraining and fine-tuning)."""
    return field(default="epoch", metadata={"help": f"When to {what}: 'no', 'steps' or 'epoch'."})


def scaled_learning_rate():
    """The --learning_rate of the recipes that give a base learning rate: derived from it unless given."""
    return field(default=None, metadata={"help": "Peak learning rate, used as given instead of --base_learning_rate "
                                         "(default: base_learning_rate x global batch / 256)"})
