"""Images as the model takes them: opening `datasets.Image(decode=False)` values lazily, EXIF orientation as
`datasets` applies it, any PIL mode converted to RGB / L, and catching corrupt files before training starts."""

import io

import numpy as np
from datasets import Dataset, Image
from PIL import ExifTags, ImageOps
from PIL import Image as PILImage

from .once import map_split


def to_model_mode(image: PILImage.Image, num_channels: int = 3) -> PILImage.Image:
    """Any PIL image (grayscale, palette, RGBA, CMYK, 16-bit, float) as RGB, or as L for 1-channel models."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # PIL's own convert clips 16-bit and float values at 255; rescale the actual range instead.
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = PILImage.fromarray(np.clip(array / high * 255.0, 0, 255).round().astype(np.uint8), mode="L")
    target = "L" if num_channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def open_lazily(value: dict) -> PILImage.Image:
    """A lazily opened image (header read, pixels not yet decoded) from a local `datasets.Image(decode=False)`
    value."""
    return PILImage.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])


def exif_orientation(image: PILImage.Image, header_only: bool = False) -> int:
    """The EXIF orientation tag (1 = upright, 5..8 = sides swapped), 1 when absent. PIL's `getexif` on a PNG decodes
    the pixels to look for an eXIf chunk after them; `header_only` skips that (PNGs then count as upright unless
    the chunk came before the pixels)."""
    if header_only and image.format == "PNG" and "exif" not in image.info:
        return 1
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def upright(image: PILImage.Image) -> PILImage.Image:
    """The image turned upright by its EXIF orientation, as `datasets.Image` decodes it (decoded when turned; the
    same lazily opened image otherwise)."""
    return ImageOps.exif_transpose(image) if exif_orientation(image) != 1 else image


def upright_size(image: PILImage.Image) -> list[int]:
    """[width, height] as `datasets` decodes the image, from the header (see `exif_orientation(header_only=True)`)."""
    width, height = image.size
    return [height, width] if exif_orientation(image, header_only=True) in (5, 6, 7, 8) else [width, height]


def load_reduced(image: PILImage.Image) -> None:
    """Decode a lazily opened image (JPEGs at 1/8 scale, which reads every entropy-coded byte at a fraction of the
    cost): raises on a truncated or corrupt file."""
    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
    image.load()


def _decodes(value) -> bool:
    try:
        with open_lazily(value) as image:
            load_reduced(image)
        return True
    except Exception:  # noqa: BLE001 - any failure to decode is what we are looking for
        return False


def _describe(value, index: int) -> str:
    return value.get("path") or f"row {index}"


def verify_images(
    dataset: Dataset, column: str, skip_corrupt: bool = False, num_proc: int | None = None, split: str = "train"
) -> tuple[Dataset, int]:
    """Decode every image once (JPEGs at reduced scale) before training; with several processes each checks its
    share of the images (`once.map_split`: collective, every process must call it).

    Returns the dataset (without the corrupt rows when `skip_corrupt`) and the number of rows removed; without
    `skip_corrupt` a corrupt image raises a ValueError that names its file.
    """
    raw = dataset.cast_column(column, Image(decode=False))
    flags = map_split(
        raw,
        lambda batch: {"_decodes": [_decodes(v) for v in batch[column]]},
        batched=True,
        num_proc=num_proc,
        remove_columns=raw.column_names,
        desc=f"checking {split} images",
    )["_decodes"]
    bad = [i for i, ok in enumerate(flags) if not ok]
    if not bad:
        return dataset, 0
    if not skip_corrupt:
        names = ", ".join(_describe(raw[i][column], i) for i in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(
            f"{len(bad)} {split} image(s) cannot be decoded: {names}{more}. Fix or remove them, or pass "
            "--skip_corrupt_images to leave them out."
        )
    keep = sorted(set(range(len(dataset))) - set(bad))
    return dataset.select(keep), len(bad)
