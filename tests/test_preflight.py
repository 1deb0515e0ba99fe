"""Faults in the folders a run writes and reads, refused in seconds with the folder named, before any data is loaded:
an output folder that cannot be written (read-only, or under one, or under a file), a model of another model_type,
a folder that is no saved model, a checkpoint missing encoder weights. The three scripts (one process and
torchrun), `python -m mae_hf.evaluate_features`, `python -m mae_hf.visualize` and `python -m mae_hf.conversion`."""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from helpers import ROOT, torchrun
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel, ViTMAEConfig

import run_image_classification
import run_pretraining
import run_semantic_segmentation
from mae_hf import (
    MAEForImageClassification,
    MAEForPreTraining,
    MAEForSemanticSegmentation,
    MAEModel,
    MAESegmentationConfig,
    conversion,
    evaluate_features,
)
from mae_hf.preflight import WRITE_PROBE_PREFIX, check_model_folder, check_writable_dir
from mae_hf.run_utils import check_output_dir
from mae_hf.visualize import cli as visualize

# Each script's data loader: a check that comes "before any data work" must fail before it is called.
SCRIPTS = {
    "pretraining": (run_pretraining, "load_image_datasets", "digits"),
    "classification": (run_image_classification, "load_image_datasets", "digits"),
    "segmentation": (run_semantic_segmentation, "load_segmentation_datasets", "digits_seg"),
}
NOBODY = 65534


@pytest.fixture(params=sorted(SCRIPTS))
def script(request, monkeypatch):
    """main(argv) of one script whose data loader fails the test if it is reached."""
    module, loader, dataset = SCRIPTS[request.param]

    def no_data(*args, **kwargs):
        raise AssertionError(f"{request.param}: data loaded before the check")

    monkeypatch.setattr(module, loader, no_data)
    return lambda *argv: module.main(["--dataset_name", dataset, "--report_to", "none", *map(str, argv)])


@contextlib.contextmanager
def read_only_folder():
    """An empty folder this process cannot write into (a read-only mount, another user's folder). chmod does not stop
    root, so as root the block runs with the effective user id of `nobody` (in a world-readable temporary folder)."""
    base = tempfile.mkdtemp()
    os.chmod(base, 0o755)
    folder = os.path.join(base, "read_only")
    os.mkdir(folder)
    os.chmod(folder, 0o555)
    as_root = os.geteuid() == 0
    try:
        if as_root:
            os.seteuid(NOBODY)
        yield folder
    finally:
        if as_root:
            os.seteuid(0)
        os.chmod(folder, 0o755)
        shutil.rmtree(base)


@pytest.fixture
def pretrained(tmp_path):
    model = MAEForPreTraining(tiny_config(image_size=16, patch_size=4, hidden_size=32, num_attention_heads=2))
    model.save_pretrained(tmp_path / "mae")
    return tmp_path / "mae"


def without_weights(folder: Path, prefix: str) -> Path:
    """The checkpoint in `folder` with every weight whose name starts with `prefix` removed (a truncated export)."""
    weights = load_file(folder / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith(prefix)}, folder / "model.safetensors", {"format": "pt"}
    )
    return folder


@pytest.fixture
def bert(tmp_path):
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    BertModel(config).save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


# ---- output folder -----------------------------------------------------------------------------------------------


def test_output_dir_that_cannot_be_written_is_refused_before_any_data(tmp_path, script):
    with read_only_folder() as folder:
        with pytest.raises(ValueError, match=f"--output_dir {folder} is not writable .*PermissionError"):
            script("--output_dir", folder)
        below = os.path.join(folder, "run")
        with pytest.raises(ValueError, match=f"--output_dir {below} cannot be created: {folder} is not writable"):
            script("--output_dir", below)
        assert os.listdir(folder) == []
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    under_file = tmp_path / "notes.txt" / "run"
    with pytest.raises(ValueError, match=f"--output_dir {under_file} cannot be created: .*notes.txt is a file"):
        script("--output_dir", under_file)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # no folder created, no probe left


def test_output_dir_through_a_broken_symbolic_link_is_refused_naming_the_link(tmp_path, script):
    """A link to a folder on scratch space that is gone (purged, or not mounted on this node): the link is named,
    with its target, not called a file; a link to an existing folder is written through."""
    (tmp_path / "outputs").symlink_to(tmp_path / "scratch" / "outputs")
    for out in (tmp_path / "outputs", tmp_path / "outputs" / "run"):
        with pytest.raises(
            ValueError, match=rf"--output_dir {out} cannot be created: .*outputs is a symbolic link to "
        ):
            script("--output_dir", out)
    (tmp_path / "scratch" / "outputs").mkdir(parents=True)
    check_writable_dir(str(tmp_path / "outputs" / "run"))
    assert os.listdir(tmp_path / "scratch" / "outputs") == []


