"""Loading a checkpoint into a model made for another patch grid: every position table (encoder, MAE decoder,
classifier, segmenter) is resampled from the grid it was saved for, decided from the grids and not from the token
count, through from_pretrained and through the scripts' --image_size. And a bare encoder loads a classifier's
encoder without reporting a final norm it never had."""

import logging

import pytest
import torch
from conftest import tiny_config
from helpers import QUIET, TINY_DECODER, TINY_SEGMENTATION_HEADS, flags, tiny_encoder
from test_modeling_segmentation import seg_config
from transformers import AutoModel

import run_image_classification
import run_pretraining
import run_semantic_segmentation
from mae_hf import MAEForImageClassification, MAEForPreTraining, MAEForSemanticSegmentation, MAEModel
from mae_hf.pos_embed import resample_pos_embed


@pytest.fixture
def mae_log(caplog):
    """Records what the mae_hf loggers say (transformers' logging does not propagate to the root logger)."""
    logger = logging.getLogger("mae_hf")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.INFO)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield caplog
    logger.setLevel(previous)
    logger.removeHandler(caplog.handler)


def learned_looking(model):
    """Random tables: resampling them, not recomputing the sin-cos formula, is what must happen."""
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("pos_embed"):
                buffer.normal_()
    return model


TABLES = {
    MAEModel: ["pos_embed"],
    MAEForPreTraining: ["vit.pos_embed", "decoder.pos_embed"],
    MAEForImageClassification: ["vit.pos_embed"],
    MAEForSemanticSegmentation: ["vit.pos_embed"],
}


def config_for(model_class, **overrides):
    if model_class is MAEForSemanticSegmentation:
        return seg_config(**overrides)
    return (
        tiny_config(num_labels=3, **overrides) if model_class is MAEForImageClassification else tiny_config(**overrides)
    )


@pytest.mark.parametrize("model_class", list(TABLES))
def test_transposed_grid_with_the_same_token_count_is_resampled(tmp_path, mae_log, model_class):
    """(32, 48) = 4x6 patches saved, (48, 32) = 6x4 asked: 24 tokens both, but every cell moves."""
    saved = learned_looking(model_class(config_for(model_class, image_size=(32, 48))))
    saved.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path, image_size=(48, 32))
    for name in TABLES[model_class]:
        expected = resample_pos_embed(saved.get_buffer(name), (4, 6), (6, 4))
        torch.testing.assert_close(loaded.get_buffer(name), expected, rtol=0, atol=0)
        assert not torch.equal(loaded.get_buffer(name), saved.get_buffer(name))
        assert f"Resampled {name} from a 4x6 to a 6x4 patch grid (bicubic)" in mae_log.text
    loaded.eval()(torch.randn(1, 3, 48, 32))  # the model runs at its own size with no flag


def test_same_grid_loads_verbatim_and_quietly(tmp_path, mae_log):
    saved = learned_looking(MAEForPreTraining(tiny_config(image_size=(32, 48))))
    saved.save_pretrained(tmp_path)
    loaded = MAEForPreTraining.from_pretrained(tmp_path)
    for name in TABLES[MAEForPreTraining]:
        assert torch.equal(loaded.get_buffer(name), saved.get_buffer(name))
    assert "Resampled" not in mae_log.text


def test_grid_of_a_table_comes_from_the_saved_config():
    from mae_hf.weight_loading import table_grid

    assert table_grid("pos_embed", 24, (4, 6), (6, 4)) == (4, 6)  # the saved grid wins, whatever the count
    assert table_grid("pos_embed", 16, None, (2, 8)) == (2, 8)  # no record and the same count: taken as is
    assert table_grid("pos_embed", 16, (3, 3), (6, 6)) == (4, 4)  # a record that does not fit: square grid
    with pytest.raises(ValueError, match="cannot tell the patch grid of pos_embed with 24 patch rows"):
        table_grid("pos_embed", 24, None, (4, 4))


