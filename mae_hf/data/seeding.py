"""Per-sample randomness: every random draw of a training example (crop, flip, RandAugment, random erasing, the
segmentation rescale / crop / flip / photometric distortion, the pretraining mask) and of a training batch (mixup /
cutmix) is a function of (seed, epoch, sample index) alone.

Why: transformers' Trainer restores the saved RNG state only after it has drawn the first batch after a resume, and
with dataloader workers each worker has its own stream, so draws taken from a global stream depend on the resume
point, on the number of workers and on which process loads the example. Here the sampler yields `(epoch, index)`
keys instead of indices; the dataset wrapper seeds torch's default CPU generator from the key around each example's
transform (and restores it afterwards, so nothing else sees the change), and the collator wrapper does the same
around the batch transform, keyed by the batch's first example. torchvision's v2 transforms and ours draw from that
generator only (not from Python's `random` or NumPy's global state, which are left alone).
"""

import contextlib
import hashlib
import struct
from collections.abc import Callable

import datasets
import torch
from accelerate.data_loader import SeedableRandomSampler
from torch.utils.data import Dataset, RandomSampler, Sampler

SAMPLE_KEY = "sample_key"  # (epoch, index) of an example, read by SeededCollator
EXAMPLE_STREAM, BATCH_STREAM = 0, 1  # an example's and a batch's draws come from different streams
EVALUATION_EPOCH = -1  # evaluation draws are keyed apart from those of every training epoch


def derive_seed(seed: int, epoch: int, index: int, stream: int = EXAMPLE_STREAM) -> int:
    """A 64-bit seed from the key, mixed by BLAKE2b (nearby keys give unrelated streams; the same on every
    platform; a tenth of the time of NumPy's SeedSequence)."""
    key = struct.pack("<4q", seed, epoch, index, stream)
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


@contextlib.contextmanager
def seeded_rng(seed: int, epoch: int, index: int, stream: int = EXAMPLE_STREAM):
    """Torch's default CPU generator seeded from the key inside the block, restored after it. CUDA generators are
    left alone (the data pipelines run on CPU tensors)."""
    generator = torch.default_generator
    saved = generator.get_state()
    generator.manual_seed(derive_seed(seed, epoch, index, stream))
    try:
        yield
    finally:
        generator.set_state(saved)


