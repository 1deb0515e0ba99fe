"""torchvision v2 transforms, applied lazily (in dataloader workers): MAE pretraining and fine-tuning / evaluation on
PIL images, and mmsegmentation's ADE20K pipeline on (image, class map) pairs transformed together."""

import torch
from PIL import Image as PILImage
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .collate import pad_to
from .images import to_model_mode
from .labels import IGNORE_INDEX, annotation_array, reduce_labels_map
from .normalise import IMAGENET_MEAN, IMAGENET_STD, Normalize


def _to_tensor(mean, std) -> list:
    return [v2.ToImage(), Normalize(mean, std)]


def pretrain_transform(
    image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, min_scale: float = 0.2, flip: float = 0.5
) -> v2.Compose:
    """The official MAE augmentation: RandomResizedCrop(scale=(min_scale, 1), bicubic) + horizontal flip."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), interpolation=v2.InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(flip),
            *_to_tensor(mean, std),
        ]
    )


def eval_transform(image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct: float = 1.0) -> v2.Compose:
    """Resize the shorter side to image_size / crop_pct, then centre-crop image_size (fine-tuning evaluation:
    crop_pct 0.875, i.e. 256 -> 224)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return v2.Compose(
        [
            v2.Resize(int(min(height, width) / crop_pct), interpolation=v2.InterpolationMode.BICUBIC),
            v2.CenterCrop((height, width)),
            *_to_tensor(mean, std),
        ]
    )


class RandAugmentMstd(v2.RandAugment):
    """timm's `rand-m9-mstd0.5`, which the official fine-tuning uses, on torchvision's RandAugment: each image
    draws its magnitude from N(magnitude, magnitude_std) clipped to [0, 10]. torchvision's RandAugment has a fixed
    magnitude only; its ops and their ranges (shear 0.3, translate 0.45, rotate 30, enhance 0.9...) are timm's."""

    def __init__(self, magnitude: float = 9.0, magnitude_std: float = 0.5, num_ops: int = 2):
        super().__init__(num_ops=num_ops, magnitude=round(magnitude * 10), num_magnitude_bins=101)  # 0.1 steps
        self.mean_magnitude, self.magnitude_std = magnitude, magnitude_std

    def forward(self, *inputs):
        drawn = self.mean_magnitude + self.magnitude_std * float(torch.randn(()))
        self.magnitude = round(min(10.0, max(0.0, drawn)) * 10)
        return super().forward(*inputs)


def finetune_transform(
    image_size,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    min_scale: float = 0.08,
    rand_augment_magnitude: float | None = 9.0,
    rand_augment_std: float = 0.5,
    random_erasing: float = 0.25,
    flip: float = 0.5,
) -> v2.Compose:
    """The official fine-tuning augmentation (timm `create_transform` as main_finetune.py calls it):
    RandomResizedCrop(0.08-1, bicubic) + flip + RandAugment(m9, mstd 0.5) + normalise + RandomErasing(0.25,
    per-pixel random values). No RandAugment / erasing when their settings are None / 0 (linear probing)."""
    steps = [
        v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), interpolation=v2.InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(flip),
    ]
    if rand_augment_magnitude:
        steps.append(RandAugmentMstd(rand_augment_magnitude, rand_augment_std))
    steps += _to_tensor(mean, std)
    if random_erasing:
        steps.append(v2.RandomErasing(p=random_erasing, value="random"))
    return v2.Compose(steps)


class ImageTransform:
    """A `datasets` batch transform: PIL images in `column` -> `pixel_values` tensors, and `label_column` ->
    `labels` when given (other columns dropped)."""

    def __init__(self, transform, column: str, num_channels: int = 3, label_column: str | None = None):
        self.transform, self.column, self.num_channels = transform, column, num_channels
        self.label_column = label_column

    def prepare(self, image):
        return to_model_mode(image, self.num_channels)

    def __call__(self, batch: dict) -> dict:
        out = {"pixel_values": [self.transform(self.prepare(image)) for image in batch[self.column]]}
        if self.label_column is not None:
            out["labels"] = batch[self.label_column]
        return out


# mmsegmentation's ADE20K pipeline: the image and its class map transformed together.


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
        return F.resize(inpt, params["size"], interpolation=mode, antialias=False)


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
        labels, counts = mask[..., top : top + height, left : left + width].unique(return_counts=True)
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
        return F.crop(inpt, **params)


class PhotoMetricDistortion(v2.Transform):
    """mmseg's PhotoMetricDistortion on uint8 images (class maps untouched): each step with probability 0.5 —
    brightness + U(-32, 32), contrast x U(0.5, 1.5) (second or last, at random), saturation x U(0.5, 1.5), hue +
    an integer U[-18, 18) in OpenCV's 0..180 units — clipped and truncated to uint8 like mmcv. Brightness, contrast
    and hue are mmseg's exactly; saturation blends with the greyscale image (torchvision's adjust_saturation)
    where mmseg scales the HSV S channel, a close approximation."""

    def __init__(
        self, brightness_delta: float = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta: int = 18
    ):
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
        if not isinstance(inpt, tv_tensors.Image):  # class maps (and anything else) pass unchanged
            return inpt
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
        self.normalise = Normalize(mean, std)  # the image only; mmseg also normalises before padding with 0

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

    def __init__(
        self,
        crop_size,
        scale=(2048, 512),
        ratio_range=(0.5, 2.0),
        cat_max_ratio: float = 0.75,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        reduce_labels: bool = False,
        flip: float = 0.5,
        photometric: bool = True,
    ):
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        steps = [
            RandomRescale(scale, ratio_range),
            CatMaxRandomCrop(self.crop_size, cat_max_ratio),
            v2.RandomHorizontalFlip(flip),
        ]
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
        pairs = [
            self.transform(image, annotation)
            for image, annotation in zip(batch[self.image_column], batch[self.annotation_column])
        ]
        return {"pixel_values": [p for p, _ in pairs], "labels": [labels for _, labels in pairs]}
