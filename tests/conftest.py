import json
import os
import socket
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from PIL import Image  # noqa: E402

from mae_hf import MAEConfig  # noqa: E402
from mae_hf.process_exit import run_main  # noqa: E402


def tiny_config(**overrides) -> MAEConfig:
    """A 32 px, patch-8 ViT (16 patches) with a 1-block decoder: every model test runs in well under a second."""
    fields = dict(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=64,
    )
    fields.update(overrides)
    return MAEConfig(**fields)


@pytest.fixture
def config() -> MAEConfig:
    return tiny_config()


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection (Hub, requests, httpx all go through sockets) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def write_ade_folder(root, count=3, shape=(10, 12), labels=None, sizes=None):
    """An ADE20K-layout folder of random JPEG/PNG pairs (labels 0..150); labels[split][i] / sizes[split][i]
    override one annotation's values / saved size (split: "training" or "validation")."""
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            name = f"ADE_{split}_{i:08d}"
            Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(
                root / "images" / split / f"{name}.jpg"
            )
            annotation = (labels or {}).get(split, {}).get(i, rng.integers(0, 151, shape, dtype=np.uint8))
            image = Image.fromarray(annotation, mode="L")
            size = (sizes or {}).get(split, {}).get(i)
            (image.resize(size, Image.NEAREST) if size else image).save(root / "annotations" / split / f"{name}.png")
    return root


def spawn(function, tmp_path, world: int = 2):
    """Runs function(rank, world, tmp_path) in `world` gloo processes; returns what rank 0 wrote to result.json."""
    mp.spawn(_worker, args=(function, world, str(tmp_path)), nprocs=world, join=True)
    return json.loads((tmp_path / "result.json").read_text())


def _worker(rank, function, world, folder):
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # cpu_engines, conftest
    os.environ.update(DS_ACCELERATOR="cpu", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    run_main(_keep_result, function, rank, world, folder)  # ends the process as the scripts end theirs


def _keep_result(function, rank, world, folder):
    result = function(rank, world, Path(folder))
    if rank == 0:
        (Path(folder) / "result.json").write_text(json.dumps(result))
