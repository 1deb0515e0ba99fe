"""Semantic segmentation data (UperNet on ADE20K, mmsegmentation's MAE recipe): ADE20K-layout folders, Hub /
parquet / arrow sets and the built-in `digits_seg` as `image` + `annotation` columns; checks of every annotation
before training; mmsegmentation's ADE20K augmentation with the image and its class map transformed together; and a
collator that pads images with 0 and maps with 255 (ignored)."""

import functools
import io
import logging
import os

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value, load_dataset, load_from_disk
from PIL import Image as PILImage
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .digits_seg import DIGITS_SEG_LABELS, load_digits_seg_dataset
from .images import load_reduced, to_model_mode
from .loading import IMAGE_SUFFIXES, check_train_split
from .transforms import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
IMAGE_COLUMN_NAMES = ("image", "pixel_values", "img")
ANNOTATION_COLUMN_NAMES = ("annotation", "label", "segmentation_map", "mask")
ADE_SPLITS = {"train": "training", "validation": "validation"}
# PIL modes that hold one class id per pixel; RGB "colour maps" need converting to ids first.
CLASS_MAP_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")
# The 150 SceneParsing classes, ids 1..150 in the PNGs (0 = "other"), as mmsegmentation's ADE20KDataset names them.
ADE20K_LABELS = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip
SEGMENTATION_FEATURES = Features({"image": Image(), "annotation": Image()})


# ---------------------------------------------------------------------------------------------------- loading


def _image_files(folder: str) -> dict[str, str]:
    """{file name without suffix: path} of the image files in `folder`."""
    if not os.path.isdir(folder):
        raise ValueError(
            f"{folder} does not exist: an ADE20K-layout folder has images/training, images/validation, "
            "annotations/training and annotations/validation"
        )
    files = {}
    for name in sorted(os.listdir(folder)):
        if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
            stem = os.path.splitext(name)[0]
            if stem in files:
                raise ValueError(f"{files[stem]} and {os.path.join(folder, name)} share a name: images and "
                                 "annotations pair up by file name without suffix")
            files[stem] = os.path.join(folder, name)
    return files


def _unpaired(side: str, files: dict[str, str], missing: list[str]) -> str:
    if not missing:
        return ""
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f" {len(missing)} {side}: {', '.join(files[stem] for stem in missing[:5])}{more}."


def load_ade_folder(root: str, splits=tuple(ADE_SPLITS)) -> DatasetDict:
    """A local `ADEChallengeData2016/` folder (images/{training,validation}/*.jpg, annotations/.../*.png) as train
    and validation (or the `splits` given) with `image` and `annotation` columns (files read lazily; paths kept for
    error messages). Images and annotations pair up by file name without suffix."""
    loaded = {}
    for split in splits:
        folder = ADE_SPLITS[split]
        images = _image_files(os.path.join(root, "images", folder))
        annotations = _image_files(os.path.join(root, "annotations", folder))
        lonely_images = sorted(set(images) - set(annotations))
        lonely_annotations = sorted(set(annotations) - set(images))
        if lonely_images or lonely_annotations:
            raise ValueError(
                f"{root}: {folder} images and annotations do not pair up (by file name without suffix)."
                + _unpaired("image(s) without an annotation", images, lonely_images)
                + _unpaired("annotation(s) without an image", annotations, lonely_annotations)
            )
        if not images:
            raise ValueError(f"{os.path.join(root, 'images', folder)} contains no image files")
        stems = sorted(images)
        loaded[split] = Dataset.from_dict(
            {"image": [images[s] for s in stems], "annotation": [annotations[s] for s in stems]},
            features=SEGMENTATION_FEATURES,
        )
    return DatasetDict(loaded)


def _is_ade_folder(name: str) -> bool:
    return all(os.path.isdir(os.path.join(name, sub)) for sub in ("images", "annotations"))


