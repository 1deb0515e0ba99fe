#!/usr/bin/env python
"""Semantic segmentation with UperNet on an MAE encoder (mmsegmentation's ADE20K recipe) and transformers' Trainer.

    python run_semantic_segmentation.py configs/segment_digits.yaml --model_name_or_path outputs/pretrain_digits_seg
    accelerate launch run_semantic_segmentation.py configs/segment_ade20k_vit_base.yaml \\
        --model_name_or_path MAE_DIR --dataset_name /data/ADEChallengeData2016
Without --model_name_or_path the encoder starts from random init.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import SegformerImageProcessor, TrainingArguments, set_seed
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

from mae_hf import MAEConfig, MAEForSemanticSegmentation
from mae_hf.argument_checks import SEGMENTATION_METRICS, check_batchnorm_batches
from mae_hf.arguments import (
    APPLIED,
    MMSEG,
    AnnotationDataArguments,
    RecipeArguments,
    SegmenterModelArguments,
    config_names,
    config_overrides,
    flag,
    like,
)
from mae_hf.banner import StartBanner
from mae_hf.configuration_mae import MAESegmentationConfig, segmentation_config
from mae_hf.curves import TrainingCurvesCallback, loss_panels, percent_panel
from mae_hf.data import (
    SegmentationBatchTransform,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    check_annotations,
    collate_segmentation,
    collate_segmentation_with_sizes,
    load_segmentation_datasets,
    normalisation,
)
from mae_hf.figure_callbacks import SegmentationFigureCallback
from mae_hf.metrics import StreamingMeanIoU, eval_batches
from mae_hf.process_exit import run_main
from mae_hf.run_utils import (
    apply_recipe_schedule,
    apply_runtime_defaults,
    logger,
    parse_arguments,
    start_run,
    train_evaluate_save,
    train_size,
    used_splits,
)
from mae_hf.trainer import SegmentationTrainer


@dataclass
class SegmentationModelArguments(SegmenterModelArguments):
    drop_path_rate: float | None = like(
        SegmenterModelArguments, "drop_path_rate", 0.1, MMSEG, help="Stochastic depth rate of the encoder."
    )
    num_visualized_images: int = flag(4, "Images in each segmentation figure.")


@dataclass
class SegmentationDataArguments(AnnotationDataArguments):
    crop_size: int = flag(512, "Training crop side in pixels.", MMSEG, run=APPLIED)
    resize_scale: list[int] = flag([2048, 512], "Random rescale around this (long, short) size.", MMSEG, run=APPLIED)
    ratio_range: list[float] = flag([0.5, 2.0], "Range of the random rescale ratio.", MMSEG, run=APPLIED)
    cat_max_ratio: float = flag(0.75, "Largest share one class may take of a random crop.", MMSEG, run=APPLIED)


@dataclass
class SegmentationTrainingArguments(RecipeArguments):
    """mmsegmentation's MAE + UperNet ADE20K schedule: AdamW 1e-4, β (0.9, 0.999), wd 0.05, layer decay 0.65,
    1500 linear warmup iterations then polynomial decay, 160k iterations at batch 16 (8 GPUs x 2)."""

    learning_rate: float | None = like(RecipeArguments, "learning_rate", 1e-4, MMSEG)
    weight_decay: float = like(RecipeArguments, "weight_decay", 0.05, MMSEG)
    adam_beta1: float = like(RecipeArguments, "adam_beta1", 0.9, MMSEG)
    adam_beta2: float = like(RecipeArguments, "adam_beta2", 0.999, MMSEG)
    layer_decay: float | None = like(RecipeArguments, "layer_decay", 0.65, MMSEG)
    warmup_steps: float = like(RecipeArguments, "warmup_steps", 1500, MMSEG)
    lr_scheduler_type: SchedulerType | str = like(RecipeArguments, "lr_scheduler_type", "polynomial", MMSEG)
    lr_scheduler_kwargs: dict | str | None = like(
        RecipeArguments, "lr_scheduler_kwargs", {"power": 1.0, "lr_end": 0.0}, MMSEG
    )
    max_steps: int = like(RecipeArguments, "max_steps", 160_000, MMSEG)
    num_train_epochs: float = like(
        RecipeArguments,
        "num_train_epochs",
        3.0,
        help="Training epochs, given instead of --max_steps",
        shown="none, --max_steps sets the length",
    )
    per_device_train_batch_size: int = like(RecipeArguments, "per_device_train_batch_size", 2, MMSEG + ": 8 GPUs x 2")
    per_device_eval_batch_size: int = like(TrainingArguments, "per_device_eval_batch_size", 1)
    max_grad_norm: float = like(RecipeArguments, "max_grad_norm", 0.0, MMSEG)
    batch_eval_metrics: bool = like(
        TrainingArguments,
        "batch_eval_metrics",
        True,
        help="Score evaluation batch by batch (a streaming confusion matrix: memory does not grow with the number of "
        "images).",
    )
    eval_strategy: IntervalStrategy | str = like(RecipeArguments, "eval_strategy", "steps")
    eval_steps: float | None = like(RecipeArguments, "eval_steps", 16_000, MMSEG)
    save_strategy: SaveStrategy | str = like(RecipeArguments, "save_strategy", "steps")
    save_steps: float = like(RecipeArguments, "save_steps", 16_000, MMSEG)
    label_names: list[str] | None = like(RecipeArguments, "label_names", ["labels"])
    use_lars: bool = like(
        RecipeArguments, "use_lars", unused="LARS is the linear probe's optimizer (run_image_classification.py)"
    )
    sync_batchnorm: bool = flag(True, "SyncBatchNorm in the neck on several GPUs.", MMSEG)


ARGUMENTS = (SegmentationModelArguments, SegmentationDataArguments, SegmentationTrainingArguments)


def build_config(model_args, num_labels: int, names: list[str]) -> MAESegmentationConfig:
    overrides = config_overrides(model_args)
    overrides.update(
        num_labels=num_labels, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    if model_args.model_name_or_path:
        saved = MAEConfig.from_pretrained(model_args.model_name_or_path)
        if isinstance(saved, MAESegmentationConfig) or saved.model_type == MAESegmentationConfig.model_type:
            saved = MAESegmentationConfig.from_pretrained(model_args.model_name_or_path)
        kept = set(config_names(model_args, "segmentation")) - set(overrides)  # the saved neck and heads
        return segmentation_config(saved, **{k: v for k, v in saved.to_dict().items() if k in kept}, **overrides)
    return MAESegmentationConfig(**overrides)


def has_unused_parameters(config) -> bool:
    """Encoder blocks after the last of `out_indices` feed nothing: DDP must look for parameters without gradients."""
    return max(config.out_indices) < config.num_hidden_layers - 1


def build_model(model_args, config, training_args) -> nn.Module:
    if model_args.model_name_or_path:
        model = MAEForSemanticSegmentation.from_pretrained(
            model_args.model_name_or_path, config=config, ignore_mismatched_sizes=True
        )
    else:
        model = MAEForSemanticSegmentation(config)
    if uses_sync_batchnorm(training_args):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def uses_sync_batchnorm(training_args) -> bool:
    return training_args.sync_batchnorm and training_args.world_size > 1 and torch.cuda.is_available()


def per_device_batchnorm(config, training_args) -> str | None:
    """The layer that normalises over each device's batch alone in training, if any: UperNet's pooling module at
    scale 1 has one value per channel and image (SyncBatchNorm normalises over every GPU's batch)."""
    if 1 in config.pool_scales and not uses_sync_batchnorm(training_args):
        return "UperNet's pooling module (pool scale 1: a 1x1 map per image)"
    return None


def attach_transforms(datasets, columns, data_args, config):
    """mmsegmentation's training pipeline on train, the evaluation resize on validation; mean/std those of the
    image processor saved with the model."""
    processor = image_processor(config, data_args)
    common = dict(mean=processor.image_mean, std=processor.image_std, reduce_labels=data_args.reduce_labels)
    train = SegmentationTrainTransform(
        data_args.crop_size,
        scale=tuple(data_args.resize_scale),
        ratio_range=tuple(data_args.ratio_range),
        cat_max_ratio=data_args.cat_max_ratio,
        flip=data_args.flip_probability,
        **common,
    )
    evaluation = SegmentationEvalTransform(scale=tuple(data_args.resize_scale), **common)
    transforms = {"train": train, "validation": evaluation}
    return {
        split: datasets[split].with_transform(SegmentationBatchTransform(transforms[split], *columns))
        for split in transforms
        if split in datasets
    }


def image_processor(config, data_args) -> SegformerImageProcessor:
    """For pipelines: resize to the crop size, normalise; post-processing resizes the map back. Saved with the
    model: the one source of the mean/std that the transforms and figures use."""
    mean, std = normalisation(config.num_channels)
    return SegformerImageProcessor(
        size={"height": data_args.crop_size, "width": data_args.crop_size},
        image_mean=list(mean),
        image_std=list(std),
        do_reduce_labels=data_args.reduce_labels,
    )


def metrics_function(config):
    stream = StreamingMeanIoU(config.num_labels, ignore_index=config.ignore_index, id2label=config.id2label)

    def compute_metrics(eval_pred, compute_result: bool = True):
        # One batch at a time with --batch_eval_metrics (the default), else everything at once.
        for predictions, labels in eval_batches(eval_pred):
            # Trainer pads maps of different sizes (across processes, or batches) with -100: not labels.
            labels = torch.as_tensor(labels)
            stream.update(torch.as_tensor(predictions), labels.masked_fill(labels == -100, config.ignore_index))
        if not compute_result:
            return {}
        result = {k: v for k, v in stream.compute().items() if not isinstance(v, list)}  # scalars for the logs
        stream.reset()
        return result

    return compute_metrics


def training_curves(output_dir: str) -> TrainingCurvesCallback:
    miou = percent_panel("evaluation mIoU", "mean IoU", {"eval_mean_iou": "mIoU"})
    return TrainingCurvesCallback([*loss_panels("cross-entropy\n(decode + weighted auxiliary head)"), miou], output_dir)


def start_banner(config, datasets, data_args, training_args) -> StartBanner:
    task = {
        "Classes": f"{config.num_labels}",
        "Crop": f"{data_args.crop_size} px, inference {config.inference_mode}",
        "Encoder": f"features after blocks {list(config.out_indices)}, drop path {config.drop_path_rate:g}",
    }
    evaluated = datasets["validation"] if training_args.do_eval else None
    return StartBanner("Running semantic segmentation", datasets.get("train"), evaluated, task)


def check_data(datasets, columns, num_labels: int, data_args, training_args) -> None:
    """Before any training, in place: every annotation fits the classes and its image (pairs that cannot be read
    fail, or are skipped with --skip_corrupt_images)."""
    for split in used_splits(datasets, training_args):
        datasets[split], skipped = check_annotations(
            datasets[split],
            *columns,
            num_labels,
            data_args.reduce_labels,
            split,
            skip_corrupt=data_args.skip_corrupt_images,
            decode_images=data_args.verify_images,
        )
        if skipped:
            logger.warning(
                f"skipped {skipped} {split} image/annotation pair(s) that cannot be read (--skip_corrupt_images)"
            )


def segmentation_figures(eval_dataset, processor, model_args, training_args) -> list[SegmentationFigureCallback]:
    """Image, ground truth and prediction of the first validation images at each evaluation (none: no images)."""
    count = min(model_args.num_visualized_images, len(eval_dataset))
    shown = [eval_dataset[i] for i in range(count)]
    if not shown:
        return []
    return [SegmentationFigureCallback(shown, processor.image_mean, processor.image_std, training_args.output_dir)]


def main(argv=None, callbacks=()):
    model_args, data_args, training_args = parse_arguments(ARGUMENTS, argv)
    start_run(model_args, training_args, ["labels"], SEGMENTATION_METRICS, model_class=MAEForSemanticSegmentation)

    datasets, image_column, annotation_column, names = load_segmentation_datasets(
        data_args, training=training_args.do_train
    )
    apply_recipe_schedule(training_args, train_size(datasets))  # before any image is decoded
    num_labels = data_args.num_labels or len(names)
    names = names if len(names) == num_labels else [str(i) for i in range(num_labels)]
    config = build_config(model_args, num_labels, names)
    check_batchnorm_batches(training_args, train_size(datasets), per_device_batchnorm(config, training_args))
    apply_runtime_defaults(training_args, unused_parameters=has_unused_parameters(config))
    check_data(datasets, (image_column, annotation_column), num_labels, data_args, training_args)

    set_seed(training_args.seed)
    model = build_model(model_args, config, training_args)
    processor = image_processor(config, data_args)
    datasets = attach_transforms(datasets, (image_column, annotation_column), data_args, config)

    trainer = SegmentationTrainer(  # scores at each annotation's original size, as mmsegmentation
        model=model,
        args=training_args,
        train_dataset=datasets["train"] if training_args.do_train else None,
        eval_dataset=datasets["validation"] if training_args.do_eval else None,
        data_collator=collate_segmentation,
        eval_data_collator=collate_segmentation_with_sizes,
        processing_class=processor,
        compute_metrics=metrics_function(config),
        callbacks=[
            *segmentation_figures(datasets["validation"], processor, model_args, training_args),
            start_banner(config, datasets, data_args, training_args),
            training_curves(training_args.output_dir),
            *callbacks,
        ],
    )
    return train_evaluate_save(trainer, model, model_args, data_args, training_args)


if __name__ == "__main__":
    run_main(main)
