"""Every shipped config file parses with its script's arguments (a typo or a removed flag fails here)."""

from pathlib import Path

import pytest

import run_image_classification
import run_pretraining
import run_semantic_segmentation
from mae_hf.run_utils import parse_arguments

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PRETRAIN, CLASSIFY, SEGMENT = (
    s.ARGUMENTS for s in (run_pretraining, run_image_classification, run_semantic_segmentation)
)
SCRIPTS = {"pretrain": PRETRAIN, "segment": SEGMENT, "finetune": CLASSIFY, "linprobe": CLASSIFY}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_parses(path, tmp_path):
    kinds = SCRIPTS[path.name.split("_")[0]]
    model_args, data_args, training_args, *monitor_args = parse_arguments(
        kinds, [str(path), "--output_dir", str(tmp_path), "--bf16", "false"]
    )
    assert training_args.output_dir == str(tmp_path)
    if path.name == "linprobe_vit_base.yaml":
        assert training_args.linear_probe and training_args.base_learning_rate == 0.1
        assert model_args.pooling == "cls" and training_args.mixup_alpha == 0 and training_args.layer_decay == 1.0
    if path.name == "finetune_vit_base.yaml":
        assert (training_args.layer_decay, training_args.base_learning_rate, model_args.drop_path_rate) == (
            0.65,
            5e-4,
            0.1,
        )
        assert data_args.crop_min_scale == 0.08 and training_args.lr_scheduler_kwargs == {"min_lr": 1e-6}
    if path.name == "segment_ade20k_vit_base.yaml":
        assert (model_args.out_indices, model_args.neck_rescales, model_args.decode_channels) == (
            [3, 5, 7, 11],
            [4.0, 2.0, 1.0, 0.5],
            768,
        )
        assert (training_args.learning_rate, training_args.layer_decay, training_args.warmup_steps) == (
            1e-4,
            0.65,
            1500,
        )
        assert (data_args.crop_size, data_args.reduce_labels, model_args.test_stride) == (512, True, 341)
    if path.name == "pretrain_digits_demo.yaml":  # the demo measures k-NN accuracy from step 0
        assert monitor_args[0].monitor_dataset == "digits" and training_args.eval_on_start
    if path.name == "pretrain_vit_base.yaml":
        assert (training_args.base_learning_rate, training_args.adam_beta2, model_args.norm_pix_loss) == (
            1.5e-4,
            0.95,
            True,
        )


@pytest.mark.parametrize("kinds", [PRETRAIN, CLASSIFY, SEGMENT], ids=["pretrain", "classify", "segment"])
def test_defaults_report_nowhere(kinds, tmp_path):
    """Without --report_to nothing is reported (a bad override of the field once turned the default into [None],
    which TrainingArguments rejects)."""
    training_args = parse_arguments(kinds, ["--output_dir", str(tmp_path)])[2]
    assert training_args.report_to in ([], "none", ["none"])