def _load(args, training: bool) -> DatasetDict:
    name = args.dataset_name
    if name == "digits_seg":
        return load_digits_seg_dataset(args.dataset_config_name)
    if os.path.isdir(name) and _is_ade_folder(name):
        return load_ade_folder(name, tuple(ADE_SPLITS) if training else ("validation",))
    if os.path.isdir(name) and any(os.path.exists(os.path.join(name, f)) for f in ("dataset_dict.json", "state.json")):
        loaded = load_from_disk(name)  # a folder written by save_to_disk
        return loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded)
    return load_dataset(name, args.dataset_config_name, cache_dir=args.cache_dir)


def _find(columns: list[str], name: str | None, usual: tuple, flag: str, what: str) -> str:
    if name is not None:
        if name not in columns:
            raise ValueError(f"{flag} {name!r} is not a column of the dataset; columns: {columns}")
        return name
    for column in usual:
        if column in columns:
            return column
    raise ValueError(f"the dataset has no {what} column (looked for {', '.join(usual)}); pass {flag} "
                     f"(columns: {columns})")


def find_segmentation_columns(dataset, image_column: str | None = None, annotation_column: str | None = None):
    """(image column, annotation column): the given names (they must exist), else the usual names, else (for the
    image) the first other `datasets.Image` feature. Both must be `datasets.Image` columns. Errors list the
    columns."""
    columns = list(dataset.column_names)
    annotation = _find(columns, annotation_column, ANNOTATION_COLUMN_NAMES, "--annotation_column_name", "annotation")
    others = [c for c in columns if c != annotation]
    fallback = tuple(c for c in others if isinstance(dataset.features.get(c), Image))
    image = _find(others, image_column, IMAGE_COLUMN_NAMES + fallback, "--image_column_name", "image")
    for column, flag in ((image, "--image_column_name"), (annotation, "--annotation_column_name")):
        feature = (dataset.features or {}).get(column)
        if feature is not None and not isinstance(feature, Image):
            raise ValueError(f"column {column!r} holds {feature}, not images; pass {flag} (columns: {columns})")
    return image, annotation


def _label_names(args, datasets: DatasetDict, image_column: str, annotation_column: str) -> list[str]:
    """Class names by id: known for digits_seg and ADE20K folders; else ids up to --num_labels or the largest label."""
    reduce = getattr(args, "reduce_labels", False)
    if args.dataset_name == "digits_seg":
        return DIGITS_SEG_LABELS[1:] if reduce else list(DIGITS_SEG_LABELS)
    if os.path.isdir(args.dataset_name) and _is_ade_folder(args.dataset_name):
        return list(ADE20K_LABELS) if reduce else ["other", *ADE20K_LABELS]
    if getattr(args, "num_labels", None):
        return [str(i) for i in range(args.num_labels)]
    logger.info("no --num_labels: scanning the annotations for the largest class id (pass --num_labels to skip)")
    largest = max(
        max((v for row in _annotation_stats(d, image_column, annotation_column, reduce, split=split)["labels"]
             for v in row if v != IGNORE_INDEX), default=-1)
        for split, d in datasets.items()
    )
    if largest < 0:
        raise ValueError("the annotations hold no class ids other than 255 (ignored); pass --num_labels")
    return [str(i) for i in range(largest + 1)]


