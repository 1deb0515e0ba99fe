"""Argument dataclasses shared by the training scripts (parsed with `HfArgumentParser`, also from a .json/.yaml
file). `TrainingArguments` fields keep their transformers names; the MAE recipe adds a few."""

from dataclasses import dataclass, field, make_dataclass

from transformers import TrainingArguments

# The MAEConfig fields a script may set. Left at None, a field keeps the value of the checkpoint being loaded, or
# MAEConfig's default (ViT-B/16 with the official decoder) for a fresh model.
ARCHITECTURE = {
    "image_size": int,
    "patch_size": int,
    "num_channels": int,
    "hidden_size": int,
    "num_hidden_layers": int,
    "num_attention_heads": int,
    "intermediate_size": int,
    "decoder_hidden_size": int,
    "decoder_num_hidden_layers": int,
    "decoder_num_attention_heads": int,
    "decoder_intermediate_size": int,
    "mask_ratio": float,
    "norm_pix_loss": bool,
    "drop_path_rate": float,
    "pooling": str,
    "attn_implementation": str,
}

ModelArguments = make_dataclass(
    "ModelArguments",
    [
        ("model_name_or_path", str | None, field(default=None, metadata={"help": "An MAE checkpoint to start from."})),
        *[
            (name, kind | None, field(default=None, metadata={"help": f"MAEConfig.{name} (default: checkpoint's)"}))
            for name, kind in ARCHITECTURE.items()
        ],
    ],
)
ModelArguments.__doc__ = "Which model: a checkpoint and/or MAEConfig fields (None keeps the checkpoint's value)."


def config_overrides(model_args) -> dict:
    """The MAEConfig fields given on the command line (or in the config file)."""
    return {name: getattr(model_args, name) for name in ARCHITECTURE if getattr(model_args, name) is not None}


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset id (e.g. ILSVRC/imagenet-1k), a local parquet/arrow folder, or a built-in "
                  "set: 'digits' (scikit-learn's handwritten digits)."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset configuration."})
    train_dir: str | None = field(default=None, metadata={"help": "An ImageFolder of training images."})
    validation_dir: str | None = field(default=None, metadata={"help": "An ImageFolder of validation images."})
    image_column_name: str | None = field(default=None, metadata={"help": "Auto-detected when not given."})
    train_val_split: float = field(
        default=0.05, metadata={"help": "Share of train carved out for validation when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate train (debugging, quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate validation."})
    streaming: bool = field(
        default=False, metadata={"help": "Stream the dataset instead of downloading it first (needs --max_steps)."}
    )
    verify_images: bool = field(
        default=True, metadata={"help": "Decode every image once before training to catch corrupt files."}
    )
    skip_corrupt_images: bool = field(
        default=False, metadata={"help": "Leave out (and count) images that cannot be decoded instead of failing."}
    )
    crop_min_scale: float = field(
        default=0.2, metadata={"help": "Lower bound of RandomResizedCrop's area scale (official MAE: 0.2)."}
    )
    flip_probability: float = field(
        default=0.5, metadata={"help": "Horizontal flips in training (0 for data where flips change the class)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets stores downloads."})


@dataclass
class RecipeArguments(TrainingArguments):
    """TrainingArguments plus the recipe's epoch-based settings and a safe output dir."""

    base_learning_rate: float | None = field(
        default=None,
        metadata={"help": "lr = base_learning_rate x global batch / 256, computed once the world size is known. "
                  "Overrides --learning_rate when given."},
    )
    warmup_epochs: float | None = field(
        default=None, metadata={"help": "Linear warmup length in epochs (converted to a share of training)."}
    )
    save_every_epochs: float | None = field(
        default=None, metadata={"help": "Checkpoint interval in epochs (the seed's --save_checkpoint_interval)."}
    )
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
