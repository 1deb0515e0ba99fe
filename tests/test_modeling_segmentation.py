"""MAEForSemanticSegmentation: backbone maps, neck scales, loss weighting, loading, sliding-window inference."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from transformers import AutoModelForSemanticSegmentation

from mae_hf import MAEConfig, MAEForPreTraining, MAEForSemanticSegmentation, MAESegmentationConfig
from mae_hf.configuration_mae import segmentation_config
from mae_hf.modeling_segmentation import slide_inference, window_starts
from mae_hf.pos_embed import resample_pos_embed


def seg_config(**overrides) -> MAESegmentationConfig:
    fields = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        out_indices=(0, 1, 2, 3),
        decode_channels=16,
        auxiliary_channels=8,
        num_labels=5,
        drop_path_rate=0.0,
    )
    fields.update(overrides)
    return MAESegmentationConfig(**fields)


def test_backbone_maps_are_the_hidden_states_at_out_indices_permuted():
    config = seg_config(image_size=(16, 32), out_indices=(1, 3, 0, 2), neck_rescales=(1.0, 1.0, 1.0, 1.0))
    model = MAEForSemanticSegmentation(config).eval()
    pixels = torch.randn(2, 3, 16, 32)  # 2x4 patches, all different
    maps, _ = model.features(pixels)
    hidden = model.vit(pixels, output_hidden_states=True).hidden_states
    for level, index in enumerate(config.out_indices):
        assert maps[level].shape == (2, 32, 2, 4)
        expected = hidden[index + 1][:, 1:].reshape(2, 2, 4, 32).permute(0, 3, 1, 2)  # (B, N, D) -> (B, D, h, w)
        torch.testing.assert_close(maps[level], expected)


def test_neck_gives_four_scales():
    model = MAEForSemanticSegmentation(seg_config(image_size=64)).eval()
    pixels = torch.randn(1, 3, 64, 64)  # 8x8 patch grid
    shapes = [tuple(m.shape[-2:]) for m in model.features(pixels)[0]]
    assert shapes == [(32, 32), (16, 16), (8, 8), (4, 4)]  # x4, x2, x1, x0.5
    first = model.neck.levels[0]
    assert [type(m).__name__ for m in first] == ["ConvTranspose2d", "BatchNorm2d", "GELU", "ConvTranspose2d"]
    raw = model.vit.get_intermediate_layers(pixels, (3,))[0]
    torch.testing.assert_close(model.neck.levels[3](raw), F.max_pool2d(raw, 2))


def mmseg_cross_entropy(logits, labels, avg_non_ignore=False):
    """mmseg's CrossEntropyLoss: per-pixel losses (0 where ignored), averaged over all pixels unless avg_non_ignore."""
    losses = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    return losses.sum() / (labels != 255).sum() if avg_non_ignore else losses.mean()


@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_loss_is_main_plus_weighted_auxiliary_and_ignores_255(avg_non_ignore):
    model = MAEForSemanticSegmentation(seg_config(auxiliary_loss_weight=0.4, avg_non_ignore=avg_non_ignore)).train()
    pixels, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    labels[:, :8] = 255
    torch.manual_seed(0)
    out = model(pixels, labels=labels)
    torch.manual_seed(0)  # the same dropout masks
    logits, auxiliary, _ = model.segment(pixels)
    main = mmseg_cross_entropy(logits, labels, avg_non_ignore)
    aux = mmseg_cross_entropy(auxiliary, labels, avg_non_ignore)
    torch.testing.assert_close(out.loss, main + 0.4 * aux)
    assert out.logits.shape == (2, 5, 32, 32)
    without = MAEForSemanticSegmentation(seg_config(use_auxiliary_head=False, avg_non_ignore=avg_non_ignore)).train()
    assert without.auxiliary_head is None
    logits, auxiliary, _ = without.segment(pixels)
    assert auxiliary is None
    torch.testing.assert_close(without.loss(logits, None, labels), mmseg_cross_entropy(logits, labels, avg_non_ignore))
    model.eval()
    assert model.segment(pixels)[1] is None  # no auxiliary work at inference