def load_segmentation_datasets(args, seed: int = 42, training: bool = True) -> tuple[DatasetDict, str, str, list[str]]:
    """(train + validation, image column, annotation column, class names by id).

    `args.dataset_name`: 'digits_seg', a local ADE20K-layout folder (images/ + annotations/), a save_to_disk or
    parquet/arrow folder, or a Hub id with image and annotation columns. Validation is carved from train
    (`train_val_split`, seeded) when the source has none; `max_train_samples` / `max_eval_samples` truncate.
    Evaluation alone (`training` False) needs no train split (nor an ADE20K folder's images/training): then the
    result has only validation.
    """
    if args.dataset_name is None:
        raise ValueError("give --dataset_name ('digits_seg', an ADEChallengeData2016 folder, a local "
                         "parquet/arrow folder or a Hub id)")
    if getattr(args, "streaming", False):
        raise ValueError("segmentation does not stream: every annotation is checked before training")
    datasets = _load(args, training)
    check_train_split(datasets, training)
    image_column, annotation_column = find_segmentation_columns(
        datasets["train" if "train" in datasets else "validation"], args.image_column_name,
        getattr(args, "annotation_column_name", None)
    )
    if "validation" not in datasets:
        carved = datasets["train"].train_test_split(test_size=args.train_val_split, seed=seed)
        datasets = DatasetDict(train=carved["train"], validation=carved["test"])
    datasets = DatasetDict({split: datasets[split] for split in ("train", "validation") if split in datasets})
    for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples)):
        if limit is not None and split in datasets:
            datasets[split] = datasets[split].select(range(min(limit, len(datasets[split]))))
    return datasets, image_column, annotation_column, _label_names(args, datasets, image_column, annotation_column)


# ---------------------------------------------------------------------------------------------------- class maps


def annotation_array(annotation: PILImage.Image) -> np.ndarray:
    """A class map as a writable (H, W) array: uint8 for 8-bit maps, int64 for 16/32-bit ones."""
    if annotation.mode not in CLASS_MAP_MODES:
        raise ValueError(f"an annotation must hold one class id per pixel (PIL modes {', '.join(CLASS_MAP_MODES)}); "
                         f"got mode {annotation.mode}")
    array = np.array(annotation)  # a copy: PIL's buffer is read-only
    return array if array.dtype == np.uint8 else array.astype(np.int64)


def reduce_labels_map(array: np.ndarray) -> np.ndarray:
    """ADE20K's convention: 0 ("other") -> 255 (ignored), 1..150 -> 0..149; 255 stays 255. Same shape and dtype."""
    reduced = array.astype(np.int64) - 1
    reduced[(array == 0) | (array == IGNORE_INDEX)] = IGNORE_INDEX
    return reduced.astype(array.dtype)


def _open(value: dict) -> PILImage.Image:
    """A lazily opened image (header read, pixels not yet decoded) from a `datasets.Image(decode=False)` value."""
    return PILImage.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])


def _size(image: PILImage.Image) -> list[int]:
    """(width, height) as `datasets` decodes it: it applies the EXIF orientation, which swaps sides for 5..8.
    (A PNG's getexif decodes the pixels to look for a late eXIf chunk: PNGs are taken as they are unless the
    chunk came before the pixels.)"""
    width, height = image.size
    exif = image.getexif() if image.format != "PNG" or "exif" in image.info else {}
    return [height, width] if exif.get(0x0112) in (5, 6, 7, 8) else [width, height]


def _stats_batch(batch: dict, image_column: str, annotation_column: str, reduce_labels: bool,
                 decode_images: bool = True) -> dict:
    out = {"image_size": [], "annotation_size": [], "labels": [], "error": []}
    for image_value, annotation_value in zip(batch[image_column], batch[annotation_column]):
        image_size, annotation_size, labels, error = [], [], [], ""
        try:
            with _open(image_value) as image:
                image_size = _size(image)
                if decode_images:
                    load_reduced(image)  # a truncated image fails here, not in the first training step
            with _open(annotation_value) as annotation:
                annotation_size = _size(annotation)
                array = annotation_array(annotation)
            if reduce_labels:
                array = reduce_labels_map(array)
            # bincount is a single pass for 8-bit maps; np.unique sorts
            labels = (np.flatnonzero(np.bincount(array.ravel(), minlength=256)) if array.dtype == np.uint8
                      else np.unique(array)).tolist()
        except Exception as exception:  # noqa: BLE001 - reported with the file's name below
            error = f"{type(exception).__name__}: {exception}"
        for key, value in zip(out, (image_size, annotation_size, labels, error)):
            out[key].append(value)
    return out


