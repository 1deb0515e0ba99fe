"""Data work done once, not once per process. With N processes on a node (one per GPU), each loading the data set
and decoding every image to check it would do the same work N times over, on the same CPUs:

- loading (`datasets` writes its cache: Arrow files, split indices) runs on one process per node while the others
  wait, then read that cache (`main_process_first_on_node`);
- per-image checks are split: each process checks its share of the rows and all of them get every row's result
  (`map_split`), so the check of ImageNet takes 1/N of the time on N processes instead of the same time N times.

Without torch.distributed (one process) both are plain calls.
"""

import contextlib
import os

import torch.distributed as dist
from datasets import Dataset, concatenate_datasets


def process_share() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def main_process_first_on_node():
    """The block runs first on the node's main process (LOCAL_RANK 0), then on the others (which then find what
    it cached). The main process reaches the barrier even when the block raises, so that the others run it too and
    fail with the same error instead of waiting for the barrier's timeout."""
    rank, world = process_share()
    if world == 1:
        yield
        return
    main = int(os.environ.get("LOCAL_RANK", rank)) == 0
    if not main:
        dist.barrier()
    try:
        yield
    finally:
        if main:
            dist.barrier()


def map_split(dataset: Dataset, function, **map_kwargs) -> Dataset:
    """`dataset.map(function, **map_kwargs)` (a map that removes the input columns and returns small per-row
    results: flags, sizes) with its rows split across the processes: each maps its contiguous share (with
    `num_proc` workers when given) and every process gets all rows' results, in row order. Collective: every
    process must call it."""
    rank, world = process_share()
    if world == 1 or len(dataset) < world:  # (a few rows: each process maps them all)
        return dataset.map(function, **map_kwargs)
    mine = dataset.shard(world, rank, contiguous=True).map(function, **map_kwargs)
    shares = [None] * world
    dist.all_gather_object(shares, mine.to_dict())
    return concatenate_datasets([Dataset.from_dict(share, features=mine.features) for share in shares])
