"""Representation quality while pretraining, as DINO's `eval_knn.py` and solo-learn's online k-NN / linear
classifier measure it: features of the encoder on full (unmasked) images of a labelled data set, the class token
and the mean of the patch tokens, scored by a weighted k-NN classifier and by a linear probe
(`mae_hf.feature_metrics`).

`FeatureMonitor` runs at every evaluation of `MAETrainer` (`run_pretraining.py --monitor_dataset ...`) and on any
saved encoder (`python -m mae_hf.evaluate_features`). Under `torchrun` / `accelerate launch` every process encodes
its share of the images; the features are gathered in dataset order and scored once, on the main process, so the
numbers are those of one process.
"""

import contextlib
import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from datasets import ClassLabel, Image
from torch.utils.data import BatchSampler, DataLoader

from .arguments import ANY, ImageDataArguments, flag
from .data import (
    ImageTransform,
    check_labels,
    class_id_labels,
    eval_transform,
    label_names,
    load_image_datasets,
    normalisation,
)
from .data.columns import IMAGE_COLUMN_NAMES, LABEL_COLUMN_NAMES, find_column
from .data.images import verify_images
from .data.loading import BUILTIN
from .distributed import local_tensor
from .feature_metrics import KNN_K, KNN_TEMPERATURE, knn_top1, linear_probe_top1

logger = logging.getLogger("mae_hf")
POOLINGS = ("cls", "mean")  # class token (after the final norm), mean of the patch tokens
SUBSET_SEED = 0  # the monitor's image subsets and carved-out validation split do not change with --seed


@dataclass
class MonitorArguments:
    """The labelled data set scored at every evaluation. Loaded like the classification script's data."""

    monitor_dataset: str | None = flag(
        None,
        "Labelled images whose k-NN / linear-probe top-1 is reported at every evaluation: a Hub dataset id, a local "
        "parquet/arrow folder, or 'digits'. 'none': no monitor.",
        way=("monitor data source", 0),
        off=None,
        evaluates=ANY,
    )
    monitor_dataset_config_name: str | None = flag(
        None, "Its Hub configuration.", way=("monitor data source", 0), off=None, belongs_to="monitor_dataset"
    )
    monitor_train_dir: str | None = flag(
        None,
        "Or an ImageFolder of labelled images: the k-NN bank and the probe's data.",
        way=("monitor data source", 1),
        off=None,
        evaluates=ANY,
    )
    monitor_validation_dir: str | None = flag(
        None,
        "An ImageFolder of the images that are scored (default: carved from train).",
        way=("monitor data source", 1),
        off=None,
    )
    monitor_image_column_name: str | None = flag(None, "Auto-detected when not given.")
    monitor_label_column_name: str | None = flag(None, "Auto-detected when not given.")
    monitor_train_samples: int = flag(10_000, "Use a fixed random subset of this many training images (0: all).")
    monitor_eval_samples: int = flag(5_000, "Score a fixed random subset of this many validation images (0: all).")
    monitor_crop_pct: float = flag(
        0.875, "Resize to image_size / crop_pct, then centre-crop (256 -> 224).", "DINO eval_knn.py"
    )
    monitor_knn_k: int = flag(KNN_K, "Neighbours in the k-NN vote.", "DINO eval_knn.py")
    monitor_knn_temperature: float = flag(
        KNN_TEMPERATURE, "Votes weigh exp(cosine similarity / T).", "DINO eval_knn.py"
    )
    monitor_linear_probe: bool = flag(True, "Also fit a logistic-regression probe on the frozen features.")

    def __post_init__(self):
        if self.monitor_dataset in ("", "none", "None"):
            self.monitor_dataset = None
        for name in ("monitor_train_samples", "monitor_eval_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0 (0: all images), got {getattr(self, name)}")
        if self.monitor_knn_k < 1:
            raise ValueError(f"--monitor_knn_k must be >= 1, got {self.monitor_knn_k}")
        if self.monitor_knn_temperature <= 0:
            raise ValueError(f"--monitor_knn_temperature must be > 0, got {self.monitor_knn_temperature}")
        if not 0 < self.monitor_crop_pct <= 1:
            raise ValueError(f"--monitor_crop_pct must be in (0, 1], got {self.monitor_crop_pct}")

    @property
    def enabled(self) -> bool:
        return self.monitor_dataset is not None or self.monitor_train_dir is not None

    def metric_names(self) -> tuple[str, ...]:
        """What the monitor adds to each evaluation (without the "eval_" prefix), e.g. for --metric_for_best_model."""
        if not self.enabled:
            return ()
        kinds = ("knn", "linear") if self.monitor_linear_probe else ("knn",)
        return (*(f"{kind}_top1_{pooling}" for kind in kinds for pooling in POOLINGS), "monitor_runtime")


