"""Per-sample randomness: what an example (and a batch) gets is a function of (seed, epoch, index) only, for every
training pipeline: the same with 0 or 2 dataloader workers, in any order of access (as another process would load
it), whatever the global RNG state, and the global RNG state is left as it was."""

import functools

import numpy as np
import pytest
import torch
from datasets import Image
from torch.utils.data import DataLoader

from mae_hf.data import (
    ImageTransform,
    MixupCollator,
    SegmentationBatchTransform,
    SegmentationTrainTransform,
    collate_pixel_values,
    collate_segmentation,
    finetune_transform,
    load_digits_dataset,
    load_digits_seg_dataset,
)
from mae_hf.data.decoding import pretrain_image_transform
from mae_hf.data.gpu_decoding import collate_encoded
from mae_hf.data.seeding import (
    MaskNoise,
    SampleKeySampler,
    SeededCollator,
    SeededSamples,
    derive_seed,
    sample_key_sampler,
    seeded_rng,
)

MEAN, STD = (0.5,) * 3, (0.25,) * 3


@functools.cache
def digits():
    return load_digits_dataset()["train"].select(range(24))


def pretraining(decoding):
    digits_ = digits()
    if decoding != "pil":
        digits_ = digits_.cast_column("image", Image(decode=False))
    transform = pretrain_image_transform(decoding, "image", 16, MEAN, STD, min_scale=0.2, flip=0.5, num_channels=3)
    collator = collate_encoded if decoding == "gpu" else collate_pixel_values
    return digits_.with_transform(transform), collator, {"noise": MaskNoise(16)}


def finetuning():
    transform = ImageTransform(finetune_transform(16, MEAN, STD), "image", 3, "label")
    return digits().with_transform(transform), MixupCollator(10), {}


@functools.cache
def canvases():
    return load_digits_seg_dataset()["train"].select(range(24))


def segmentation():
    canvases_ = canvases()
    transform = SegmentationBatchTransform(SegmentationTrainTransform(32, scale=(128, 32), mean=MEAN, std=STD))
    return canvases_.with_transform(transform), collate_segmentation, {}


PIPELINES = {
    "pretraining fast": lambda: pretraining("fast"),
    "pretraining pil": lambda: pretraining("pil"),
    "pretraining gpu (worker half)": lambda: pretraining("gpu"),
    "finetuning": finetuning,
    "segmentation": segmentation,
}


def epoch_batches(pipeline, workers: int, epochs=(0, 1)) -> list[dict]:
    dataset, collator, draws = pipeline
    sampler = sample_key_sampler(torch.utils.data.RandomSampler(dataset), dataset, seed=0)
    loader = DataLoader(
        SeededSamples(dataset, 0, draws),
        batch_size=8,
        sampler=sampler,
        num_workers=workers,
        collate_fn=SeededCollator(collator, 0, draws),
    )
    batches = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        batches += list(loader)
    return batches


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def drawn(example_or_batch) -> torch.Tensor:
    """What the random draws decided: the pixels, or the crop box of the gpu pipeline's worker half."""
    value = example_or_batch.get("pixel_values", example_or_batch.get("crops"))
    return torch.as_tensor(value["crop"] if isinstance(value, dict) else value)


@pytest.mark.parametrize("name", PIPELINES)
def test_batches_do_not_depend_on_workers_and_epochs_differ(name):
    pipeline = PIPELINES[name]()
    torch.manual_seed(1)
    single = epoch_batches(pipeline, 0)
    torch.manual_seed(2)  # another global state: nothing changes
    assert_same(single, epoch_batches(pipeline, 2))
    assert not torch.equal(drawn(single[0]), drawn(single[3]))  # epoch 1 draws anew
    if name.startswith("pretraining"):
        assert single[0]["noise"].shape == (8, 16)


@pytest.mark.parametrize("name", PIPELINES)
def test_an_example_is_a_function_of_its_key_alone(name):
    dataset, _collator, draws = PIPELINES[name]()
    samples = SeededSamples(dataset, 7, draws)
    forwards = [samples[(3, i)] for i in range(6)]
    backwards = [samples[(3, i)] for i in reversed(range(6))][::-1]  # another order, as another process would
    assert_same(forwards, backwards)
    assert not torch.equal(drawn(samples[(4, 0)]), drawn(forwards[0]))


def test_seeded_rng_leaves_the_global_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with seeded_rng(1, 2, 3):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    with seeded_rng(1, 2, 3):
        assert torch.equal(torch.rand(3), inside)
    assert len({derive_seed(0, 0, i) for i in range(1000)} | {derive_seed(0, 1, i) for i in range(1000)}) == 2000


def test_sample_key_sampler_keeps_accelerates_order():
    from accelerate.data_loader import SeedableRandomSampler

    data = list(range(10))
    reference = SeedableRandomSampler(data_source=data, data_seed=5)
    keyed = sample_key_sampler(torch.utils.data.RandomSampler(data), data, seed=5)
    assert isinstance(keyed, SampleKeySampler)
    for epoch in (0, 3):
        reference.set_epoch(epoch)
        keyed.set_epoch(epoch)
        assert list(keyed) == [(epoch, index) for index in reference]
