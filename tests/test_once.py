"""Data work done once, not once per process (`mae_hf.data.once`): in two real gloo processes, each checks half of
the images and both get the whole answer; the node's main process loads first and the others find its cache."""

import torch.distributed as dist
from conftest import spawn
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image


def _checks(rank, world, folder):
    """verify_images in 2 processes: each decodes its half, both get the whole answer."""
    from mae_hf.data import images

    calls = []
    decodes = images._decodes
    images._decodes = lambda value: calls.append(value["path"]) or decodes(value)
    dataset = Dataset.from_dict({"image": sorted(str(p) for p in folder.glob("*.png"))}).cast_column(
        "image", ImageFeature()
    )
    kept, skipped = images.verify_images(dataset, "image", skip_corrupt=True)
    seen = [None] * world
    dist.all_gather_object(seen, calls)
    return {"kept": len(kept), "skipped": skipped, "decoded": [len(c) for c in seen], "all": len(set(sum(seen, [])))}


def test_images_are_checked_once_across_processes(tmp_path):
    for i in range(9):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "9.png").write_bytes(b"not an image")
    result = spawn(_checks, tmp_path)
    assert result == {"kept": 9, "skipped": 1, "decoded": [5, 5], "all": 10}


def _first(rank, world, folder):
    """Which process ran the block first; an error in the main process's block reaches the others too (they run
    the block themselves) instead of leaving them at the barrier."""
    from mae_hf.data.once import main_process_first_on_node

    with main_process_first_on_node():
        seen = sorted(p.name for p in folder.glob("ran-*"))
        (folder / f"ran-{rank}").write_text("")
    try:
        with main_process_first_on_node():
            raise ValueError(f"bad data on {rank}")
    except ValueError as error:
        failed = str(error)
    everyone = [None] * world
    dist.all_gather_object(everyone, {"seen": seen, "failed": failed})
    return everyone


def test_the_main_process_of_the_node_goes_first(tmp_path):
    assert spawn(_first, tmp_path) == [
        {"seen": [], "failed": "bad data on 0"},
        {"seen": ["ran-0"], "failed": "bad data on 1"},
    ]
