#!/usr/bin/env python
"""Fine-tune (or linear-probe) an MAE encoder for image classification with transformers' Trainer.

    python run_image_classification.py configs/finetune_digits.yaml --model_name_or_path outputs/pretrain_digits
    accelerate launch run_image_classification.py configs/finetune_vit_base.yaml --model_name_or_path MAE_DIR \\
        --dataset_name ILSVRC/imagenet-1k
    python run_image_classification.py ... --linear_probe        # the paper's linear probing protocol
    python run_image_classification.py --model_name_or_path FINETUNED --dataset_name ... --do_train false  # eval
Without --model_name_or_path the encoder starts from random init (the from-scratch baseline).
"""

from dataclasses import dataclass

from transformers import AutoConfig, ConvNextImageProcessor, set_seed
from transformers.image_utils import PILImageResampling
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType
from transformers.training_args import OptimizerNames

from mae_hf import MAEConfig, MAEForImageClassification
from mae_hf.argument_checks import CLASSIFICATION_METRICS, check_batchnorm_batches
from mae_hf.arguments import (
    APPLIED,
    DEFINES,
    SCALED_LEARNING_RATE,
    ImageDataArguments,
    ModelArguments,
    RecipeArguments,
    config_overrides,
    flag,
    like,
)
from mae_hf.banner import StartBanner
from mae_hf.curves import TrainingCurvesCallback, loss_panels, percent_panel
from mae_hf.data import (
    ImageTransform,
    MixupCollator,
    check_labels,
    class_balanced_subset,
    class_id_labels,
    collate_pixel_values,
    eval_transform,
    find_image_column,
    find_label_column,
    finetune_transform,
    label_names,
    load_image_datasets,
    normalisation,
)
from mae_hf.metrics import eval_batches, load_accuracy, to_numpy, top_k_predictions
from mae_hf.process_exit import run_main
from mae_hf.run_utils import (
    apply_recipe_schedule,
    apply_runtime_defaults,
    logger,
    parse_arguments,
    reference_split,
    start_run,
    train_evaluate_save,
    train_size,
    used_splits,
    verify_splits,
)
from mae_hf.trainer import MAETrainer

# The paper's linear probe (Tab. 10, main_linprobe.py), put under the layer that switches --linear_probe on: the
# flags of that layer and of the layers above still win.
LINEAR_PROBE_PRESET = {
    "base_learning_rate": 0.1,
    "weight_decay": 0,
    "num_train_epochs": 90,
    "warmup_epochs": 10,
    "lr_scheduler_kwargs": {"min_lr": 0.0},
    "layer_decay": 1.0,
    "use_lars": True,
    "mixup_alpha": 0,
    "cutmix_alpha": 0,
    "label_smoothing": 0,
    "rand_augment_magnitude": 0,
    "random_erasing": 0,
    "drop_path_rate": 0,
    "pooling": "cls",
}
FINETUNE_MD = "FINETUNE.md (ViT-B), paper Tab. 9"
MAIN_FINETUNE = "official main_finetune.py"


LINEAR_PROBE_BATCHNORM = "the linear probe's BatchNorm head"


@dataclass
class ClassificationModelArguments(ModelArguments):
    drop_path_rate: float | None = like(ModelArguments, "drop_path_rate", 0.1, FINETUNE_MD)
    pooling: str | None = flag(
        None,
        "'mean' (global pool + fc_norm; FINETUNE.md) or 'cls' (class token; the linear probe)",
        shown="the checkpoint's; a new model or a pretraining checkpoint: mean",
        run=DEFINES,
        config="head",
    )


@dataclass
class ClassificationDataArguments(ImageDataArguments):
    label_column_name: str | None = flag(None, "Auto-detected when not given.", run=DEFINES)
    label_fraction: float | None = flag(
        None, "Train on this fixed, class-balanced share of the labelled examples.", run=DEFINES
    )
    label_fraction_seed: int = flag(0, "Seed of that subset (not the training seed).", run=DEFINES)
    crop_min_scale: float = like(ImageDataArguments, "crop_min_scale", 0.08, "timm, main_finetune.py")


