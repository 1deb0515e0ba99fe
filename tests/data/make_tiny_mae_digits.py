#!/usr/bin/env python
"""Makes tests/data/tiny_mae_digits: the encoder of a tiny MAE (8x8 px, 2x2 patches, 64 wide x 2 deep) pretrained
by run_pretraining.py on the digits' 1,500 training images (labels unused), for tests that need a pretrained
encoder in seconds (test_monitor.py). About 10 minutes on 2 CPU cores.

    python tests/data/make_tiny_mae_digits.py
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import run_pretraining  # noqa: E402
from mae_hf import MAEForPreTraining  # noqa: E402

ARGS = [
    "--dataset_name",
    "digits",
    "--image_size",
    "8",
    "--patch_size",
    "2",
    "--num_channels",
    "1",
    "--hidden_size",
    "64",
    "--num_hidden_layers",
    "2",
    "--num_attention_heads",
    "4",
    "--intermediate_size",
    "256",
    "--decoder_hidden_size",
    "32",
    "--decoder_num_hidden_layers",
    "1",
    "--decoder_num_attention_heads",
    "4",
    "--decoder_intermediate_size",
    "64",
    "--norm_pix_loss",
    "false",
    "--crop_min_scale",
    "0.6",
    "--flip_probability",
    "0",
    "--per_device_train_batch_size",
    "128",
    "--base_learning_rate",
    "4e-3",
    "--max_steps",
    "2000",
    "--warmup_steps",
    "100",
    "--do_eval",
    "false",
    "--eval_strategy",
    "no",
    "--save_strategy",
    "no",
    "--logging_steps",
    "200",
    "--dataloader_num_workers",
    "0",
    "--report_to",
    "none",
    "--seed",
    "0",
]


def main(target: Path = Path(__file__).parent / "tiny_mae_digits") -> None:
    with tempfile.TemporaryDirectory() as folder:
        run_pretraining.main([*ARGS, "--output_dir", folder])
        encoder = MAEForPreTraining.from_pretrained(folder).vit
        shutil.rmtree(target, ignore_errors=True)
        encoder.save_pretrained(target)
    for path in target.iterdir():  # the model code copied for remote loading is not needed here
        if path.suffix == ".py":
            path.unlink()
    config = json.loads((target / "config.json").read_text())
    config.pop("auto_map")
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