def _annotation_stats(dataset: Dataset, image_column: str, annotation_column: str, reduce_labels: bool,
                      num_proc: int | None = None, split: str = "train", decode_images: bool = True) -> Dataset:
    """Per row: image and annotation sizes from the headers, the class ids present (decoding the map), any error.
    The same function and arguments each time, so `datasets` reuses its cache for file-backed sets."""
    raw = dataset.select_columns([image_column, annotation_column])
    raw = raw.cast_column(image_column, Image(decode=False)).cast_column(annotation_column, Image(decode=False))
    ints = Sequence(Value("int64"))  # explicit: a first batch of empty lists would otherwise infer nulls
    features = Features({"image_size": ints, "annotation_size": ints, "labels": ints, "error": Value("string")})
    function = functools.partial(_stats_batch, image_column=image_column, annotation_column=annotation_column,
                                 reduce_labels=reduce_labels, decode_images=decode_images)
    return raw.map(function, batched=True, num_proc=num_proc, remove_columns=raw.column_names, features=features,
                   desc=f"checking {split} annotations")


def check_annotations(dataset: Dataset, image_column: str, annotation_column: str, num_labels: int,
                      reduce_labels: bool = False, split: str = "train", num_proc: int | None = None,
                      skip_corrupt: bool = False, decode_images: bool = True) -> tuple[Dataset, int]:
    """Before training: every image decodes (JPEGs at 1/8 scale; skipped when `decode_images` is False), every
    annotation opens, is a class map the size of its image, and holds only class ids in [0, num_labels) or 255
    (ignored), after `reduce_labels` when set. A ValueError counts the bad rows and names the first three files
    (rows when there is no file) with both sizes or the offending value. With `skip_corrupt`, rows whose image or
    annotation cannot be read are left out instead (other faults still raise). Returns (the dataset, the number
    of rows left out)."""
    stats = _annotation_stats(dataset, image_column, annotation_column, reduce_labels, num_proc, split, decode_images)
    files = dataset.select_columns([image_column, annotation_column])
    files = files.cast_column(image_column, Image(decode=False)).cast_column(annotation_column, Image(decode=False))

    def name(index: int, column: str) -> str:
        return files[index][column].get("path") or f"row {index}"

    problems, unreadable = [], []
    for index, (image_size, annotation_size, labels, error) in enumerate(
        zip(stats["image_size"], stats["annotation_size"], stats["labels"], stats["error"])
    ):
        if error:
            unreadable.append(index)
            if not skip_corrupt:
                problems.append(f"annotation {name(index, annotation_column)} or its image "
                                f"{name(index, image_column)} cannot be read ({error})")
        elif image_size != annotation_size:
            problems.append(f"annotation {name(index, annotation_column)} has size {tuple(annotation_size)} but its "
                            f"image {name(index, image_column)} has size {tuple(image_size)} (width, height)")
        elif bad := [v for v in labels if v >= num_labels and v != IGNORE_INDEX]:
            raw = f" ({bad[0] + 1} before --reduce_labels)" if reduce_labels else ""
            problems.append(f"annotation {name(index, annotation_column)} has label {bad[0]}{raw}, outside "
                            f"num_labels={num_labels} (ids must be 0..{num_labels - 1}, or 255 = ignored)")
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        hint = "" if skip_corrupt or not unreadable else " (--skip_corrupt_images leaves unreadable pairs out)"
        raise ValueError(f"{len(problems)} bad {split} annotation(s): {'; '.join(problems[:3])}{more}{hint}")
    if unreadable:
        dataset = dataset.select(sorted(set(range(len(dataset))) - set(unreadable)))
    return dataset, len(unreadable)


# ---------------------------------------------------------------------------------------------------- transforms


