#!/usr/bin/env python
"""Semantic segmentation with UperNet on an MAE encoder (mmsegmentation's ADE20K recipe) and transformers' Trainer.

    python run_semantic_segmentation.py configs/segment_digits.yaml --model_name_or_path outputs/pretrain_digits_seg
    accelerate launch run_semantic_segmentation.py configs/segment_ade20k_vit_base.yaml \\
        --model_name_or_path MAE_DIR --dataset_name /data/ADEChallengeData2016
Without --model_name_or_path the encoder starts from random init.
"""

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import SegformerImageProcessor, set_seed

from mae_hf import MAEConfig, MAEForSemanticSegmentation
from mae_hf.argument_checks import (
    SEGMENTATION_METRICS,
    check_batchnorm_batches,
    check_trainer_arguments,
    check_training_plan,
)
from mae_hf.arguments import (
    DataArguments,
    ModelArguments,
    RecipeArguments,
    config_overrides,
    recipe,
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
from mae_hf.metrics import StreamingMeanIoU, eval_batches
from mae_hf.resume import check_resume_argument
from mae_hf.run_utils import (
    apply_gpu_fast_paths,
    apply_recipe_schedule,
    apply_runtime_defaults,
    check_hub_access,
    check_model_path,
    check_output_dir,
    logger,
    parse_arguments,
    setup_logging,
    train_size,
    train_evaluate_save,
    used_splits,
)
from mae_hf.trainer import SegmentationFigureCallback, SegmentationTrainer

SEGMENTATION_FIELDS = (
    "out_indices neck_rescales decode_channels auxiliary_channels use_auxiliary_head auxiliary_loss_weight "
    "classifier_dropout_prob classifier_init_std avg_non_ignore inference_mode test_crop_size test_stride"
).split()


MMSEG = "mmsegmentation configs/mae (ADE20K, ViT-B)"


@dataclass
class SegmentationModelArguments(ModelArguments):
    drop_path_rate: float | None = recipe(0.1, "Stochastic depth rate of the encoder.", MMSEG)
    out_indices: list[int] | None = field(
        default=None, metadata={"help": "Blocks whose outputs feed the neck (default: the checkpoint's, else "
                                "3 5 7 11; mmsegmentation configs/mae)"})
    neck_rescales: list[float] | None = field(
        default=None, metadata={"help": "Neck scale factor per level (default: the checkpoint's, else 4 2 1 0.5; "
                                "mmsegmentation configs/mae)"})
    decode_channels: int | None = field(
        default=None, metadata={"help": "UperNet width (default: the checkpoint's, else 768; mmsegmentation "
                                "configs/mae)"})
    auxiliary_channels: int | None = field(
        default=None, metadata={"help": "FCN auxiliary head width (default: the checkpoint's, else 256; "
                                "mmsegmentation configs/mae)"})
    use_auxiliary_head: bool | None = field(
        default=None, metadata={"help": "Train with the FCN auxiliary head (default: the checkpoint's, else true)"})
    auxiliary_loss_weight: float | None = field(
        default=None, metadata={"help": "Weight of the auxiliary loss (default: the checkpoint's, else 0.4; "
                                "mmsegmentation configs/mae)"})
    classifier_dropout_prob: float | None = field(
        default=None, metadata={"help": "Dropout2d before both heads' 1x1 classifiers (default: the checkpoint's, "
                                "else 0.1; mmsegmentation's dropout_ratio)"})
    classifier_init_std: float | None = field(
        default=None, metadata={"help": "Std of the classifiers' normal init, 0 = kaiming-normal like the other "
                                "convolutions (default: the checkpoint's, else 0.01; mmsegmentation's conv_seg)"})
    avg_non_ignore: bool | None = field(
        default=None, metadata={"help": "Average the loss over the non-ignored pixels only (default: the "
                                "checkpoint's, else false: over all pixels, ignored ones adding 0; mmsegmentation)"})
    inference_mode: str | None = field(
        default=None, metadata={"help": "'whole' image or 'slide' (sliding window; mmsegmentation's test mode) "
                                "(default: the checkpoint's, else whole)"})
    test_crop_size: int | None = field(
        default=None, metadata={"help": "Sliding-window crop (default: the checkpoint's, else 512; mmsegmentation)"})
    test_stride: int | None = field(
        default=None, metadata={"help": "Sliding-window stride (default: the checkpoint's, else 341; mmsegmentation)"})
    num_visualized_images: int = field(default=4, metadata={"help": "Images in each segmentation figure."})


@dataclass
class SegmentationDataArguments(DataArguments):
    annotation_column_name: str | None = field(default=None, metadata={"help": "Auto-detected when not given."})
    reduce_labels: bool = field(default=False, metadata={"help": "ADE20K: 0 -> 255 (ignored), 1..150 -> 0..149."})
    num_labels: int | None = field(default=None, metadata={"help": "Classes (default: from the dataset)."})
    crop_size: int = recipe(512, "Training crop side in pixels.", MMSEG)
    resize_scale: list[int] = recipe([2048, 512], "Random rescale around this (long, short) size.", MMSEG)
    ratio_range: list[float] = recipe([0.5, 2.0], "Range of the random rescale ratio.", MMSEG)
    cat_max_ratio: float = recipe(0.75, "Largest share one class may take of a random crop.", MMSEG)


@dataclass
class SegmentationTrainingArguments(RecipeArguments):
    """mmsegmentation's MAE + UperNet ADE20K schedule: AdamW 1e-4, β (0.9, 0.999), wd 0.05, layer decay 0.65,
    1500 linear warmup iterations then polynomial decay, 160k iterations at batch 16 (8 GPUs x 2)."""

    learning_rate: float | None = recipe(
        1e-4, "Peak learning rate (or give --base_learning_rate: lr = blr x global batch / 256).", MMSEG)
    weight_decay: float = recipe(0.05, "AdamW weight decay (none on biases, norms, tokens).", MMSEG)
    adam_beta1: float = recipe(0.9, "AdamW beta1.", MMSEG)
    adam_beta2: float = recipe(0.999, "AdamW beta2.", MMSEG)
    layer_decay: float | None = recipe(0.65, "Layer-wise lr decay (1.0: off).", MMSEG)
    warmup_steps: float = recipe(1500, "Linear warmup steps (or a share of training if < 1).", MMSEG)
    lr_scheduler_type: str = recipe("polynomial", "Learning-rate decay after warmup.", MMSEG)
    lr_scheduler_kwargs: dict | str | None = recipe(
        {"power": 1.0, "lr_end": 0.0}, "Scheduler settings (JSON).", MMSEG)
    max_steps: int = recipe(160_000, "Training steps; --num_train_epochs given instead replaces it.", MMSEG)
    num_train_epochs: float = field(
        default=3.0, metadata={"help": "Training epochs, given instead of --max_steps (default: none, --max_steps "
                               "sets the length)"})
    per_device_train_batch_size: int = recipe(2, "Images per device and step.", MMSEG + ": 8 GPUs x 2")
    per_device_eval_batch_size: int = field(default=1, metadata={"help": "Images per device in evaluation."})
    max_grad_norm: float = recipe(0.0, "Gradient clipping norm, 0: none.", MMSEG)
    sync_batchnorm: bool = recipe(True, "SyncBatchNorm in the neck on several GPUs.", MMSEG)
    batch_eval_metrics: bool = field(
        default=True, metadata={"help": "Score evaluation batch by batch (a streaming confusion matrix: memory does "
                                "not grow with the number of images)."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate: 'no', 'steps' or 'epoch'."})
    eval_steps: float = recipe(16_000, "Evaluate every N steps.", MMSEG)
    save_strategy: str = field(default="steps", metadata={"help": "When to checkpoint: 'no', 'steps' or 'epoch'."})
    save_steps: float = recipe(16_000, "Checkpoint every N steps.", MMSEG)
    label_names: list[str] = field(default_factory=lambda: ["labels"])


ARGUMENTS = (SegmentationModelArguments, SegmentationDataArguments, SegmentationTrainingArguments)


def build_config(model_args, num_labels: int, names: list[str]) -> MAESegmentationConfig:
    overrides = {**config_overrides(model_args), **{n: getattr(model_args, n) for n in SEGMENTATION_FIELDS
                                                    if getattr(model_args, n) is not None}}
    overrides.update(num_labels=num_labels, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if model_args.model_name_or_path:
        saved = MAEConfig.from_pretrained(model_args.model_name_or_path)
        if isinstance(saved, MAESegmentationConfig) or saved.model_type == MAESegmentationConfig.model_type:
            saved = MAESegmentationConfig.from_pretrained(model_args.model_name_or_path)
        return segmentation_config(saved, **{k: v for k, v in saved.to_dict().items()
                                            if k in SEGMENTATION_FIELDS and k not in overrides}, **overrides)
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
    mean, std = normalisation(config.num_channels)
    common = dict(mean=mean, std=std, reduce_labels=data_args.reduce_labels)
    train = SegmentationTrainTransform(
        data_args.crop_size, scale=tuple(data_args.resize_scale), ratio_range=tuple(data_args.ratio_range),
        cat_max_ratio=data_args.cat_max_ratio, flip=data_args.flip_probability, **common,
    )
    evaluation = SegmentationEvalTransform(scale=tuple(data_args.resize_scale), **common)
    transforms = {"train": train, "validation": evaluation}
    return {split: datasets[split].with_transform(SegmentationBatchTransform(transforms[split], *columns))
            for split in transforms if split in datasets}


def image_processor(config, data_args) -> SegformerImageProcessor:
    """For pipelines: resize to the crop size, normalise; post-processing resizes the map back."""
    mean, std = normalisation(config.num_channels)
    return SegformerImageProcessor(
        size={"height": data_args.crop_size, "width": data_args.crop_size},
        image_mean=list(mean), image_std=list(std), do_reduce_labels=data_args.reduce_labels,
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
    task = {"Classes": f"{config.num_labels}", "Crop": f"{data_args.crop_size} px, inference {config.inference_mode}",
            "Encoder": f"features after blocks {list(config.out_indices)}, drop path {config.drop_path_rate:g}"}
    evaluated = datasets["validation"] if training_args.do_eval else None
    return StartBanner("Running semantic segmentation", datasets.get("train"), evaluated, task)


def main(argv=None, callbacks=()):
    model_args, data_args, training_args = parse_arguments(ARGUMENTS, argv)
    setup_logging(training_args)
    apply_gpu_fast_paths(training_args)
    if not training_args.do_eval:
        training_args.eval_strategy = "no"
    if training_args.layer_decay == 1.0:
        training_args.layer_decay = None
    check_trainer_arguments(training_args, ["labels"], SEGMENTATION_METRICS)
    check_training_plan(training_args)
    check_output_dir(training_args)
    check_hub_access(training_args)
    check_model_path(model_args.model_name_or_path)
    check_resume_argument(training_args)

    datasets, image_column, annotation_column, names = load_segmentation_datasets(
        data_args, training=training_args.do_train)
    apply_recipe_schedule(training_args, train_size(datasets))  # before any image is decoded
    num_labels = data_args.num_labels or len(names)
    names = names if len(names) == num_labels else [str(i) for i in range(num_labels)]
    config = build_config(model_args, num_labels, names)
    check_batchnorm_batches(training_args, train_size(datasets), per_device_batchnorm(config, training_args))
    apply_runtime_defaults(training_args, unused_parameters=has_unused_parameters(config))
    for split in used_splits(datasets, training_args):
        datasets[split], skipped = check_annotations(
            datasets[split], image_column, annotation_column, num_labels, data_args.reduce_labels, split,
            skip_corrupt=data_args.skip_corrupt_images, decode_images=data_args.verify_images,
        )
        if skipped:
            logger.warning(f"skipped {skipped} {split} image/annotation pair(s) that cannot be read "
                           "(--skip_corrupt_images)")
    set_seed(training_args.seed)
    model = build_model(model_args, config, training_args)
    datasets = attach_transforms(datasets, (image_column, annotation_column), data_args, config)

    mean, std = normalisation(config.num_channels)
    shown = [datasets["validation"][i] for i in range(min(model_args.num_visualized_images, len(datasets["validation"])))]
    trainer = SegmentationTrainer(  # scores at each annotation's original size, as mmsegmentation
        model=model,
        args=training_args,
        train_dataset=datasets["train"] if training_args.do_train else None,
        eval_dataset=datasets["validation"] if training_args.do_eval else None,
        data_collator=collate_segmentation,
        eval_data_collator=collate_segmentation_with_sizes,
        processing_class=image_processor(config, data_args),
        compute_metrics=metrics_function(config),
        callbacks=[*([SegmentationFigureCallback(shown, mean, std, training_args.output_dir)] if shown else []),
                   start_banner(config, datasets, data_args, training_args),
                   training_curves(training_args.output_dir), *callbacks],
    )

    return train_evaluate_save(trainer, model, model_args, data_args, training_args)


if __name__ == "__main__":
    main()