def test_two_processes_refuse_an_output_dir_they_cannot_create(tmp_path):
    """Under torchrun every process checks (each writes its RNG state into checkpoints) and stops in seconds."""
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / "notes.txt" / "run"
    argv = ["--output_dir", str(out), "--dataset_name", "digits", "--use_cpu", "--report_to", "none"]
    done = torchrun(ROOT / "run_image_classification.py", argv)
    assert done.returncode != 0
    assert done.stderr.count(f"ValueError: --output_dir {out} cannot be created") == 2, done.stderr[-3000:]


def test_probe_files_of_other_processes_do_not_make_the_output_dir_non_empty(tmp_path):
    from transformers import TrainingArguments

    (tmp_path / f"{WRITE_PROBE_PREFIX}abc123").write_text("another process's probe, written between two lines")
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    args.resume_from_checkpoint = None
    check_output_dir(args)
    check_writable_dir(str(tmp_path / "new" / "deeper"))
    assert sorted(os.listdir(tmp_path)) == [f"{WRITE_PROBE_PREFIX}abc123"]  # nothing created, own probe removed


# ---- the model to start from -------------------------------------------------------------------------------------


def test_model_of_another_type_is_refused_before_any_data(tmp_path, script, bert):
    with pytest.raises(ValueError, match=f"{bert} holds a model of type 'bert' .*mae_vit or mae_upernet.*mae_hf.conv"):
        script("--output_dir", tmp_path / "out", "--model_name_or_path", bert)
    vit_mae = tmp_path / "vit-mae"
    ViTMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(vit_mae)
    with pytest.raises(ValueError, match=f"type 'vit_mae' .*convert it with `python -m mae_hf.conversion {vit_mae} "):
        script("--output_dir", tmp_path / "out", "--model_name_or_path", vit_mae)
    official = tmp_path / "official"  # a folder holding a checkpoint file, not a saved model
    official.mkdir()
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 8)}}, official / "mae_pretrain_vit_base.pth")
    with pytest.raises(
        ValueError,
        match=f"{official} has no config.json, so it is not a saved model .*mae_pretrain_vit_base.pth.*python -m mae_hf.conversion",
    ):
        script("--output_dir", tmp_path / "out", "--model_name_or_path", official)
    assert not (tmp_path / "out").exists()


def test_checkpoint_missing_encoder_weights_is_refused_before_any_data(tmp_path, script, pretrained):
    without_weights(pretrained, "vit.blocks.1.")
    with pytest.raises(
        ValueError,
        match=rf"{pretrained} lacks 12 weight\(s\) of the encoder, which would start at random: "
        r"vit\.blocks\.1\.norm1\.weight, vit\.blocks\.1\.norm1\.bias, .* and 7 more",
    ):
        script("--output_dir", tmp_path / "out", "--model_name_or_path", pretrained)
    (pretrained / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=f"{pretrained} has a config.json but no weights"):
        script("--output_dir", tmp_path / "out", "--model_name_or_path", pretrained)