@dataclass
class FinetuningArguments(RecipeArguments):
    """The official fine-tuning defaults for ViT-B (FINETUNE.md, paper Tab. 9); --linear_probe switches to Tab. 10."""

    linear_probe: bool = flag(
        False,
        "The paper's linear probe (Tab. 10, main_linprobe.py): frozen encoder, class token, BatchNorm + linear head, "
        "LARS, blr 0.1, wd 0, 90 epochs (10 warmup), no mixup/cutmix/RandAugment/erasing/label smoothing/drop path/"
        "layer decay; flags given with it still win (default: False)",
        run=DEFINES,
        preset=LINEAR_PROBE_PRESET,
    )
    learning_rate: float | None = like(RecipeArguments, "learning_rate", **SCALED_LEARNING_RATE)
    base_learning_rate: float | None = like(RecipeArguments, "base_learning_rate", 5e-4, FINETUNE_MD)
    layer_decay: float | None = like(
        RecipeArguments, "layer_decay", 0.65, FINETUNE_MD, help="Layer-wise lr decay (0.75 for ViT-L; 1.0: off)."
    )
    weight_decay: float = like(RecipeArguments, "weight_decay", 0.05, FINETUNE_MD)
    adam_beta1: float = like(RecipeArguments, "adam_beta1", 0.9, MAIN_FINETUNE + " (torch's default)")
    adam_beta2: float = like(RecipeArguments, "adam_beta2", 0.999, MAIN_FINETUNE + " (torch's default)")
    num_train_epochs: float = like(RecipeArguments, "num_train_epochs", 100, FINETUNE_MD)
    warmup_epochs: float | None = like(RecipeArguments, "warmup_epochs", 5, FINETUNE_MD)
    lr_scheduler_type: SchedulerType | str = like(
        RecipeArguments, "lr_scheduler_type", "cosine_with_min_lr", MAIN_FINETUNE
    )
    lr_scheduler_kwargs: dict | str | None = like(
        RecipeArguments, "lr_scheduler_kwargs", {"min_lr": 1e-6}, MAIN_FINETUNE
    )
    max_grad_norm: float = like(RecipeArguments, "max_grad_norm", 0.0, MAIN_FINETUNE)
    per_device_train_batch_size: int = like(
        RecipeArguments, "per_device_train_batch_size", 64, "ours; FINETUNE.md: global batch 1024"
    )
    use_lars: bool = like(
        RecipeArguments, "use_lars", False, "fine-tuning: AdamW, paper Tab. 9; --linear_probe: LARS, Tab. 10"
    )
    optim: OptimizerNames | str = like(RecipeArguments, "optim", help="The optimizer, unless --use_lars")
    label_names: list[str] | None = like(RecipeArguments, "label_names", ["labels"])
    eval_strategy: IntervalStrategy | str = like(RecipeArguments, "eval_strategy", "epoch")
    save_strategy: SaveStrategy | str = like(RecipeArguments, "save_strategy", "epoch")
    mixup_alpha: float = flag(0.8, "Mixup alpha, 0: off.", FINETUNE_MD, run=APPLIED)
    cutmix_alpha: float = flag(1.0, "CutMix alpha, 0: off.", FINETUNE_MD, run=APPLIED)
    mixup_switch_prob: float = flag(0.5, "Probability of CutMix instead of mixup.", MAIN_FINETUNE, run=APPLIED)
    label_smoothing: float = flag(0.1, "Label smoothing of the (mixed) targets.", FINETUNE_MD, run=APPLIED)
    rand_augment_magnitude: float = flag(9.0, "RandAugment magnitude, 0: off.", FINETUNE_MD, run=APPLIED)
    rand_augment_std: float = flag(0.5, "RandAugment magnitude noise.", FINETUNE_MD, run=APPLIED)
    random_erasing: float = flag(0.25, "Random erasing probability.", FINETUNE_MD, run=APPLIED)
    crop_pct: float = flag(0.875, "Evaluation: resize to image_size / crop_pct, centre-crop.", MAIN_FINETUNE)