def random_subset(dataset, count: int, seed: int = SUBSET_SEED):
    """`count` rows drawn once with a fixed seed (kept in dataset order); all rows when count is 0 or too large.
    Not the first rows: sorted data sets (ImageNet) would give a few classes only."""
    if count == 0 or count >= len(dataset):
        return dataset
    return dataset.select(np.sort(np.random.RandomState(seed).choice(len(dataset), count, replace=False)))


def monitor_columns(dataset, args: MonitorArguments) -> tuple[str, str]:
    """The image and label columns: named by the flags, else found by feature type or usual name."""
    image_column = find_column(
        dataset, args.monitor_image_column_name, Image, IMAGE_COLUMN_NAMES, "--monitor_image_column_name", "image"
    )
    label_column = find_column(
        dataset, args.monitor_label_column_name, ClassLabel, LABEL_COLUMN_NAMES, "--monitor_label_column_name", "label"
    )
    return image_column, label_column


def load_monitor_data(args: MonitorArguments, config, cache_dir: str | None = None, processor=None) -> dict:
    """train / validation splits with a deterministic evaluation transform and their label column, checked here
    (missing columns, labels < 0, corrupt images) so that errors come before training. Returns `train`,
    `validation` (datasets whose rows give `pixel_values` (C, H, W) and `labels`) and `num_classes`."""
    if args.monitor_dataset is not None and args.monitor_train_dir is not None:
        raise ValueError("give --monitor_dataset or --monitor_train_dir, not both")
    source = ImageDataArguments(
        dataset_name=args.monitor_dataset,
        dataset_config_name=args.monitor_dataset_config_name,
        train_dir=args.monitor_train_dir,
        validation_dir=args.monitor_validation_dir,
        cache_dir=cache_dir,
    )
    try:
        raw = load_image_datasets(source, seed=SUBSET_SEED)
        image_column, label_column = monitor_columns(raw["train"], args)
        labelled = {split: raw[split] for split in ("train", "validation")}
        class_id_labels(labelled, label_column, defining=list(labelled))  # the classes of both, as with ids
    except ValueError as error:  # messages name the classification flags and splits; say whose they are
        raise ValueError(f"the monitor's data set (--monitor_dataset / --monitor_train_dir): {error}") from error
    splits = {
        "train": random_subset(labelled["train"], args.monitor_train_samples),
        "validation": random_subset(labelled["validation"], args.monitor_eval_samples),
    }
    num_classes = max(len(label_names(splits[split], label_column)) for split in splits)
    # the run's (or saved model's) image processor is the source of mean/std; ImageNet's when there is none
    mean, std = (processor.image_mean, processor.image_std) if processor else normalisation(config.num_channels)
    transform = ImageTransform(
        eval_transform(config.image_hw, mean, std, crop_pct=args.monitor_crop_pct),
        image_column,
        config.num_channels,
        label_column,
    )
    for split in splits:
        check_labels(splits[split], label_column, num_classes, f"monitor {split}")
        if args.monitor_dataset not in BUILTIN:
            splits[split], _ = verify_images(splits[split], image_column, split=f"monitor {split}")
        splits[split] = splits[split].with_transform(transform)
    logger.info(
        f"feature monitor: {len(splits['train'])} training / {len(splits['validation'])} scored images, "
        f"{num_classes} classes (column {label_column!r})"
    )
    return {**splits, "num_classes": num_classes}