def rescaled_size(height: int, width: int, scale) -> list[int]:
    """mmcv's keep-ratio rescale: the largest size with the aspect ratio kept that fits (long, short) = scale
    (in either orientation), rounded. (H, W)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return [int(height * factor + 0.5), int(width * factor + 0.5)]


class RandomRescale(v2.Transform):
    """mmseg's RandomResize(scale, ratio_range, keep_ratio=True): r ~ U(ratio_range), then a keep-ratio resize to
    fit (scale * r); ratio_range (1, 1) is mmseg's plain Resize(scale, keep_ratio=True). Images bilinear without
    antialiasing (cv2's INTER_LINEAR, as mmcv). Class maps nearest-neighbour only (never new values), with pixel
    centres (NEAREST_EXACT): cv2's / torch's plain NEAREST picks floor(x / factor), which lags the bilinear image
    by up to half a source pixel when shrinking; NEAREST_EXACT picks the source pixel under the sampling point."""

    def __init__(self, scale=(2048, 512), ratio_range=(0.5, 2.0)):
        super().__init__()
        self.scale, self.ratio_range = tuple(scale), tuple(ratio_range)

    def make_params(self, flat_inputs: list) -> dict:
        ratio = float(torch.empty(()).uniform_(*self.ratio_range))
        scale = [int(side * ratio) for side in self.scale]  # mmseg truncates too
        return {"size": rescaled_size(*v2.query_size(flat_inputs), scale)}

    def transform(self, inpt, params: dict):
        is_map = isinstance(inpt, tv_tensors.Mask)
        mode = v2.InterpolationMode.NEAREST_EXACT if is_map else v2.InterpolationMode.BILINEAR
        return self._call_kernel(F.resize, inpt, params["size"], interpolation=mode, antialias=False)


class CatMaxRandomCrop(v2.Transform):
    """mmseg's RandomCrop(crop_size, cat_max_ratio): a random crop (the whole side when the image is smaller; pad
    afterwards), redrawn up to 10 times until no single class covers `cat_max_ratio` or more of the crop's
    non-ignored pixels and at least two classes are present. As in mmseg, when all 10 fail the 11th draw is kept
    unchecked. Needs a `tv_tensors.Mask` among the inputs for the check; without one it is a plain random crop."""

    def __init__(self, size, cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX, tries: int = 10):
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.cat_max_ratio, self.ignore_index, self.tries = cat_max_ratio, ignore_index, tries

    def _draw(self, height: int, width: int) -> tuple[int, int, int, int]:
        top = int(torch.randint(max(height - self.size[0], 0) + 1, ()))
        left = int(torch.randint(max(width - self.size[1], 0) + 1, ()))
        return top, left, min(self.size[0], height), min(self.size[1], width)

    def _balanced(self, mask: torch.Tensor, box: tuple) -> bool:
        top, left, height, width = box
        labels, counts = mask[..., top:top + height, left:left + width].unique(return_counts=True)
        counts = counts[labels != self.ignore_index]
        return len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        masks = [inpt for inpt in flat_inputs if isinstance(inpt, tv_tensors.Mask)]
        box = self._draw(height, width)
        if masks and self.cat_max_ratio < 1:
            for _ in range(self.tries):
                if self._balanced(masks[0], box):
                    break
                box = self._draw(height, width)
        return dict(zip(("top", "left", "height", "width"), box))

    def transform(self, inpt, params: dict):
        return self._call_kernel(F.crop, inpt, **params)


class PhotoMetricDistortion(v2.Transform):
    """mmseg's PhotoMetricDistortion on uint8 images (class maps untouched): each step with probability 0.5 —
    brightness + U(-32, 32), contrast x U(0.5, 1.5) (second or last, at random), saturation x U(0.5, 1.5), hue +
    an integer U[-18, 18) in OpenCV's 0..180 units — clipped and truncated to uint8 like mmcv. Brightness, contrast
    and hue are mmseg's exactly; saturation blends with the greyscale image (torchvision's adjust_saturation)
    where mmseg scales the HSV S channel, a close approximation."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, brightness_delta: float = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18):
        super().__init__()
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast_range, self.saturation_range = tuple(contrast_range), tuple(saturation_range)

    def make_params(self, flat_inputs: list) -> dict:
        def maybe(draw):  # one coin per step, as mmseg
            return draw() if torch.randint(2, ()).item() else None

        def uniform(low, high):
            return float(torch.empty(()).uniform_(low, high))

        return {
            "brightness": maybe(lambda: uniform(-self.brightness_delta, self.brightness_delta)),
            "contrast_first": bool(torch.randint(2, ()).item()),
            "contrast": maybe(lambda: uniform(*self.contrast_range)),
            "saturation": maybe(lambda: uniform(*self.saturation_range)),
            "hue": maybe(lambda: int(torch.randint(-self.hue_delta, self.hue_delta, ()))),
        }

    @staticmethod
    def _affine(image: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
        return tv_tensors.wrap((image.float() * alpha + beta).clamp(0, 255).to(torch.uint8), like=image)

    def transform(self, inpt, params: dict):
        image = inpt if params["brightness"] is None else self._affine(inpt, beta=params["brightness"])
        contrast = params["contrast"]
        if contrast is not None and params["contrast_first"]:
            image = self._affine(image, alpha=contrast)
        if params["saturation"] is not None:
            image = F.adjust_saturation(image, params["saturation"])
        if params["hue"] is not None:
            image = F.adjust_hue(image, params["hue"] / 180.0)  # OpenCV hue spans 0..180 for the full circle
        if contrast is not None and not params["contrast_first"]:
            image = self._affine(image, alpha=contrast)
        return image


def pad_to(tensor: torch.Tensor, height: int, width: int, fill: float) -> torch.Tensor:
    """Pad (..., h, w) at the bottom and right up to (height, width) (mmseg's data preprocessor pads there)."""
    bottom, right = height - tensor.shape[-2], width - tensor.shape[-1]
    if bottom <= 0 and right <= 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, max(right, 0), 0, max(bottom, 0)), value=fill)