ARGUMENTS = (ClassificationModelArguments, ClassificationDataArguments, FinetuningArguments)


def prepare_data(model_args, data_args, training_args):
    """Datasets (train on the label subset, if any), the image and label columns (class ids, see
    `class_id_labels`), and the class names."""
    datasets = load_image_datasets(data_args, training_args.seed, training_args.do_train)
    reference = reference_split(datasets)
    image_column = find_image_column(reference, data_args.image_column_name)
    label_column = find_label_column(reference, data_args.label_column_name)
    used = {split: datasets[split] for split in used_splits(datasets, training_args)}  # not evaluation's train
    class_id_labels(used, label_column, saved_classes(model_args, training_args))
    datasets.update(used)
    names = label_names(reference_split(used), label_column)
    if training_args.do_train and data_args.label_fraction is not None and data_args.label_fraction < 1:
        datasets["train"] = class_balanced_subset(
            datasets["train"], label_column, data_args.label_fraction, data_args.label_fraction_seed
        )
        logger.info(f"training on {len(datasets['train'])} labelled examples ({data_args.label_fraction:.0%})")
    return datasets, image_column, label_column, names


def saved_classes(model_args, training_args) -> list[str] | None:
    """Evaluation alone keeps the checkpoint's classes: class names in the data map to its ids (None: training, or
    a new model, takes the data's classes)."""
    if training_args.do_train or not model_args.model_name_or_path:
        return None
    config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    return [config.id2label[i] for i in range(config.num_labels)]


def build_model(model_args, training_args, names: list[str]) -> MAEForImageClassification:
    """From an MAE checkpoint (pretrained or fine-tuned; the head is new when the classes differ) or from
    scratch. Evaluation alone keeps the checkpoint's classes."""
    overrides = config_overrides(model_args)
    if training_args.linear_probe:
        overrides.update(head_batchnorm=True)  # the preset's --pooling cls, unless a flag says otherwise
    if training_args.do_train:  # the dataset's classes, one per example: ViT's single-label cross-entropy
        overrides.update(
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            problem_type="single_label_classification",
        )
    path = model_args.model_name_or_path
    if path:
        model = MAEForImageClassification.from_pretrained(path, ignore_mismatched_sizes=True, **overrides)
    else:
        model = MAEForImageClassification(MAEConfig(**overrides))
    if training_args.linear_probe:  # after loading: from_pretrained makes every parameter trainable again
        model.vit.requires_grad_(False)
    return model


def attach_transforms(datasets, image_column, label_column, config, processor, data_args, training_args):
    mean, std = processor.image_mean, processor.image_std
    train = finetune_transform(
        config.image_hw,
        mean,
        std,
        min_scale=data_args.crop_min_scale,
        rand_augment_magnitude=training_args.rand_augment_magnitude,
        rand_augment_std=training_args.rand_augment_std,
        random_erasing=training_args.random_erasing,
        flip=data_args.flip_probability,
    )
    evaluation = eval_transform(config.image_hw, mean, std, crop_pct=training_args.crop_pct)
    transforms = {"train": train, "validation": evaluation}
    return {
        split: datasets[split].with_transform(
            ImageTransform(transforms[split], image_column, config.num_channels, label_column)
        )
        for split in transforms
        if split in datasets
    }


def image_processor(config, training_args) -> ConvNextImageProcessor:
    """Resize the shorter side to image_size / crop_pct, centre-crop: the evaluation above, for pipelines. Saved
    with the model: the one source of the mean/std that the transforms use."""
    mean, std = normalisation(config.num_channels)
    return ConvNextImageProcessor(
        size={"shortest_edge": config.image_hw[0]},
        crop_pct=training_args.crop_pct,
        resample=PILImageResampling.BICUBIC,
        image_mean=list(mean),
        image_std=list(std),
    )