SCRIPT_TINY = [
    *flags(image_size=32),
    *tiny_encoder(patch_size=8, layers=4),
    *flags(max_steps=1, do_eval="false", per_device_train_batch_size=4),
    *QUIET,
    *flags(save_strategy="no", max_train_samples=8, logging_steps=1),
]
SCRIPTS = {
    "pretraining": (
        run_pretraining,
        MAEForPreTraining,
        [*flags(dataset_name="digits", warmup_epochs=0), *TINY_DECODER],
    ),
    "classification": (
        run_image_classification,
        MAEForImageClassification,
        ["--dataset_name", "digits", "--warmup_epochs", "0"],
    ),
    "segmentation": (
        run_semantic_segmentation,
        MAEForSemanticSegmentation,
        [
            *flags(dataset_name="digits_seg"),
            *TINY_SEGMENTATION_HEADS,
            *flags(warmup_steps=0, num_visualized_images=1),
        ],
    ),
}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_scripts_image_size_resamples_by_grid(tmp_path, mae_log, script):
    """A (16, 64) checkpoint, patch 8: 2x8 = 16 patches; --image_size 32 is 4x4 = 16 patches too."""
    module, model_class, extra = SCRIPTS[script]
    checkpoint = learned_looking(
        MAEForPreTraining(
            tiny_config(
                image_size=(16, 64),
                hidden_size=32,
                num_hidden_layers=4,
                num_attention_heads=2,
                intermediate_size=64,
                decoder_hidden_size=16,
                decoder_num_attention_heads=2,
                decoder_intermediate_size=32,
            )
        )
    )
    checkpoint.save_pretrained(tmp_path / "mae")
    module.main(
        ["--model_name_or_path", str(tmp_path / "mae"), "--output_dir", str(tmp_path / "out"), *SCRIPT_TINY, *extra]
    )
    trained = model_class.from_pretrained(tmp_path / "out")
    for name in TABLES[model_class]:  # buffers: the training step leaves them as loaded
        expected = resample_pos_embed(checkpoint.get_buffer(name), (2, 8), (4, 4))
        torch.testing.assert_close(trained.get_buffer(name), expected, rtol=0, atol=0)
        assert f"Resampled {name} from a 2x8 to a 4x4 patch grid" in mae_log.text


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifier_folder_as_a_bare_encoder(tmp_path, caplog, pooling):
    """AutoModel on a classifier folder: its encoder as it ran in the classifier, nothing newly initialised."""
    classifier = MAEForImageClassification(tiny_config(num_labels=3, pooling=pooling)).eval()
    classifier.save_pretrained(tmp_path)
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(caplog.handler)
    try:
        encoder, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    finally:
        transformers_logger.removeHandler(caplog.handler)
    assert type(encoder) is MAEModel and not info["missing_keys"]
    assert "MISSING" not in caplog.text and "newly initialized" not in caplog.text
    assert {key.split(".")[0] for key in info["unexpected_keys"]} == (
        {"fc_norm", "head"} if pooling == "mean" else {"head"}
    )
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(encoder.eval()(pixels).last_hidden_state, classifier.vit(pixels).last_hidden_state)
    encoder.save_pretrained(tmp_path / "again")  # and the bare encoder round-trips as it is
    assert not AutoModel.from_pretrained(tmp_path / "again", output_loading_info=True)[1]["missing_keys"]


@pytest.mark.parametrize("how", ["num_labels", "config"])  # config=: what run_semantic_segmentation.py passes
def test_segmenter_to_other_classes_reinitialises_only_its_classifiers(tmp_path, how):
    """As transformers' UperNetForSemanticSegmentation: with ignore_mismatched_sizes the decode and auxiliary
    classifiers of another class count are new, every other tensor is loaded."""
    saved = learned_looking(MAEForSemanticSegmentation(seg_config(num_labels=5)))
    saved.save_pretrained(tmp_path)
    kwargs = {"num_labels": 3} if how == "num_labels" else {"config": seg_config(num_labels=3)}
    loaded, info = MAEForSemanticSegmentation.from_pretrained(
        tmp_path, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
    )
    classifiers = {f"{head}.classifier.{p}" for head in ("decode_head", "auxiliary_head") for p in ("weight", "bias")}
    assert {key for key, *_ in info["mismatched_keys"]} == classifiers
    assert loaded.decode_head.classifier.out_channels == loaded.auxiliary_head.classifier.out_channels == 3
    for key, tensor in saved.state_dict().items():
        if key not in classifiers:
            assert torch.equal(loaded.state_dict()[key], tensor), key


@pytest.mark.parametrize("model_class", [MAEForImageClassification, MAEForSemanticSegmentation])
def test_bare_encoder_into_a_task_model_reports_only_the_new_parts(tmp_path, caplog, model_class):
    """A bare encoder folder (official mae_pretrain_vit_*.pth or timm *.mae, converted) brings a final norm that
    mean pooling and the segmenter do not use: silently ignored, as the pretraining checkpoint's `vit.norm`."""
    config = config_for(model_class)
    MAEModel(
        config_for(
            MAEModel,
            **{
                k: getattr(config, k)
                for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
            },
        )
    ).save_pretrained(tmp_path)
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(caplog.handler)
    try:
        _, info = model_class.from_pretrained(tmp_path, config=config, output_loading_info=True)
    finally:
        transformers_logger.removeHandler(caplog.handler)
    assert not info["unexpected_keys"] and "UNEXPECTED" not in caplog.text
    new = {"fc_norm", "head"} if model_class is MAEForImageClassification else {"neck", "decode_head", "auxiliary_head"}
    assert {key.split(".")[0] for key in info["missing_keys"]} == new
