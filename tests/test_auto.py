"""Auto classes, auto_map and remote-code loading without mae_hf installed."""

import json
import os
import subprocess
import sys

import torch
from conftest import tiny_config
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

from mae_hf import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEModel


def test_auto_classes_resolve_to_mae_hf(tmp_path):
    MAEForPreTraining(tiny_config()).save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MAEConfig)
    assert type(AutoModel.from_pretrained(tmp_path)) is MAEModel
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is MAEForPreTraining
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=3)) is MAEForImageClassification
    assert type(AutoModel.from_config(tiny_config())) is MAEModel


def test_saved_config_maps_every_auto_class(tmp_path):
    MAEModel(tiny_config()).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_mae.MAEConfig",
        "AutoModel": "modeling_mae.MAEModel",
        "AutoModelForPreTraining": "modeling_mae.MAEForPreTraining",
        "AutoModelForImageClassification": "modeling_mae.MAEForImageClassification",
    }
    assert {"configuration_mae.py", "modeling_mae.py", "layers.py", "pos_embed.py"} <= set(os.listdir(tmp_path))


REMOTE_CODE_CHECK = """
import sys
sys.modules["mae_hf"] = None  # as if mae_hf were not installed
import torch
from transformers import AutoModelForImageClassification, AutoModelForPreTraining
path = sys.argv[1]
model = AutoModelForPreTraining.from_pretrained(path, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
pixels, noise = torch.load(sys.argv[2])
print(repr(model(pixels, noise=noise).loss.item()))
classifier = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True, num_labels=4)
print(tuple(classifier(pixels).logits.shape))
"""


def test_remote_code_loads_without_mae_hf(tmp_path):
    model = MAEForPreTraining(tiny_config())
    model.save_pretrained(tmp_path / "model")
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    torch.save((pixels, noise), tmp_path / "inputs.pt")
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_CHECK, str(tmp_path / "model"), str(tmp_path / "inputs.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loss_line, shape_line = result.stdout.strip().splitlines()[-2:]
    assert float(loss_line) == model(pixels, noise=noise).loss.item()
    assert shape_line == "(2, 4)"