def train_collator(config, training_args):
    if training_args.mixup_alpha or training_args.cutmix_alpha or training_args.label_smoothing:
        return MixupCollator(
            config.num_labels,
            training_args.mixup_alpha,
            training_args.cutmix_alpha,
            training_args.mixup_switch_prob,
            training_args.label_smoothing,
        )
    return collate_pixel_values


def metrics_function():
    accuracy = load_accuracy()  # a local evaluate module: no Hub needed

    def compute_metrics(eval_pred, compute_result: bool = True):
        # One batch at a time with --batch_eval_metrics (the result at the last), else everything at once.
        for predictions, references in eval_batches(eval_pred):
            accuracy.add_batch(predictions=to_numpy(predictions), references=to_numpy(references))
        return accuracy.compute() if compute_result else {}

    return compute_metrics


def training_curves(output_dir: str) -> TrainingCurvesCallback:
    accuracy = percent_panel("evaluation top-1", "top-1 accuracy", {"eval_accuracy": "top-1"})
    return TrainingCurvesCallback([*loss_panels("cross-entropy"), accuracy], output_dir)


def start_banner(model, datasets, training_args) -> StartBanner:
    title = "Running linear probing" if training_args.linear_probe else "Running fine-tuning"
    encoder = "frozen (linear probe)" if training_args.linear_probe else "trained"
    task = {
        "Classes": f"{model.config.num_labels}",
        "Encoder": f"{encoder}, pooling {model.config.pooling}, drop path {model.config.drop_path_rate:g}",
    }
    evaluated = datasets["validation"] if training_args.do_eval else None
    return StartBanner(title, datasets.get("train"), evaluated, task)


def check_data(datasets, image_column, label_column, model, data_args, training_args) -> None:
    """Before any training: the labels fit the model's classes, every image decodes (or is skipped)."""
    for split in used_splits(datasets, training_args):
        check_labels(datasets[split], label_column, model.config.num_labels, split)
    verify_splits(datasets, image_column, data_args, training_args)


def main(argv=None, callbacks=()):
    model_args, data_args, training_args = parse_arguments(ARGUMENTS, argv)
    start_run(
        model_args,
        training_args,
        ["labels"],
        CLASSIFICATION_METRICS,
        "use --label_smoothing, the recipe's, which smooths the mixup / cutmix targets too",
        model_class=MAEForImageClassification,
    )
    apply_runtime_defaults(training_args)

    datasets, image_column, label_column, names = prepare_data(model_args, data_args, training_args)
    apply_recipe_schedule(training_args, train_size(datasets))  # before any image is decoded
    batchnorm = LINEAR_PROBE_BATCHNORM if training_args.linear_probe else None
    check_batchnorm_batches(training_args, train_size(datasets), batchnorm)

    set_seed(training_args.seed)  # the new head (or the whole model) starts the same for the same seed
    model = build_model(model_args, training_args, names)
    check_data(datasets, image_column, label_column, model, data_args, training_args)
    processor = image_processor(model.config, training_args)
    datasets = attach_transforms(
        datasets, image_column, label_column, model.config, processor, data_args, training_args
    )

    trainer = MAETrainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"] if training_args.do_train else None,
        eval_dataset=datasets["validation"] if training_args.do_eval else None,
        data_collator=train_collator(model.config, training_args),
        eval_data_collator=collate_pixel_values,
        processing_class=processor,
        compute_metrics=metrics_function(),
        preprocess_logits_for_metrics=lambda logits, labels: top_k_predictions(logits),
        callbacks=[start_banner(model, datasets, training_args), training_curves(training_args.output_dir), *callbacks],
    )
    return train_evaluate_save(trainer, model, model_args, data_args, training_args)


if __name__ == "__main__":
    run_main(main)