class _Batches(torch.utils.data.Dataset):
    """Rows fetched a batch at a time (one call of the dataset's transform per batch), with their indices."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, indices):
        batch = self.dataset[list(indices)]
        return torch.stack(batch["pixel_values"]), torch.as_tensor(batch["labels"]), torch.as_tensor(indices)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_rows(rows: torch.Tensor, index: torch.Tensor, total: int) -> torch.Tensor:
    """Every process's `rows` (n_i, F) with their dataset `index` (n_i,) -> (total, F) in dataset order, on every
    process. The shares differ by at most one row; they are padded to the same length for `all_gather`."""
    world = _world()[1]
    if world == 1:
        return rows[index.argsort()]
    length = -(-total // world)
    padded = rows.new_zeros(length, rows.shape[1])
    padded[: len(rows)] = rows
    padded_index = torch.full((length,), -1, dtype=torch.long, device=rows.device)
    padded_index[: len(index)] = index
    all_rows = [torch.empty_like(padded) for _ in range(world)]
    all_index = [torch.empty_like(padded_index) for _ in range(world)]
    dist.all_gather(all_rows, padded)
    dist.all_gather(all_index, padded_index)
    all_rows, all_index = torch.cat(all_rows), torch.cat(all_index)
    kept = all_index >= 0
    out = rows.new_empty(total, rows.shape[1])
    out[all_index[kept]] = all_rows[kept]
    return out


def shard_batches(dataset, batch_size: int = 128, num_workers: int = 0) -> DataLoader:
    """This process's share of `dataset` (every world_size-th row when torch.distributed is initialised) in batches
    of (pixel_values (B, C, H, W), labels (B,), dataset indices (B,))."""
    rank, world = _world()
    sampler = BatchSampler(range(rank, len(dataset), world), batch_size, drop_last=False)
    return DataLoader(_Batches(dataset), sampler=sampler, batch_size=None, num_workers=num_workers)


@torch.no_grad()
def encoder_features(
    encoder, batches, total: int, device, autocast=contextlib.nullcontext, forward=None
) -> dict[str, torch.Tensor]:
    """Features of `encoder` (an `MAEModel`) on all patches of every image, gathered from all processes in dataset
    order: `cls` (total, D) the class token after the final norm, `mean` (total, D) the mean of the patch tokens
    after it, and `labels` (total,), float32 / long on `device`. `batches`: this process's share of the `total`
    images, as `shard_batches` gives it. `forward`: runs the encoder on pixel_values (default: `encoder` itself;
    under parameter sharding, through the engine: `distributed.call_through`)."""
    width, forward = encoder.config.hidden_size, forward or encoder
    rows, indices = [torch.zeros(0, 2 * width + 1, device=device)], [torch.zeros(0, dtype=torch.long, device=device)]
    for pixel_values, labels, index in batches:
        with autocast():
            hidden = forward(pixel_values.to(device)).last_hidden_state.float()  # (B, 1 + L, D)
        labels = labels.to(device, torch.float32)[:, None]  # carried with the features: one all_gather
        rows.append(torch.cat([hidden[:, 0], hidden[:, 1:].mean(dim=1), labels], dim=1))
        indices.append(index.to(device))
    gathered = _gather_rows(torch.cat(rows), torch.cat(indices), total)
    return {"cls": gathered[:, :width], "mean": gathered[:, width:-1], "labels": gathered[:, -1].long()}


def weights_fingerprint(module: torch.nn.Module) -> torch.Tensor:
    """(T,) float64 sums of this process's slice of every parameter (all of it unless an engine shards it, see
    `distributed.local_tensor`) and of every buffer: any update changes it on some process. (Tensor version counters
    would be cheaper, but the fused AdamW kernels update weights without bumping them.)"""
    tensors = itertools.chain(map(local_tensor, module.parameters()), module.buffers())
    return torch.stack([t.detach().sum(dtype=torch.float64) for t in tensors]).cpu()


class FeatureMonitor:
    """k-NN (and linear-probe) top-1 of an encoder's features. `train` / `validation`: datasets whose rows hold
    `pixel_values` (C, H, W) and `labels` (see `load_monitor_data`).

    Two savings keep it cheap enough to run at every evaluation: this process's decoded images are kept in memory
    after the first call when they take at most `cache_bytes` (the images are the same every time), and a call on
    unchanged weights (the final evaluation right after the last in-training one) returns the previous numbers."""

    def __init__(
        self,
        train,
        validation,
        num_classes: int,
        k: int = KNN_K,
        temperature: float = KNN_TEMPERATURE,
        linear_probe: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
        cache_bytes: int = 256 << 20,
    ):
        self.splits, self.num_classes = (train, validation), num_classes
        self.k, self.temperature, self.linear_probe = k, temperature, linear_probe
        self.batch_size, self.num_workers, self.cache_bytes = batch_size, num_workers, cache_bytes
        self._batches, self._last = {}, (None, None)

    @classmethod
    def from_arguments(
        cls,
        args: MonitorArguments,
        config,
        batch_size: int = 128,
        num_workers: int = 0,
        cache_dir: str | None = None,
        processor=None,
    ) -> "FeatureMonitor | None":
        if not args.enabled:
            return None
        data = load_monitor_data(args, config, cache_dir, processor)
        return cls(
            data["train"],
            data["validation"],
            data["num_classes"],
            args.monitor_knn_k,
            args.monitor_knn_temperature,
            args.monitor_linear_probe,
            batch_size,
            num_workers,
        )

    def score(self, train: dict, test: dict) -> dict[str, float]:
        """`knn_top1_{cls,mean}` (and `linear_top1_{cls,mean}`) from features as `encoder_features` returns them."""
        metrics = {}
        for pooling in POOLINGS:
            metrics[f"knn_top1_{pooling}"] = knn_top1(
                train[pooling],
                train["labels"],
                test[pooling],
                test["labels"],
                self.num_classes,
                self.k,
                self.temperature,
            )
        if self.linear_probe:
            for pooling in POOLINGS:
                metrics[f"linear_top1_{pooling}"] = linear_probe_top1(
                    train[pooling], train["labels"], test[pooling], test["labels"]
                )
        return metrics

    def batches(self, split: int):
        """This process's batches of split 0 (train) or 1 (validation), decoded once if they fit `cache_bytes`."""
        if split in self._batches:
            return self._batches[split]
        loader = shard_batches(self.splits[split], self.batch_size, self.num_workers)
        first = self.splits[split][0]["pixel_values"] if len(self.splits[split]) else torch.zeros(0)
        if len(loader.sampler.sampler) * first.numel() * 4 > self.cache_bytes:
            return loader
        self._batches[split] = list(loader)
        return self._batches[split]

    def _unchanged(self, weights: torch.Tensor, device) -> bool:
        """Whether the weights are those of the previous call, on every process (all take the same branch)."""
        same = torch.tensor(int(self._last[0] is not None and torch.equal(self._last[0], weights)), device=device)
        if _world()[1] > 1:
            dist.all_reduce(same, op=dist.ReduceOp.MIN)
        return bool(same)

    def __call__(
        self,
        encoder,
        device,
        autocast=contextlib.nullcontext,
        prefix: str = "eval",
        forward=None,
        stop_check=None,
    ) -> dict[str, float]:
        """`{prefix}_knn_top1_cls`, `..._mean`, `{prefix}_linear_top1_*` and `{prefix}_monitor_runtime` (seconds).
        Collective under torch.distributed: every process must call it; all return the main process's numbers.
        `forward`: see `encoder_features` (needed when an engine shards the encoder's parameters). `stop_check`:
        called (by every process) before each phase — the features of each split, the scoring — to abandon the
        monitor on a stop signal (it raises)."""
        stop_check = stop_check or (lambda: None)
        weights = weights_fingerprint(encoder)
        if self._unchanged(weights, device):
            return {f"{prefix}_{name}": value for name, value in {**self._last[1], "monitor_runtime": 0.0}.items()}
        start = time.perf_counter()
        was_training = encoder.training
        encoder.eval()
        try:
            features = []
            for split in (0, 1):
                stop_check()
                features.append(
                    encoder_features(encoder, self.batches(split), len(self.splits[split]), device, autocast, forward)
                )
        finally:
            encoder.train(was_training)
        stop_check()
        rank, world = _world()
        metrics = [self.score(*features) if rank == 0 else None]
        if world > 1:
            dist.broadcast_object_list(metrics, src=0)
        metrics = {**metrics[0], "monitor_runtime": round(time.perf_counter() - start, 4)}
        self._last = (weights, metrics)
        return {f"{prefix}_{name}": value for name, value in metrics.items()}
