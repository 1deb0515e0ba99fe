"""Data work done once, not once per process (`mae_hf.data.once`), in two real gloo processes (one spawn for all
the checks): each process checks half of the images and both get the whole answer; the node's main process runs a
block first (the others then find what it cached), and an error there reaches the others instead of a hang."""

import pytest
import torch.distributed as dist
from conftest import spawn
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image


def _checks(rank, world, folder):
    """verify_images (each process counts the images it decodes), then main_process_first_on_node."""
    from mae_hf.data import images

    calls = []
    decodes = images._decodes
    images._decodes = lambda value: calls.append(value["path"]) or decodes(value)
    dataset = Dataset.from_dict({"image": sorted(str(p) for p in folder.glob("*.png"))}).cast_column(
        "image", ImageFeature()
    )
    kept, skipped = images.verify_images(dataset, "image", skip_corrupt=True)
    everyone = [None] * world
    dist.all_gather_object(everyone, {"verified": (len(kept), skipped), "decoded": calls, **_first(rank, folder)})
    return everyone


def _first(rank, folder) -> dict:
    from mae_hf.data.once import main_process_first_on_node

    with main_process_first_on_node():
        seen = sorted(p.name for p in folder.glob("ran-*"))
        (folder / f"ran-{rank}").write_text("")
    try:
        with main_process_first_on_node():
            raise ValueError(f"bad data on {rank}")
    except ValueError as error:
        failed = str(error)
    return {"seen": seen, "failed": failed}


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("once")
    for i in range(9):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.png")
    (folder / "9.png").write_bytes(b"not an image")
    return spawn(_checks, folder)


def test_images_are_checked_once_across_processes(processes):
    assert [p["verified"] for p in processes] == [[9, 1], [9, 1]]  # both get the whole answer
    decoded = [p["decoded"] for p in processes]
    assert [len(d) for d in decoded] == [5, 5] and len(set(decoded[0] + decoded[1])) == 10


def test_the_main_process_of_the_node_goes_first(processes):
    assert [(p["seen"], p["failed"]) for p in processes] == [([], "bad data on 0"), (["ran-0"], "bad data on 1")]