def _as_tv_tensors(image: PILImage.Image, annotation: PILImage.Image, num_channels: int, reduce_labels: bool):
    """(uint8 tv_tensors.Image (C, H, W), tv_tensors.Mask (H, W)) from the PIL pair, checking they line up."""
    if image.size != annotation.size:
        raise ValueError(f"annotation size {annotation.size} differs from its image's {image.size} (width, height)")
    pixels = tv_tensors.Image(F.pil_to_tensor(to_model_mode(image, num_channels)))
    labels = annotation_array(annotation)
    if reduce_labels:
        labels = reduce_labels_map(labels)
    return pixels, tv_tensors.Mask(torch.from_numpy(labels))


class _SegmentationTransform:
    transforms_labels = True  # False: the class map keeps its original size (evaluation)

    def __init__(self, augment: v2.Transform, mean, std, reduce_labels: bool, pad_size=None):
        self.augment, self.reduce_labels, self.pad_size = augment, reduce_labels, pad_size
        self.num_channels = len(mean)
        # ToDtype with one dtype converts the image only; mmseg also normalises before padding with 0
        self.normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __call__(self, image: PILImage.Image, annotation: PILImage.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values (C, h, w) float32, labels (h, w) int64) with 255 = ignored."""
        pixels, labels = _as_tv_tensors(image, annotation, self.num_channels, self.reduce_labels)
        if self.transforms_labels:
            pixels, labels = self.augment(pixels, labels)
        else:
            pixels = self.augment(pixels)
        pixel_values = self.normalise(pixels).as_subclass(torch.Tensor)
        labels = labels.as_subclass(torch.Tensor).long()
        if self.pad_size is not None:
            height = max(self.pad_size[0], labels.shape[-2])
            width = max(self.pad_size[1], labels.shape[-1])
            pixel_values, labels = pad_to(pixel_values, height, width, 0), pad_to(labels, height, width, IGNORE_INDEX)
        return pixel_values, labels


class SegmentationTrainTransform(_SegmentationTransform):
    """mmsegmentation's ADE20K training pipeline on a (PIL image, PIL class map) pair, both transformed together:
    RandomResize(scale x U(ratio_range), keep ratio) -> RandomCrop(crop_size, cat_max_ratio) -> horizontal flip
    (p=`flip`) -> PhotoMetricDistortion (skipped when `photometric` is False) -> normalise -> pad to crop_size with
    0 (image) and 255 (map). Returns (pixel_values (C, crop, crop) float32, labels (crop, crop) int64).
    `reduce_labels`: ADE20K's 0 -> 255, 1..150 -> 0..149 before anything else. The channel count follows `mean`."""

    def __init__(self, crop_size, scale=(2048, 512), ratio_range=(0.5, 2.0), cat_max_ratio: float = 0.75,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, reduce_labels: bool = False, flip: float = 0.5,
                 photometric: bool = True):
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        steps = [RandomRescale(scale, ratio_range), CatMaxRandomCrop(self.crop_size, cat_max_ratio),
                 v2.RandomHorizontalFlip(flip)]
        if photometric:
            steps.append(PhotoMetricDistortion())
        super().__init__(v2.Compose(steps), mean, std, reduce_labels, pad_size=self.crop_size)


