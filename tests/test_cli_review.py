"""The scripts' command line as a user breaks it (review of issue 22's argument layer): a flag given after a config
file replaces what the file said about the same setting, whatever form the flag takes."""

import pytest

import run_image_classification
import run_pretraining
import run_semantic_segmentation
from mae_hf import conversion, evaluate_features
from mae_hf.cli import ArgumentParser, parse_arguments
from mae_hf.visualize import cli as visualize_cli

SCRIPTS = (run_pretraining, run_image_classification, run_semantic_segmentation)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
def test_another_dataset_on_the_command_line_drops_the_files_dataset_configuration(tmp_path, script):
    """`configs/pretrain_digits_seg.yaml --dataset_name digits` read digits with the file's configuration of
    digits_seg ("unlabelled"): a ValueError (a Hub id: a wrong or missing configuration) once data loading began."""
    config = write(tmp_path, "dataset_name: digits_seg\ndataset_config_name: unlabelled\n")
    data_args = parse_arguments(script.ARGUMENTS, [config, "--dataset_name", "digits"])[1]
    assert (data_args.dataset_name, data_args.dataset_config_name) == ("digits", None)
    data_args = parse_arguments(script.ARGUMENTS, [config, "--dataset_name", "digits_seg"])[1]  # the same set: kept
    assert (data_args.dataset_name, data_args.dataset_config_name) == ("digits_seg", "unlabelled")
    data_args = parse_arguments(script.ARGUMENTS, [config, "--dataset_name", "x", "--dataset_config_name", "y"])[1]
    assert (data_args.dataset_name, data_args.dataset_config_name) == ("x", "y")


def test_another_monitor_dataset_on_the_command_line_drops_the_files_configuration(tmp_path):
    config = write(tmp_path, "monitor_dataset: digits_seg\nmonitor_dataset_config_name: default\n")
    monitor = parse_arguments(run_pretraining.ARGUMENTS, [config, "--monitor_dataset", "digits"])[3]
    assert (monitor.monitor_dataset, monitor.monitor_dataset_config_name) == ("digits", None)


@pytest.mark.parametrize("word", ["false", "no", "off", "0", "=false", "=off"])
def test_fsdp_false_on_the_command_line_turns_off_the_files_fsdp(tmp_path, word):
    """`--fsdp false` was dropped from the words, so a file's `fsdp: true` stayed on, silently."""
    config = write(tmp_path, "fsdp: true\n")
    argv = [config, f"--fsdp{word}"] if word.startswith("=") else [config, "--fsdp", word]
    assert not parse_arguments(run_pretraining.ARGUMENTS, argv)[2].fsdp


@pytest.mark.parametrize(
    "argv",
    [["--fsdp=true"], ["--fsdp", "on"], ["--fsdp=yes"], ["CONFIG", "--seed", "1"]],
    ids=["equals-true", "on", "equals-yes", "config-on"],
)
def test_fsdp_on_in_every_boolean_spelling(tmp_path, argv):
    """transformers took `on` and `=true` for legacy sharding options: "Unknown `fsdp` option: on"."""
    argv = [write(tmp_path, "fsdp: on\n") if word == "CONFIG" else word for word in argv]
    assert parse_arguments(run_pretraining.ARGUMENTS, argv)[2].fsdp is True
    assert parse_arguments(run_pretraining.ARGUMENTS, [write(tmp_path, "fsdp: off\n")])[2].fsdp in (None, "")


def test_a_config_files_value_that_starts_with_a_dash(tmp_path):
    """A file's `run_name: -baseline` reached argparse as the flag `-baseline` ("expected one argument")."""
    config = write(tmp_path, "run_name: -baseline\nmax_steps: -1\n")
    training_args = parse_arguments(run_pretraining.ARGUMENTS, [config])[2]
    assert (training_args.run_name, training_args.max_steps) == ("-baseline", -1)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
def test_a_prefix_of_a_flag_is_no_flag(tmp_path, script):
    """argparse's abbreviations took `--image_s 32` (or `image_s: 32` in a file) for --image_size without a word:
    a misspelt key that happened to be the start of one flag set it."""
    with pytest.raises(ValueError, match=r"--image_s 32 \(on the command line\): not a flag of this script"):
        parse_arguments(script.ARGUMENTS, ["--image_s", "32"])
    with pytest.raises(ValueError, match=r"--image_s=32 \(in the config file .*recipe.yaml\): not a flag"):
        parse_arguments(script.ARGUMENTS, [write(tmp_path, "image_s: 32\n")])
    assert parse_arguments(script.ARGUMENTS, ["--image_size", "32"])[0].image_size == 32


def test_the_help_names_the_source_of_the_classification_optimizer():
    """--use_lars showed "(default: False; paper Tab. 10)": Tab. 10 is the linear probe's LARS, not the default."""
    help_text = " ".join(ArgumentParser(run_image_classification.ARGUMENTS).format_help().split())
    assert "(default: False; fine-tuning: AdamW, paper Tab. 9; --linear_probe: LARS, Tab. 10)" in help_text


@pytest.mark.parametrize(
    "main, argv",
    [
        (evaluate_features.parse, ["model_dir", "--train_sam", "5"]),
        (conversion.main, ["source.pth", "out", "--overwr"]),
        (visualize_cli.main, ["model_dir", "--mask_rat", "0.5"]),
    ],
    ids=["evaluate_features", "conversion", "visualize"],
)
def test_the_other_command_lines_take_no_prefix_for_a_flag(main, argv, capsys):
    """The same in the package's other command lines: a prefix was read as the flag it starts."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    prefix = next(word for word in argv if word.startswith("--"))
    assert f"error: unrecognized arguments: {prefix}" in capsys.readouterr().err