class SampleKeySampler(Sampler):
    """Yields `(epoch, index)` for each index of `sampler`; `set_epoch` (called by the Trainer and accelerate at
    each epoch) is passed on. The epoch travels with the index, so it reaches dataloader workers however they were
    started (persistent workers too)."""

    def __init__(self, sampler: Sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def find_sample_key_sampler(loader, depth: int = 6) -> SampleKeySampler | None:
    """The SampleKeySampler inside a (wrapped) training loader: accelerate nests it in a DataLoaderShard's
    BatchSamplerShard (several processes) and, for a resume, a SkipBatchSampler; None when there is none."""
    if isinstance(loader, SampleKeySampler):
        return loader
    if depth == 0 or loader is None:
        return None
    for name in ("batch_sampler", "sampler", "base_dataloader"):
        if (found := find_sample_key_sampler(getattr(loader, name, None), depth - 1)) is not None:
            return found
    return None


def sample_key_sampler(sampler: Sampler | None, dataset, seed: int) -> SampleKeySampler | None:
    """The Trainer's training sampler with `(epoch, index)` keys. A shuffling one becomes accelerate's
    `SeedableRandomSampler` seeded with `seed` (the order accelerate gives by default: a permutation drawn from
    seed + epoch), so the order too depends on nothing but the seed and the epoch."""
    if sampler is None:
        return None
    if isinstance(sampler, RandomSampler) and not isinstance(sampler, SeedableRandomSampler):
        sampler = SeedableRandomSampler(data_source=dataset, data_seed=seed)
    return SampleKeySampler(sampler)


class SeededSamples(Dataset):
    """`dataset[(epoch, index)]`: example `index` with its transform's draws seeded from (seed, epoch, index), plus
    `draws` (name -> function of nothing, e.g. the mask noise) drawn after it from the same stream, and its key
    under `SAMPLE_KEY`.

    A `datasets.Dataset` with a `with_transform` batch transform is read a batch of rows at a time (as `datasets`
    itself would) and the transform applied row by row, each in its own seeded block."""

    def __init__(self, dataset, seed: int, draws: dict[str, Callable[[], torch.Tensor]] | None = None):
        self.dataset, self.seed, self.draws = dataset, seed, dict(draws or {})
        self.rows, self.transform, self.columns = None, None, None
        if isinstance(dataset, datasets.Dataset) and dataset.format["type"] == "custom":
            form = dataset.format
            if not form["output_all_columns"]:
                self.rows, self.transform = dataset.with_format(None), form["format_kwargs"]["transform"]
                self.columns = form["columns"] or dataset.column_names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list[dict]:
        rows = None if self.transform is None else self.rows[[index for _epoch, index in keys]]
        examples = []
        for position, (epoch, index) in enumerate(keys):
            with seeded_rng(self.seed, epoch, index):
                if rows is None:
                    example = dict(self.dataset[index])
                else:  # a batch of one row, as the transform takes it, and its one example
                    batch = self.transform({column: rows[column][position : position + 1] for column in self.columns})
                    example = {column: values[0] for column, values in batch.items()}
                for name, draw in self.draws.items():
                    example[name] = draw()
            example[SAMPLE_KEY] = (epoch, index)
            examples.append(example)
        return examples


class EvaluationSamples(SeededSamples):
    """`dataset[index]` with `draws` (the evaluation masks) seeded from (seed, index) alone: an example is scored
    with the same draws whichever process evaluates it and however many processes there are. (The evaluation
    transforms draw nothing.)"""

    def __getitems__(self, indices: list) -> list[dict]:
        return super().__getitems__([(EVALUATION_EPOCH, index) for index in indices])


def evaluation_draws(seed: int, draws: dict[str, Callable[[], torch.Tensor]]) -> Callable[[dict, int], dict]:
    """For a streamed evaluation split (`datasets.IterableDataset.map(..., with_indices=True)`): the draws of the
    example at position `index` of the stream, as `EvaluationSamples` gives them."""

    def add_draws(example: dict, index: int) -> dict:
        with seeded_rng(seed, EVALUATION_EPOCH, index):
            return {name: draw() for name, draw in draws.items()}

    return add_draws


class SeededCollator:
    """Wraps a collator: the batch's draws (mixup / cutmix) are seeded from (seed, epoch, the first example's index)
    on their own stream; the per-example `draws` are stacked into the batch as they are. Examples without a key
    (a streamed evaluation split, `evaluation_draws`) are collated as they come: evaluation collators draw nothing."""

    def __init__(self, collator: Callable, seed: int, draws=()):
        self.collator, self.seed, self.draws = collator, seed, tuple(draws)

    def __call__(self, examples: list[dict]) -> dict:
        examples = [dict(example) for example in examples]  # the dataset's dicts are left untouched
        key = examples[0].get(SAMPLE_KEY)
        extras = {name: torch.stack([torch.as_tensor(e.pop(name)) for e in examples]) for name in self.draws}
        for example in examples:
            example.pop(SAMPLE_KEY, None)
        with contextlib.nullcontext() if key is None else seeded_rng(self.seed, *key, BATCH_STREAM):
            batch = self.collator(examples)
        batch.update(extras)
        return batch


class MaskNoise:
    """The pretraining mask of one example: (num_patches,) uniform noise; the patches with the smallest noise are
    kept (`MAEForPreTraining(noise=...)`), as the model would draw it itself."""

    def __init__(self, num_patches: int):
        self.num_patches = num_patches

    def __call__(self) -> torch.Tensor:
        return torch.rand(self.num_patches)