class SegmentationEvalTransform(_SegmentationTransform):
    """mmsegmentation's test pipeline: Resize(`scale`, keep_ratio=True) of the image -- with (2048, 512) the shorter
    side becomes 512 unless the image is over 4:1 -- then normalise. The class map is NOT resized: as in mmseg, whose
    test pipeline loads the annotation after the resize, it keeps the original annotation size, and the model's
    logits are resized back to that size (bilinear) before scoring (`segment_to_original_size`). Returns
    (pixel_values (C, h, w) float32, labels (H, W) int64 at the annotation's own size)."""

    transforms_labels = False

    def __init__(self, scale=(2048, 512), mean=IMAGENET_MEAN, std=IMAGENET_STD, reduce_labels: bool = False):
        super().__init__(RandomRescale(scale, ratio_range=(1.0, 1.0)), mean, std, reduce_labels)


class SegmentationBatchTransform:
    """A `Dataset.with_transform` function: PIL images and class maps -> {"pixel_values": [...], "labels": [...]}
    (other columns dropped)."""

    def __init__(self, transform, image_column: str = "image", annotation_column: str = "annotation"):
        self.transform, self.image_column, self.annotation_column = transform, image_column, annotation_column

    def __call__(self, batch: dict) -> dict:
        pairs = [self.transform(image, annotation)
                 for image, annotation in zip(batch[self.image_column], batch[self.annotation_column])]
        return {"pixel_values": [p for p, _ in pairs], "labels": [labels for _, labels in pairs]}


def collate_segmentation(examples: list[dict], with_sizes: bool = False) -> dict:
    """Stack pixel_values (B, C, H, W) and labels (B, H', W') int64; different sizes are padded at the bottom and
    right to the largest in the batch, images with 0 and maps with 255 (ignored). Images and maps are padded
    separately: in evaluation the maps keep their original size while the images are resized. `with_sizes` adds
    `image_sizes` and `label_sizes`, (B, 2) int64 (height, width) of each image and map before padding, which
    `segment_to_original_size` needs to drop the padding and resize the logits back."""
    batch = {"pixel_values": _pad_and_stack([e["pixel_values"] for e in examples], 0)}
    if "labels" in examples[0]:
        batch["labels"] = _pad_and_stack([torch.as_tensor(e["labels"]).long() for e in examples], IGNORE_INDEX)
    if with_sizes:
        batch["image_sizes"] = torch.tensor([tuple(e["pixel_values"].shape[-2:]) for e in examples])
        if "labels" in examples[0]:
            batch["label_sizes"] = torch.tensor([tuple(torch.as_tensor(e["labels"]).shape[-2:]) for e in examples])
    return batch


def collate_segmentation_with_sizes(examples: list[dict]) -> dict:
    """`collate_segmentation(examples, with_sizes=True)`: the evaluation collator."""
    return collate_segmentation(examples, with_sizes=True)


def _pad_and_stack(tensors: list[torch.Tensor], fill) -> torch.Tensor:
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    return torch.stack([pad_to(t, height, width, fill) for t in tensors])
