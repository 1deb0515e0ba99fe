"""The fast pretraining input pipeline (`--image_decoding fast|gpu`) against the plain torchvision v2 one: same crop
draws, same output distribution, reduced-scale JPEG decoding only where the crop allows it."""

import io
import zipfile

import numpy as np
import pytest
import torch
from datasets import Image
from PIL import Image as PILImage

from mae_hf.data.decoding import EncodedImageTransform, FastRandomResizedCrop, pretrain_image_transform
from mae_hf.data.encoded import DCT_HEADROOM, _dct_scale
from mae_hf.data.gpu_decoding import EncodedCropFlip, GPUImageDecoder, collate_encoded
from mae_hf.data.images import to_model_mode
from mae_hf.data.normalise import IMAGENET_STD, normalisation
from mae_hf.data.transforms import ImageTransform, pretrain_transform

LEVEL = 1 / 255 / IMAGENET_STD[1]  # one uint8 level in normalised units (green channel)


def encode(pixels: np.ndarray, fmt: str = "JPEG", mode: str | None = None) -> bytes:
    image = PILImage.fromarray(pixels)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random content (a bicubic-enlarged coarse grid), like the benchmark's."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.asarray(PILImage.fromarray(coarse).resize((width, height), PILImage.BICUBIC))


def datasets_decode(data: bytes) -> PILImage.Image:
    """What `datasets.Image` hands the plain pipeline: the decoded image, turned upright by its EXIF orientation."""
    return Image(decode=True).decode_example({"bytes": data, "path": None})


def both(data: bytes, size: int, seed: int, num_channels: int = 3):
    """(plain, fast) outputs for the same random draws."""
    mean, std = normalisation(num_channels)
    torch.manual_seed(seed)
    plain = pretrain_transform(size, mean, std)(to_model_mode(datasets_decode(data), num_channels))
    torch.manual_seed(seed)
    fast = FastRandomResizedCrop(size, mean, std, num_channels=num_channels)({"bytes": data, "path": None})
    return plain, fast


def test_same_crops_and_flips_as_the_plain_pipeline_at_full_scale():
    data = encode(photo(120, 160))
    for seed in range(10):
        plain, fast = both(data, 48, seed)
        assert fast.shape == plain.shape == (3, 48, 48) and fast.dtype == torch.float32
        # Same decoder family and the same bicubic antialiased filter: < 0.5 levels mean, a few levels at most.
        # A crop or flip drawn differently would be tens of levels off.
        assert (fast - plain).abs().mean() < 0.5 * LEVEL, seed
        assert (fast - plain).abs().max() < 8 * LEVEL, seed


def test_large_jpegs_decode_at_reduced_scale_with_the_same_distribution(monkeypatch):
    data = encode(photo(1024, 1024))
    scales = []
    original = _dct_scale
    monkeypatch.setattr("mae_hf.data.encoded._dct_scale", lambda *a: scales.append(original(*a)) or scales[-1])
    diffs, plain_std, fast_std = [], [], []
    for seed in range(12):
        plain, fast = both(data, 32, seed)
        diffs.append((fast - plain).abs().mean() / LEVEL)
        plain_std.append(plain.std())
        fast_std.append(fast.std())
    assert max(scales) == 8 and min(scales) >= 2, scales  # every crop here allows a reduced-scale decode
    assert np.mean(diffs) < 1.5  # measured 0.66 levels
    assert abs(np.mean(fast_std) / np.mean(plain_std) - 1) < 0.02  # measured 0.989


@pytest.mark.parametrize(
    ("crop_hw", "size_hw", "fmt", "expected"),
    [
        ((1000, 1000), (64, 64), "JPEG", 4),  # 1000 / 64 = 15.6 >= 3 x 4, not 3 x 8
        ((1000, 1000), (64, 64), "PNG", 1),  # only JPEG has DCT scaling
        ((383, 600), (64, 64), "JPEG", 1),  # the shorter side decides: 383 / 64 < 3 x 2
        ((384, 600), (64, 64), "JPEG", 2),
        ((1000, 1000), (224, 224), "JPEG", 1),
    ],
)
def test_dct_scale_keeps_headroom_over_the_output(crop_hw, size_hw, fmt, expected):
    image = PILImage.open(io.BytesIO(encode(photo(1000, 1000), fmt)))
    assert DCT_HEADROOM == 3
    assert _dct_scale(image, crop_hw, size_hw) == expected


@pytest.mark.parametrize(
    ("fmt", "mode", "num_channels"),
    [("JPEG", "L", 3), ("JPEG", "CMYK", 3), ("PNG", "RGBA", 3), ("PNG", "P", 3), ("JPEG", None, 1), ("PNG", "L", 1)],
)
def test_modes_and_formats_match_the_plain_pipeline(fmt, mode, num_channels):
    data = encode(photo(60, 80), fmt, mode)
    plain, fast = both(data, 32, 3, num_channels)
    assert fast.shape == plain.shape == (num_channels, 32, 32)
    assert (fast - plain).abs().mean() < 1 * LEVEL


