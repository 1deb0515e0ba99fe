#!/usr/bin/env python
"""MAE pretraining with transformers' Trainer: one process, `torchrun`, or `accelerate launch`.

    python run_pretraining.py configs/pretrain_digits_demo.yaml            # the demo, nothing downloaded
    accelerate launch run_pretraining.py configs/pretrain_vit_base.yaml --dataset_name ILSVRC/imagenet-1k
Any flag overrides the config file given first.
"""

from dataclasses import dataclass

import torch
from datasets import Image
from transformers import ViTImageProcessor, set_seed
from transformers.image_utils import PILImageResampling
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

from mae_hf import MAEConfig, MAEForPreTraining
from mae_hf.argument_checks import PRETRAINING_METRICS
from mae_hf.arguments import (
    DEFINES,
    SCALED_LEARNING_RATE,
    DecoderModelArguments,
    ImageDataArguments,
    RecipeArguments,
    config_overrides,
    flag,
    like,
)
from mae_hf.banner import StartBanner
from mae_hf.curves import TrainingCurvesCallback, loss_panels, monitor_panels
from mae_hf.data import (
    collate_pixel_values,
    eval_transform,
    find_image_column,
    load_image_datasets,
    normalisation,
)
from mae_hf.data.decoding import pretrain_image_transform
from mae_hf.data.gpu_decoding import GPUImageDecoder, collate_encoded
from mae_hf.data.seeding import MaskNoise
from mae_hf.data.transforms import ImageTransform
from mae_hf.figure_callbacks import ReconstructionCallback
from mae_hf.monitor import FeatureMonitor, MonitorArguments
from mae_hf.process_exit import run_main
from mae_hf.run_utils import (
    apply_recipe_schedule,
    apply_runtime_defaults,
    parse_arguments,
    reference_split,
    start_run,
    train_evaluate_save,
    train_size,
    verify_splits,
)
from mae_hf.trainer import MAETrainer

TAB8 = "paper Tab. 8"


@dataclass
class PretrainModelArguments(DecoderModelArguments):
    mask_ratio: float | None = like(DecoderModelArguments, "mask_ratio", 0.75, "paper Sec. 4.1, Fig. 5")
    norm_pix_loss: bool | None = like(DecoderModelArguments, "norm_pix_loss", True, "PRETRAIN.md, paper Tab. 8")
    num_visualized_images: int = flag(8, "Images in each reconstruction figure.")


@dataclass
class PretrainDataArguments(ImageDataArguments):
    streaming: bool = flag(
        False, "Stream the dataset instead of downloading it first (needs --max_steps).", run=DEFINES
    )
    image_decoding: str = flag(
        "fast",
        "Pretraining input pipeline: 'fast' (JPEGs decoded at reduced scale when the crop allows, crop/flip/normalise "
        "on uint8 tensors; same output distribution as 'pil', 1.6-2x its images/s per worker), 'pil' (torchvision v2 "
        "on PIL images), 'gpu' (workers read bytes; nvJPEG decodes the batch and crop/flip/normalise run on the "
        "device).",
        choices=["fast", "pil", "gpu"],
    )