def test_hub_models_are_checked_as_local_folders(tmp_path, monkeypatch, script, pretrained, bert):
    """A Hub id is read through the Hub cache as from_pretrained reads it (offline here: a cache made by hand)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    for repo, folder in (("someone/mae", without_weights(pretrained, "vit.patch_embed.")), ("someone/bert", bert)):
        cached = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
        shutil.copytree(folder, cached / "snapshots" / revision)
        (cached / "refs").mkdir()
        (cached / "refs" / "main").write_text(revision)
    with pytest.raises(
        ValueError, match=r"someone/mae lacks 2 weight\(s\) of the encoder.*vit\.patch_embed\.proj\.weight"
    ):
        script("--output_dir", tmp_path / "out", "--model_name_or_path", "someone/mae")
    with pytest.raises(ValueError, match="someone/bert holds a model of type 'bert'"):
        script("--output_dir", tmp_path / "out", "--model_name_or_path", "someone/bert")


def test_only_new_task_layers_may_be_missing(tmp_path, pretrained):
    """A pretraining checkpoint has every encoder weight; an encoder alone lacks the decoder (new when pretraining
    goes on from it); a mean-pooled classifier lacks the final norm (LayerNorm's ones / zeros when a model needs
    one). A deeper model than the checkpoint lacks whole blocks; a figure needs the decoder."""
    check_model_folder(str(pretrained))
    check_model_folder(str(pretrained), model_class=MAEForPreTraining)
    encoder = tmp_path / "encoder"
    MAEModel.from_pretrained(pretrained).save_pretrained(encoder)
    check_model_folder(str(encoder))
    classifier = tmp_path / "classifier"
    MAEForImageClassification.from_pretrained(pretrained, num_labels=3).save_pretrained(classifier)
    check_model_folder(str(classifier))
    with pytest.raises(ValueError, match=r"lacks 12 weight\(s\) of the encoder.*vit\.blocks\.2\.norm1\.weight"):
        check_model_folder(str(pretrained), {"num_hidden_layers": 3})
    with pytest.raises(
        ValueError,
        match=r"MODEL_DIR .*classifier lacks \d+ weight\(s\) of the encoder and decoder.*"
        r"decoder\.mask_token",
    ):
        check_model_folder(str(classifier), flag="MODEL_DIR", model_class=MAEForPreTraining)


# ---- the command-line tools --------------------------------------------------------------------------------------


@pytest.fixture
def no_scoring(monkeypatch):
    def not_reached(*args, **kwargs):
        raise AssertionError("images read before the check")

    monkeypatch.setattr(evaluate_features.FeatureMonitor, "from_arguments", not_reached)


def test_evaluate_features_refuses_missing_encoder_weights_before_reading_images(pretrained, bert, no_scoring):
    without_weights(pretrained, "vit.blocks.0.attn.")
    with pytest.raises(ValueError, match=rf"MODEL_DIR {pretrained} lacks 4 weight\(s\) of the encoder"):
        evaluate_features.main([str(pretrained), "--dataset", "digits"])
    with pytest.raises(ValueError, match=f"MODEL_DIR {bert} holds a model of type 'bert'"):
        evaluate_features.main([str(bert), "--dataset", "digits"])


def test_evaluate_features_refuses_an_output_it_cannot_write_before_scoring(tmp_path, pretrained, no_scoring):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    output = tmp_path / "notes.txt" / "sub" / "metrics.json"
    with pytest.raises(ValueError, match="--output's folder .*notes.txt/sub cannot be created: .*notes.txt is a file"):
        evaluate_features.main([str(pretrained), "--dataset", "digits", "--output", str(output)])


def test_visualize_writes_its_output_folder_or_refuses_it_before_loading_the_model(tmp_path, monkeypatch, pretrained):
    """--output in a folder that does not exist yet is created (as evaluate_features' --output); one that cannot be
    created is refused naming it, before the model is loaded (it was a FileNotFoundError after the figure)."""
    image = tmp_path / "digit.png"
    Image.new("RGB", (16, 16)).save(image)
    output = tmp_path / "figures" / "run1" / "reconstruction.png"
    assert visualize.main([str(pretrained), str(image), "--output", str(output)]) == str(output)
    assert output.is_file()
    (tmp_path / "notes.txt").write_text("a file, not a folder")

    def not_reached(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(MAEForPreTraining, "from_pretrained", not_reached)
    with pytest.raises(ValueError, match="--output's folder .*notes.txt/sub cannot be created: .*notes.txt is a file"):
        visualize.main([str(pretrained), str(image), "--output", str(tmp_path / "notes.txt" / "sub" / "figure.png")])


def test_visualize_refuses_a_model_without_decoder(tmp_path, pretrained):
    classifier = tmp_path / "classifier"
    MAEForImageClassification.from_pretrained(pretrained, num_labels=3).save_pretrained(classifier)
    image = tmp_path / "digit.png"
    Image.new("RGB", (16, 16)).save(image)
    with pytest.raises(ValueError, match=rf"MODEL_DIR {classifier} lacks \d+ weight\(s\) of the encoder and decoder"):
        visualize.main([str(classifier), str(image)])
    assert not (classifier / visualize.CLI_FIGURE).exists()


def test_conversion_refuses_an_output_folder_it_cannot_write_before_reading_the_checkpoint(monkeypatch):
    def not_reached(*args, **kwargs):
        raise AssertionError("checkpoint read before the check")

    monkeypatch.setattr(conversion, "load_source", not_reached)
    with read_only_folder() as folder:
        with pytest.raises(ValueError, match=f"output folder {folder}/out cannot be created: {folder} is not writable"):
            conversion.convert("mae_pretrain_vit_base.pth", os.path.join(folder, "out"))


def test_evaluation_alone_needs_every_weight_of_the_model(tmp_path, script, pretrained):
    """Evaluation alone trains nothing: a checkpoint without the script's task layers (the decoder, a classifier
    head, the segmentation neck and heads) would be scored with random layers. Refused before any data."""
    encoder = tmp_path / "encoder"
    MAEModel.from_pretrained(pretrained).save_pretrained(encoder)
    argv = ["--output_dir", tmp_path / "out", "--do_train", "false", "--model_name_or_path"]
    with pytest.raises(ValueError, match=rf"{encoder} (lacks \d+ weight\(s\) of|holds a model of type 'mae_vit', not)"):
        script(*argv, encoder)
    for model_class in (MAEForPreTraining, MAEForImageClassification):
        with pytest.raises(
            ValueError, match=r"lacks \d+ weight\(s\) of .*Nothing may be missing in a model used untrained"
        ):
            check_model_folder(str(encoder), model_class=model_class)
    check_model_folder(str(pretrained), model_class=MAEForPreTraining)
    classifier = tmp_path / "classifier"
    MAEForImageClassification.from_pretrained(pretrained, num_labels=3).save_pretrained(classifier)
    check_model_folder(str(classifier), model_class=MAEForImageClassification)
    segmenter = tmp_path / "segmenter"
    config = MAESegmentationConfig(
        **tiny_config().to_dict(), out_indices=[0, 1], neck_rescales=[2.0, 1.0], auxiliary_in_index=1, num_labels=3
    )
    MAEForSemanticSegmentation(config).save_pretrained(segmenter)
    check_model_folder(str(segmenter), model_class=MAEForSemanticSegmentation)
    without_weights(segmenter, "decode_head.")
    with pytest.raises(ValueError, match=r"lacks \d+ weight\(s\) of MAEForSemanticSegmentation.*decode_head\."):
        check_model_folder(str(segmenter), model_class=MAEForSemanticSegmentation)


def test_timm_folder_is_refused_with_the_conversion_that_reads_it(tmp_path, script):
    """A timm folder (timm's save_for_hf / the Hub's timm/*.mae: config.json + weights): the hint names its weights
    file and the heads from its config.json, which the conversion needs; following it gives an mae_hf model."""
    import timm
    from timm.models._hub import save_for_hf

    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=0
    )
    save_for_hf(vit, tmp_path / "timm_vit", safe_serialization=True)
    match = rf"type 'timm_wrapper' .*`python -m mae_hf.conversion {tmp_path}/timm_vit/model.safetensors OUTPUT_DIR "
    with pytest.raises(ValueError, match=match + "--format timm --num_attention_heads 2`"):
        script("--output_dir", tmp_path / "out", "--model_name_or_path", tmp_path / "timm_vit")
    conversion.main(
        [str(tmp_path / "timm_vit" / "model.safetensors"), str(tmp_path / "converted")]
        + ["--format", "timm", "--num_attention_heads", "2"]
    )
    check_model_folder(str(tmp_path / "converted"))


def test_weights_files_are_read_as_from_pretrained_reads_them(tmp_path, script, pretrained):
    """transformers' order (model.safetensors, its index, pytorch_model.bin, its index): a stale index beside a
    complete file is not read; sharded .bin checkpoints are read; a truncated file or a shard the index names but the
    folder lacks (an unfinished save or copy) is refused naming the file, before any data."""
    weights = load_file(pretrained / "model.safetensors")
    names = sorted(weights)
    (pretrained / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {names[0]: "gone.safetensors"}}))
    check_model_folder(str(pretrained), model_class=MAEForPreTraining)
    sharded = tmp_path / "sharded_bin"
    shutil.copytree(pretrained, sharded)
    for name in ("model.safetensors", "model.safetensors.index.json"):
        (sharded / name).unlink()
    halves = {"a.bin": names[: len(names) // 2], "b.bin": names[len(names) // 2 :]}
    for file, keys in halves.items():
        torch.save({key: weights[key] for key in keys}, sharded / file)
    weight_map = {key: file for file, keys in halves.items() for key in keys}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    check_model_folder(str(sharded), model_class=MAEForPreTraining)
    (sharded / "b.bin").unlink()
    with pytest.raises(
        ValueError, match=rf"{sharded}: pytorch_model.bin.index.json names 1 shard\(s\) the folder lacks: b.bin"
    ):
        script("--output_dir", tmp_path / "out", "--model_name_or_path", sharded)
    data = (pretrained / "model.safetensors").read_bytes()
    (pretrained / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(
        ValueError, match=rf"{pretrained}/model.safetensors cannot be read \(SafetensorError: .*truncated"
    ):
        script("--output_dir", tmp_path / "out", "--model_name_or_path", pretrained)