def test_paths_and_decoded_images_are_accepted(tmp_path):
    data = encode(photo(60, 80))
    (tmp_path / "a.jpg").write_bytes(data)
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:  # how streamed archives name their files
        archive.writestr("inner/a.jpg", data)
    transform = FastRandomResizedCrop(32)
    outputs = []
    for value in (
        {"bytes": None, "path": str(tmp_path / "a.jpg")},
        str(tmp_path / "a.jpg"),
        data,
        f"zip://inner/a.jpg::{tmp_path / 'images.zip'}",
        PILImage.open(io.BytesIO(data)).convert("RGB"),
    ):
        torch.manual_seed(0)
        outputs.append(transform(value))
    for output in outputs[1:]:
        assert (output - outputs[0]).abs().mean() < 0.5 * LEVEL  # PIL-decoded input: same result, other decoder
    with pytest.raises(TypeError, match="got int"):
        transform(3)


def test_an_already_decoded_large_jpeg_is_cropped_where_the_plain_pipeline_crops():
    data = encode(photo(1024, 1024))
    decoded = datasets_decode(data)
    assert decoded.format == "JPEG"  # still looks like a JPEG, but reduced-scale decoding no longer applies
    for seed in range(4):
        plain, _ = both(data, 32, seed)
        torch.manual_seed(seed)
        fast = FastRandomResizedCrop(32)(decoded)
        assert (fast - plain).abs().mean() < 0.5 * LEVEL


@pytest.mark.parametrize("decoding", ["fast", "gpu"])
def test_exif_orientation_is_applied_like_datasets_does(decoding):
    image = PILImage.fromarray(photo(40, 80))  # landscape pixels, tagged "rotate 90 CW" -> portrait upright
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif)
    data = buffer.getvalue()
    assert datasets_decode(data).size == (40, 80)
    plain, fast = both(data, 16, 0)
    if decoding == "gpu":
        torch.manual_seed(0)
        batch = collate_encoded([{"pixel_values": EncodedCropFlip(16)({"bytes": data})}])
        assert batch["encoded_images"][0].shape == (3, 80, 40)  # decoded upright in the worker
        fast = GPUImageDecoder(16)(batch["encoded_images"], batch["crops"], batch["flips"], "cpu")[0]
    assert (fast - plain).abs().mean() < 0.5 * LEVEL


def test_gpu_decoder_halves_equal_the_fast_pipeline_on_cpu():
    files = [encode(photo(60 + 7 * i, 80)) for i in range(4)] + [encode(photo(50, 50), "PNG", "RGBA")]
    torch.manual_seed(5)
    fast = torch.stack([FastRandomResizedCrop(32)({"bytes": data}) for data in files])
    torch.manual_seed(5)
    worker = EncodedImageTransform(EncodedCropFlip(32), "image")
    batch = collate_encoded(
        [{"pixel_values": value} for value in worker({"image": [{"bytes": d} for d in files]})["pixel_values"]]
    )
    assert [array.ndim for array in batch["encoded_images"]] == [1, 1, 1, 1, 3]  # the PNG is decoded in the worker
    assert isinstance(batch["crops"], np.ndarray) and batch["crops"].shape == (5, 4)  # never moved to the device
    on_device = GPUImageDecoder(32)(batch["encoded_images"], batch["crops"], batch["flips"], "cpu")
    assert on_device.shape == (5, 3, 32, 32)
    torch.testing.assert_close(on_device, fast, atol=1e-5, rtol=0)


def test_pretrain_image_transform_choices():
    settings = {"min_scale": 0.3, "flip": 0.0, "num_channels": 1}
    assert type(pretrain_image_transform("pil", "image", 32, (0.5,), (0.5,), **settings)) is ImageTransform
    fast = pretrain_image_transform("fast", "img", 32, (0.5,), (0.5,), **settings)
    assert isinstance(fast, EncodedImageTransform) and fast.column == "img"
    assert fast.transform.draw.crop.scale == (0.3, 1.0) and fast.transform.draw.flip == 0.0
    gpu = pretrain_image_transform("gpu", "image", 32, (0.5,), (0.5,), **settings).transform
    assert isinstance(gpu, EncodedCropFlip) and gpu.num_channels == 1
    with pytest.raises(ValueError, match="--image_decoding must be pil, fast or gpu, got 'nvjpeg'"):
        pretrain_image_transform("nvjpeg", "image", 32, (0.5,), (0.5,), **settings)