@dataclass
class PretrainingArguments(RecipeArguments):
    """The official pretraining defaults (PRETRAIN.md / paper Tab. 8)."""

    learning_rate: float | None = like(RecipeArguments, "learning_rate", **SCALED_LEARNING_RATE)
    base_learning_rate: float | None = like(RecipeArguments, "base_learning_rate", 1.5e-4, TAB8)
    weight_decay: float = like(RecipeArguments, "weight_decay", 0.05, TAB8)
    adam_beta1: float = like(RecipeArguments, "adam_beta1", 0.9, TAB8)
    adam_beta2: float = like(RecipeArguments, "adam_beta2", 0.95, TAB8)
    num_train_epochs: float = like(RecipeArguments, "num_train_epochs", 800, "PRETRAIN.md")
    warmup_epochs: float | None = like(RecipeArguments, "warmup_epochs", 40, TAB8)
    lr_scheduler_type: SchedulerType | str = like(RecipeArguments, "lr_scheduler_type", "cosine", TAB8)
    max_grad_norm: float = like(
        RecipeArguments,
        "max_grad_norm",
        0.0,
        "official main_pretrain.py",
        help="Gradient clipping norm, 0: none (the seed used 1.0).",
    )
    per_device_train_batch_size: int = like(
        RecipeArguments, "per_device_train_batch_size", 64, "PRETRAIN.md: 64 per GPU x 64 GPUs = 4096"
    )
    label_names: list[str] | None = like(RecipeArguments, "label_names", ["pixel_values"])  # so eval reports eval_loss
    eval_strategy: IntervalStrategy | str = like(RecipeArguments, "eval_strategy", "epoch")
    save_strategy: SaveStrategy | str = like(RecipeArguments, "save_strategy", "epoch")
    layer_decay: float | None = like(
        RecipeArguments, "layer_decay", unused="pretraining trains every block at one learning rate (paper Tab. 8)"
    )
    use_lars: bool = like(RecipeArguments, "use_lars", unused="pretraining uses AdamW (paper Tab. 8)")


ARGUMENTS = (PretrainModelArguments, PretrainDataArguments, PretrainingArguments, MonitorArguments)


def build_config(model_args) -> MAEConfig:
    """The model's config, checked before any data work (bad sizes fail here)."""
    if model_args.model_name_or_path:
        return MAEConfig.from_pretrained(model_args.model_name_or_path, **config_overrides(model_args))
    return MAEConfig(**config_overrides(model_args))


def build_model(model_args, config: MAEConfig) -> MAEForPreTraining:
    if model_args.model_name_or_path:
        return MAEForPreTraining.from_pretrained(model_args.model_name_or_path, config=config)
    return MAEForPreTraining(config)


def prepare_datasets(raw, data_args, config: MAEConfig, processor, training_args):
    """train/validation with lazy transforms; corrupt images caught (or skipped) before training."""
    column = find_image_column(reference_split(raw), data_args.image_column_name)
    verify_splits(raw, column, data_args, training_args, data_args.streaming)
    size, channels = config.image_hw, config.num_channels
    mean, std = processor.image_mean, processor.image_std
    transforms = {
        "train": pretrain_image_transform(
            data_args.image_decoding,
            column,
            size,
            mean,
            std,
            min_scale=data_args.crop_min_scale,
            flip=data_args.flip_probability,
            num_channels=channels,
        ),
        "validation": ImageTransform(eval_transform(size, mean, std), column, channels),
    }
    if data_args.image_decoding != "pil" and "train" in raw:  # the fast pipelines read the encoded bytes themselves
        raw["train"] = raw["train"].cast_column(column, Image(decode=False))
    if data_args.streaming:
        return {
            split: raw[split].map(transforms[split], batched=True, remove_columns=raw[split].column_names)
            for split in raw
        }
    return {split: raw[split].with_transform(transforms[split]) for split in ("train", "validation") if split in raw}


def gpu_decoding_arguments(data_args, config: MAEConfig, processor, training_args) -> dict:
    """MAETrainer arguments: training batches of encoded images, decoded on the device (`--image_decoding gpu`)."""
    if data_args.image_decoding != "gpu":
        return {"data_collator": collate_pixel_values}
    if data_args.streaming:
        # accelerate dispatches streamed batches from process 0 by slicing tensors; encoded batches hold numpy
        # arrays, so each process reads its own share of the stream instead.
        training_args.accelerator_config.dispatch_batches = False
    return {
        "data_collator": collate_encoded,
        "eval_data_collator": collate_pixel_values,
        "image_decoder": GPUImageDecoder(
            config.image_hw, processor.image_mean, processor.image_std, config.num_channels
        ),
    }