def test_classifiers_drop_out_like_mmseg_and_keep_transformers_keys():
    model = MAEForSemanticSegmentation(seg_config())
    for head in (model.decode_head, model.auxiliary_head):
        assert isinstance(head.classifier.dropout, torch.nn.Dropout2d) and head.classifier.dropout.p == 0.1
        assert head.classifier.bias.abs().max() == 0 and 0.005 < head.classifier.weight.std() < 0.015  # N(0, 0.01)
    kaiming = MAEForSemanticSegmentation(seg_config(classifier_init_std=0.0)).decode_head.classifier.weight
    assert 0.45 < kaiming.std() < 0.8  # kaiming-normal, fan-out of a 1x1 conv to 5 classes: sqrt(2 / 5) = 0.63
    keys = set(model.state_dict())
    assert {"decode_head.classifier.weight", "decode_head.classifier.bias", "auxiliary_head.classifier.weight"} <= keys
    features = torch.randn(2, 16, 4, 4)
    classifier = model.decode_head.classifier
    expected = F.conv2d(features, classifier.weight, classifier.bias)
    torch.testing.assert_close(classifier.eval()(features), expected)  # no dropout at inference
    torch.manual_seed(0)
    kept = (F.dropout2d(torch.ones(2, 16, 1, 1), 0.1) > 0).float()
    torch.manual_seed(0)
    dropped = classifier.train()(features)  # whole channels dropped, the rest scaled by 1 / 0.9
    torch.testing.assert_close(dropped, F.conv2d(features * kept / 0.9, classifier.weight, classifier.bias))
    assert MAEForSemanticSegmentation(seg_config(classifier_dropout_prob=0.0)).decode_head.classifier.dropout.p == 0
    with pytest.raises(ValueError, match="classifier_dropout_prob"):
        seg_config(classifier_dropout_prob=1.0)


def test_every_parameter_trains():
    model = MAEForSemanticSegmentation(seg_config()).train()
    model(torch.randn(2, 3, 32, 32), labels=torch.randint(0, 5, (2, 32, 32))).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_mae_checkpoint_loads_into_the_segmenter_with_resampled_tables(tmp_path):
    pretrained = MAEForPreTraining(
        tiny_config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
    )
    pretrained.save_pretrained(tmp_path / "mae")
    config = segmentation_config(
        MAEConfig.from_pretrained(tmp_path / "mae"),
        image_size=64,
        out_indices=(0, 1, 2, 3),
        decode_channels=16,
        auxiliary_channels=8,
        num_labels=5,
    )
    assert (config.hidden_size, config.patch_size, config.model_type) == (32, 8, "mae_upernet")
    model, info = MAEForSemanticSegmentation.from_pretrained(tmp_path / "mae", config=config, output_loading_info=True)
    assert {k.split(".")[0] for k in info["missing_keys"]} == {"neck", "decode_head", "auxiliary_head"}
    assert all(k.startswith(("decoder.", "vit.norm.")) for k in info["unexpected_keys"])
    torch.testing.assert_close(model.vit.pos_embed, resample_pos_embed(pretrained.vit.pos_embed, (4, 4), (8, 8)))
    torch.testing.assert_close(model.vit.blocks[2].attn.qkv.weight, pretrained.vit.blocks[2].attn.qkv.weight)


def test_save_load_through_auto_class(tmp_path):
    model = MAEForSemanticSegmentation(seg_config()).eval()
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSemanticSegmentation"] == "modeling_segmentation.MAEForSemanticSegmentation"
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    pixels = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(pixels).logits, model(pixels).logits)


@pytest.mark.parametrize(
    "length, crop, stride, expected",
    [(512, 512, 341, [0]), (683, 512, 341, [0, 171]), (1024, 512, 341, [0, 341, 512]), (100, 512, 341, [0])],
)
def test_window_grid_matches_mmsegmentation(length, crop, stride, expected):
    assert window_starts(length, crop, stride) == expected


def test_slide_inference_averages_windows():
    model = MAEForSemanticSegmentation(seg_config(test_crop_size=32, test_stride=16)).eval()
    pixels = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        slid = slide_inference(model, pixels)
        pieces = [model.segment(pixels[..., left : left + 32])[0] for left in (0, 16, 32)]
    expected = torch.zeros(1, 5, 32, 64)
    count = torch.zeros(1, 1, 32, 64)
    for left, logits in zip((0, 16, 32), pieces):
        expected[..., left : left + 32] += logits
        count[..., left : left + 32] += 1
    torch.testing.assert_close(slid, expected / count)
    model.config.inference_mode = "slide"
    torch.testing.assert_close(model(pixels).logits, slid)
    whole = MAEForSemanticSegmentation(seg_config(test_crop_size=32, test_stride=16)).eval()
    whole.load_state_dict(model.state_dict())
    square = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(slide_inference(model, square), whole(square).logits)  # one window = whole image


def test_segmentation_config_errors():
    with pytest.raises(ValueError, match="out_indices .* and neck_rescales .* differ in length"):
        seg_config(out_indices=(0, 1, 2))
    with pytest.raises(ValueError, match=r"out_indices \[7\] are not blocks of a 4-block encoder"):
        seg_config(out_indices=(0, 1, 2, 7))
    with pytest.raises(ValueError, match="inference_mode"):
        seg_config(inference_mode="tiles")


def test_sizes_that_are_not_multiples_of_the_patch_are_padded_and_cropped_back():
    model = MAEForSemanticSegmentation(seg_config()).eval()
    pixels = torch.randn(1, 3, 30, 37)
    logits = model(pixels).logits
    assert logits.shape == (1, 5, 30, 37)
    padded = F.pad(pixels, (0, 3, 0, 2))
    torch.testing.assert_close(logits, model.segment(padded)[0][..., :30, :37])