def image_processor(config: MAEConfig) -> ViTImageProcessor:
    """Saved with the model: the one source of the mean/std that the transforms and figures use."""
    mean, std = normalisation(config.num_channels)
    height, width = config.image_hw
    return ViTImageProcessor(
        size={"height": height, "width": width},
        resample=PILImageResampling.BICUBIC,
        image_mean=list(mean),
        image_std=list(std),
    )


def reconstruction_figures(eval_dataset, processor, model_args, training_args) -> ReconstructionCallback:
    """Reconstructions of the first validation images at each evaluation and at the end."""
    count = model_args.num_visualized_images
    if hasattr(eval_dataset, "__len__"):
        images = torch.stack([eval_dataset[i]["pixel_values"] for i in range(min(count, len(eval_dataset)))])
    else:
        images = torch.stack([example["pixel_values"] for _, example in zip(range(count), eval_dataset)])
    return ReconstructionCallback(images, processor.image_mean, processor.image_std, training_args.output_dir)


def build_monitor(monitor_args, config: MAEConfig, processor, data_args, training_args) -> FeatureMonitor | None:
    """k-NN / linear-probe accuracy of the encoder at every evaluation (`--monitor_dataset`); None without one. (With
    --do_eval false a monitor is switched off or refused with the arguments: `implies`, `evaluates` facts.)"""
    return FeatureMonitor.from_arguments(
        monitor_args,
        config,
        training_args.per_device_eval_batch_size,
        training_args.dataloader_num_workers,
        data_args.cache_dir,
        processor,
    )


def training_curves(config: MAEConfig, monitor, output_dir: str) -> TrainingCurvesCallback:
    target = "per-patch normalised pixels" if config.norm_pix_loss else "normalised pixels"
    panels = loss_panels(f"MSE on masked patches\n({target})")
    return TrainingCurvesCallback(panels + (monitor_panels() if monitor is not None else []), output_dir)


def start_banner(config: MAEConfig, datasets, training_args) -> StartBanner:
    masking = (
        f"{config.num_masked_patches} of {config.num_patches} per image (mask ratio {config.mask_ratio:g}); "
        f"the encoder sees {config.num_patches - config.num_masked_patches}"
    )
    evaluated = datasets["validation"] if training_args.do_eval else None
    return StartBanner("Running MAE pretraining", datasets.get("train"), evaluated, {"Masked patches": masking})


def main(argv=None, callbacks=()):
    model_args, data_args, training_args, monitor_args = parse_arguments(ARGUMENTS, argv)
    start_run(
        model_args,
        training_args,
        ["pixel_values"],
        PRETRAINING_METRICS + monitor_args.metric_names(),
        streaming=data_args.streaming,
        model_class=MAEForPreTraining,
    )
    config = build_config(model_args)
    apply_runtime_defaults(training_args)  # every parameter gets a gradient, even the mask token at mask ratio 0
    processor = image_processor(config)

    raw = load_image_datasets(data_args, training_args.seed, training_args.do_train, data_args.streaming)
    apply_recipe_schedule(training_args, train_size(raw))  # before any image is decoded
    monitor = build_monitor(monitor_args, config, processor, data_args, training_args)  # its few images first
    datasets = prepare_datasets(raw, data_args, config, processor, training_args)

    set_seed(training_args.seed)  # the fresh model's weights too
    model = build_model(model_args, config)

    trainer = MAETrainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"] if training_args.do_train else None,
        eval_dataset=datasets["validation"] if training_args.do_eval else None,
        **gpu_decoding_arguments(data_args, config, processor, training_args),
        processing_class=processor,
        sample_draws={"noise": MaskNoise(config.num_patches)},  # each example's mask: seeded with its crop
        monitor=monitor,
        callbacks=[
            reconstruction_figures(datasets["validation"], processor, model_args, training_args),
            start_banner(config, datasets, training_args),
            training_curves(config, monitor, training_args.output_dir),
            *callbacks,
        ],
    )
    return train_evaluate_save(trainer, model, model_args, data_args, training_args)


if __name__ == "__main__":
    run_main(main)
