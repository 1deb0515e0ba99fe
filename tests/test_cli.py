"""The scripts' command line (mae_hf/cli.py): flags over the config file (other spellings of a setting included),
conflicts refused, presets under the flags, the settings a flag implies, what needs an evaluation refused without
one, ignored flags refused, an honest --help, and the README's table of
recipe defaults equal to the defaults without a config file."""

import dataclasses
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from test_argument_checks import COMMON
from test_argument_checks import SCRIPTS as ARGUMENT_CHECK_SCRIPTS

import run_image_classification
import run_pretraining
import run_semantic_segmentation
from mae_hf import MAEConfig
from mae_hf.cli import build_parser, file_values, parse_arguments

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"pretrain": run_pretraining, "classify": run_image_classification, "segment": run_semantic_segmentation}


def parse(script, *words):
    return parse_arguments(SCRIPTS[script].ARGUMENTS, list(words))[:3]  # pretraining's 4th: the feature monitor


def write(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_data_source_flags_override_the_config_file(tmp_path):
    """The issue's trap: the demo config's dataset_name won over --train_dir, silently."""
    _, data_args, _ = parse(
        "pretrain",
        str(ROOT / "configs/pretrain_digits_demo.yaml"),
        "--train_dir",
        "photos/train",
        "--validation_dir",
        "photos/val",
    )
    assert (data_args.dataset_name, data_args.train_dir) == (None, "photos/train")
    assert data_args.validation_dir == "photos/val"
    folders = write(tmp_path, "train_dir: photos/train\nvalidation_dir: photos/val\n")
    _, data_args, _ = parse("classify", folders, "--dataset_name", "digits")
    assert (data_args.dataset_name, data_args.train_dir, data_args.validation_dir) == ("digits", None, None)


@pytest.mark.parametrize("place", ["flags", "file"])
def test_two_data_sources_in_one_place_are_refused_naming_both(tmp_path, place):
    both = ["--dataset_name", "digits", "--train_dir", "photos"]
    argv = both if place == "flags" else [write(tmp_path, "dataset_name: digits\ntrain_dir: photos\n")]
    where = "on the command line" if place == "flags" else "in the config file"
    with pytest.raises(ValueError, match=f"--dataset_name and --train_dir are alternative .* data source .* {where}"):
        parse("pretrain", *argv)


def test_learning_rate_flag_replaces_the_base_learning_rate(tmp_path):
    _, _, args = parse("pretrain", str(ROOT / "configs/pretrain_digits_demo.yaml"), "--learning_rate", "1e-3")
    assert (args.learning_rate, args.base_learning_rate) == (1e-3, None)
    _, _, args = parse("classify", "--learning_rate", "2e-3")  # over the recipe's default base lr
    assert (args.learning_rate, args.base_learning_rate) == (2e-3, None)
    with pytest.raises(ValueError, match="--base_learning_rate and --learning_rate"):
        parse("classify", "--learning_rate", "2e-3", "--base_learning_rate", "1e-3")


def test_epochs_and_steps_follow_the_layer_that_gives_them(tmp_path):
    _, _, args = parse("segment", "--num_train_epochs", "3", "--warmup_epochs", "1")  # over 160k steps, 1500 warmup
    assert (args.max_steps, args.num_train_epochs, args.warmup_steps, args.warmup_epochs) == (-1, 3, 0, 1)
    steps = write(tmp_path, "warmup_steps: 10\nsave_every_epochs: 2\n")
    _, _, args = parse("pretrain", steps, "--warmup_epochs", "3", "--save_steps", "7")
    assert (args.warmup_steps, args.warmup_epochs, args.save_every_epochs, args.save_steps) == (0, 3, None, 7)
    _, _, args = parse("pretrain", "--max_steps", "5", "--num_train_epochs", "2")  # one place: transformers' rule
    assert (args.max_steps, args.num_train_epochs) == (5, 2)


def test_config_file_mappings_and_booleans(tmp_path):
    config = write(tmp_path, "lr_scheduler_kwargs: {min_lr: 1.0e-5}\nnorm_pix_loss: false\nmax_steps: null\n")
    model_args, _, args = parse("pretrain", config)
    assert args.lr_scheduler_kwargs == {"min_lr": 1e-5} and model_args.norm_pix_loss is False
    model_args, _, _ = parse("pretrain", config, "--norm_pix_loss")
    assert model_args.norm_pix_loss is True


def test_linear_probe_preset_over_a_finetuning_config_under_the_flags():
    config = str(ROOT / "configs/finetune_digits.yaml")  # drop path 0.1, blr 2e-3, layer decay 0.75, smoothing 0.1
    model_args, _, args = parse("classify", config, "--linear_probe")
    assert (model_args.drop_path_rate, model_args.pooling, args.base_learning_rate) == (0, "cls", 0.1)
    assert (args.layer_decay, args.use_lars, args.weight_decay, args.label_smoothing) == (1, True, 0, 0)
    assert args.lr_scheduler_kwargs == {"min_lr": 0}
    assert (args.num_train_epochs, args.warmup_epochs) == (90, 10)
    model_args, _, args = parse(
        "classify", config, "--linear_probe", "--base_learning_rate", "0.05", "--pooling", "mean"
    )
    assert (args.base_learning_rate, model_args.pooling, model_args.drop_path_rate) == (0.05, "mean", 0)
    _, _, args = parse("classify", str(ROOT / "configs/linprobe_vit_base.yaml"), "--bf16", "false")  # in the file
    assert (args.base_learning_rate, args.per_device_train_batch_size, args.use_lars) == (0.1, 512, True)
    model_args, _, args = parse("classify", config)
    assert (model_args.drop_path_rate, args.base_learning_rate, args.use_lars) == (0.1, 2e-3, False)


def test_step_intervals_and_do_eval_given_alone_set_their_strategy(tmp_path):
    """Our scripts evaluate and checkpoint every epoch: --save_steps / --eval_steps alone were ignored (also over
    a config's --save_every_epochs, which the README says they replace), and transformers turned --do_eval false
    back on because of the eval_strategy."""
    config = str(ROOT / "configs/finetune_vit_base.yaml")  # save_every_epochs: 10, eval_strategy: epoch, bf16
    _, _, args = parse("classify", config, "--bf16", "false", "--save_steps", "100", "--eval_steps", "50")
    assert (args.save_strategy, args.save_steps, args.save_every_epochs) == ("steps", 100, None)
    assert (args.eval_strategy, args.eval_steps) == ("steps", 50)
    _, _, args = parse("pretrain", write(tmp_path, 'save_strategy: "no"\n'), "--save_steps", "5")
    assert args.save_strategy == "steps"
    _, _, args = parse(
        "pretrain", "--save_strategy", "epoch", "--save_steps", "5", "--eval_steps", "5", "--eval_strategy", "no"
    )  # the strategy in the same place is the user's
    assert (args.save_strategy, args.eval_strategy) == ("epoch", "no")
    _, _, args = parse("pretrain", str(ROOT / "configs/pretrain_digits_demo.yaml"), "--save_strategy", "no")
    assert (args.save_strategy, args.eval_strategy) == ("no", "steps")
    for script in SCRIPTS:  # segmentation evaluates every 16k steps by default
        _, _, args = parse(script, "--do_eval", "false")
        assert (args.do_eval, args.eval_strategy) == (False, "no"), script
    _, _, args = parse("segment", "--no_do_eval")
    assert (args.do_eval, args.eval_strategy) == (False, "no")
    _, _, args = parse("pretrain", write(tmp_path, "do_eval: false\n"), "--eval_strategy", "steps")
    assert (args.do_eval, args.eval_strategy) == (True, "steps")  # the higher place wins


# Everything that evaluates, in one config file (checkpoints every 10 steps, a multiple of the evaluations').
EVALUATING = (
    "eval_strategy: steps\neval_steps: 5\neval_on_start: true\nload_best_model_at_end: true\n"
    "metric_for_best_model: loss\nsave_strategy: steps\nsave_steps: 10\n"
)


def test_do_eval_false_switches_off_every_setting_that_evaluates(tmp_path):
    """The issue: over the demo config, --do_eval false left its eval_on_start on, and the Trainer asked for an
    evaluation that no data was loaded for, after the data and the model were built. --do_eval false now switches off
    whatever evaluates (the evaluation strategy, at start, the best model and its metric, the feature monitor) in
    every script, wherever it was set below it; checkpoints stay. Likewise, no evaluations or no checkpoints switch off
    the best model, and one precision the other."""
    demo = str(ROOT / "configs/pretrain_digits_demo.yaml")
    _, _, args, monitor = parse_arguments(run_pretraining.ARGUMENTS, [demo, "--do_eval", "false"])
    assert (args.do_eval, args.eval_strategy, args.eval_on_start) == (False, "no", False)
    assert (monitor.monitor_dataset, monitor.enabled, monitor.metric_names()) == (None, False, ())
    for script in SCRIPTS:
        _, _, args = parse(script, write(tmp_path, EVALUATING), "--do_eval", "false")
        assert (args.do_eval, args.eval_strategy, args.eval_on_start) == (False, "no", False), script
        assert (args.load_best_model_at_end, args.metric_for_best_model) == (False, None), script
        assert (args.save_strategy, args.save_steps) == ("steps", 10), script
    _, _, args = parse("classify", write(tmp_path, "do_eval: false\n"), "--eval_steps", "5")  # the higher place wins
    assert (args.do_eval, args.eval_strategy, args.eval_steps) == (True, "steps", 5)
    # beside an eval_strategy, transformers turns --do_eval false back on: what evaluates stays on with it
    _, _, args, monitor = parse_arguments(
        run_pretraining.ARGUMENTS, [demo, "--do_eval", "false", "--eval_strategy", "steps"]
    )
    assert (args.do_eval, args.eval_strategy, args.eval_on_start, monitor.monitor_dataset) == (
        True,
        "steps",
        True,
        "digits",
    )
    for flag in ("--eval_strategy", "--save_strategy"):
        _, _, args = parse("segment", write(tmp_path, EVALUATING), flag, "no")
        assert (args.load_best_model_at_end, args.do_eval) == (False, True), flag
    _, _, args = parse("classify", str(ROOT / "configs/finetune_vit_base.yaml"), "--fp16", "true", "--use_cpu", "true")
    assert (args.fp16, args.bf16) == (True, False)  # the file's bf16: "At most one of fp16 and bf16"


LOADERS = {
    "pretrain": "load_image_datasets",
    "classify": "load_image_datasets",
    "segment": "load_segmentation_datasets",
}


@pytest.mark.parametrize(
    "script, file, flags, message",
    [
        ("pretrain", None, ["--do_eval", "false", "--eval_on_start", "true"], "--eval_on_start true .given on the "),
        ("classify", "do_eval: false\n", ["--load_best_model_at_end", "true"], "--load_best_model_at_end true .given"),
        (
            "segment",
            "do_eval: false\nsave_strategy: best\n",
            ["--metric_for_best_model", "loss"],
            "--save_strategy best",
        ),
        (
            "pretrain",
            None,
            ["--monitor_train_dir", "photos", "--do_eval", "false"],
            "--monitor_train_dir photos .given",
        ),
        ("pretrain", "do_eval: false\n", ["--monitor_dataset", "digits"], "--monitor_dataset digits .given on the"),
    ],
)
def test_settings_that_need_an_evaluation_are_refused_without_one(tmp_path, monkeypatch, script, file, flags, message):
    """Given with --do_eval false or above it (where --do_eval false does not switch them off), they are refused
    before any data work, naming both and where each was given."""
    monkeypatch.setattr(SCRIPTS[script], LOADERS[script], None)  # a call would fail the test
    argv = [write(tmp_path, file)] if file else []
    out = tmp_path / "out"
    where = "in the config file" if file else "on the command line"
    with pytest.raises(ValueError, match=f"{message}.* needs an evaluation, which --do_eval false .given {where}"):
        SCRIPTS[script].main([*argv, "--output_dir", str(out), *flags])
    assert not out.exists()


@pytest.mark.parametrize("script", ["pretraining", "classification", "segmentation"])
def test_config_that_evaluates_trains_with_do_eval_false(tmp_path, script):
    """The issue's command in-process: the demo config + --do_eval false trained nothing (the Trainer's evaluation at
    start failed for want of data); the other scripts under a config that evaluates in every way did the same."""
    module, arguments = ARGUMENT_CHECK_SCRIPTS[script]
    if script == "pretraining":
        config, arguments = str(ROOT / "configs/pretrain_digits_demo.yaml"), ["--max_train_samples", "64"]
    else:
        config, arguments = write(tmp_path, EVALUATING), [*COMMON, *arguments]
    out = tmp_path / "out"
    argv = [config, "--output_dir", str(out), *arguments, "--do_eval", "false", "--max_steps", "2"]
    metrics = module.main([*argv, "--warmup_steps", "0", "--dataloader_num_workers", "0"])
    assert metrics["train_loss"] > 0 and not [key for key in metrics if key.startswith("eval_")]
    assert (out / "model.safetensors").is_file() and not (out / "eval_results.json").exists()


@pytest.mark.parametrize(
    "script, words, expected",
    [
        ("classify", ["--lr_scheduler_type", "cosine"], {}),  # the recipe's {"min_lr": 1e-6} failed at step 1
        ("classify", ["--linear_probe", "--lr_scheduler_type", "linear"], {}),  # the preset's {"min_lr": 0.0}
        ("segment", ["--lr_scheduler_type", "cosine"], {}),  # mmsegmentation's {"power": 1.0, "lr_end": 0.0}
        ("classify", ["--lr_scheduler_type", "cosine_with_min_lr"], {"min_lr": 1e-6}),  # the same type: kept
        (
            "classify",
            ["--lr_scheduler_type", "cosine_with_min_lr", "--lr_scheduler_kwargs", '{"min_lr_rate": 0.1}'],
            {"min_lr_rate": 0.1},
        ),
        (
            "pretrain",
            ["--lr_scheduler_type", "cosine_with_min_lr", "--lr_scheduler_kwargs", '{"min_lr": 1e-5}'],
            {"min_lr": 1e-5},
        ),
    ],
)
def test_scheduler_settings_follow_the_scheduler_type(tmp_path, script, words, expected):
    from transformers import get_scheduler

    _, _, args = parse(script, "--output_dir", str(tmp_path), *words)
    assert args.lr_scheduler_kwargs == expected
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=1,
        num_training_steps=10,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )  # what Trainer builds at its first step


def test_scheduler_settings_of_a_file_follow_its_scheduler_type(tmp_path):
    config = write(tmp_path, "lr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs: {min_lr: 1.0e-5}\n")
    _, _, args = parse("classify", config, "--lr_scheduler_type", "cosine")
    assert args.lr_scheduler_kwargs == {}
    _, _, args = parse("classify", config, "--num_train_epochs", "3")
    assert args.lr_scheduler_kwargs == {"min_lr": 1e-5}


def test_optim_flag_replaces_the_linear_probe_lars():
    """--optim with --linear_probe silently trained with LARS (the preset's --use_lars)."""
    _, _, args = parse("classify", "--linear_probe", "--optim", "adamw_torch")
    assert (args.use_lars, args.optim, args.base_learning_rate) == (False, "adamw_torch", 0.1)
    _, _, args = parse("classify", str(ROOT / "configs/linprobe_vit_base.yaml"), "--bf16", "false", "--optim", "sgd")
    assert (args.use_lars, args.optim) == (False, "sgd")
    _, _, args = parse("classify", "--linear_probe")
    assert args.use_lars is True
    with pytest.raises(ValueError, match="--use_lars and --optim are alternative ways to give the optimizer"):
        parse("classify", "--use_lars", "--optim", "sgd")


@pytest.mark.parametrize("rank, shown", [("0", True), ("1", False)])
def test_argument_warnings_come_from_the_main_process_only(monkeypatch, rank, shown):
    """TrainingArguments warns while it is parsed, before setup_logging silences the other processes."""
    monkeypatch.setenv("RANK", rank)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parse("pretrain", "--gradient_checkpointing", "true")
    assert any("gradient_checkpointing" in str(w.message) for w in caught) is shown


@pytest.mark.parametrize("flag", ["--do_predict", "--neftune_noise_alpha 5"])
def test_flags_the_scripts_ignore_are_refused(flag):
    with pytest.raises(ValueError, match=f"{flag.split()[0]} \\(given on the command line\\) is not used"):
        parse("classify", *flag.split())


# ---- --help ------------------------------------------------------------------------------------------------------


def help_text(script: str) -> str:
    return build_parser(SCRIPTS[script].ARGUMENTS).format_help()


def help_of(text: str, flag: str) -> str:
    """The help paragraph of one flag, on one line."""
    match = re.search(rf"^  {re.escape(flag)}\b.*?(?=^  -|\Z)", text, flags=re.M | re.S)
    assert match, f"{flag} is not in --help"
    return " ".join(match.group(0).split())


SOURCES = ("paper Tab.", "paper Sec.", ".md", ".py", "mmsegmentation", "timm")


def readme_table() -> tuple[list[str], list[list[str]]]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- recipe-defaults")[1].split("\n\n")[0]
    lines = [line for line in block.splitlines()[1:] if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return rows[0], [row for row in rows[2:] if row[0] != "source"]


COLUMNS = {1: ("pretrain", []), 2: ("classify", []), 3: ("classify", ["--linear_probe"]), 4: ("segment", [])}


def test_every_recipe_flag_has_a_help_line_with_its_default_and_source():
    _, rows = readme_table()
    for column, (script, _) in COLUMNS.items():
        text = help_text(script)
        for row in rows:
            flag = row[0].split("`")[1]
            if row[column] != "—":
                line = help_of(text, flag)
                assert "(default:" in line and any(s in line for s in SOURCES), (script, line)


def test_help_is_honest_about_ignored_derived_and_negated_flags():
    text = help_text("pretrain")
    assert "5e-05" not in help_of(text, "--learning_rate") and "base_learning_rate x global batch" in help_of(
        text, "--learning_rate"
    )
    assert help_of(text, "--no_norm_pix_loss") == "--no_norm_pix_loss Same as --norm_pix_loss false."
    for hidden in ("--do_predict", "--label_smoothing_factor", "--neftune_noise_alpha", "--remove_unused_columns"):
        assert f"  {hidden}" not in text
    assert "--no-norm-pix-loss" not in text and "--train-dir" not in text  # one spelling shown per flag
    assert "--use_lars" in help_of(help_text("classify"), "--optim")


def test_help_shows_no_default_the_script_does_not_use():
    """Segmentation's length is --max_steps (160k): --num_train_epochs showed transformers' 3.0."""
    line = help_of(help_text("segment"), "--num_train_epochs")
    assert "3.0" not in line and "(default: none, --max_steps sets the length)" in line


def test_conversion_cli_negates_as_the_scripts_do():
    result = subprocess.run(
        [sys.executable, "-m", "mae_hf.conversion", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert "--no_norm_pix_loss" in result.stdout and "--no-norm" not in result.stdout
    assert "(default: detected" in result.stdout


# ---- the README's recipe table ----------------------------------------------------------------------------------


def cell_value(cell: str):
    words = cell.split()
    values = [json.loads(w) if re.fullmatch(r"[-\d.e]+|true|false", w) else w for w in words]
    if cell.startswith("{"):
        return json.loads(cell)
    return values[0] if len(values) == 1 else values


def effective(parsed, name: str):
    """The value a run uses: the parsed one, or MAEConfig's default for an architecture field left at None."""
    for obj in parsed:
        if hasattr(obj, name):
            value = getattr(obj, name)
            value = getattr(value, "value", value)  # enums
            return getattr(MAEConfig(), name) if value is None and hasattr(MAEConfig(), name) else value
    raise AssertionError(f"no {name} in the parsed arguments")


def test_readme_recipe_table_is_what_the_scripts_use_without_a_config_file(tmp_path):
    header, rows = readme_table()
    assert [h.strip("`") for h in header[1:]] == [
        "run_pretraining.py",
        "run_image_classification.py",
        "... --linear_probe",
        "run_semantic_segmentation.py",
    ]
    for column, (script, extra) in COLUMNS.items():
        parsed = parse(script, "--output_dir", str(tmp_path), *extra)
        for row in rows:
            if row[column] == "—":
                continue
            name = row[0].split("`")[1].removeprefix("--")
            expected, actual = cell_value(row[column]), effective(parsed, name)
            assert actual == pytest.approx(expected), f"{header[column]} {name}: README {expected}, parsed {actual}"


@pytest.mark.parametrize("script", ["pretrain", "classify", "segment"])
def test_unquoted_yaml_no_yes_on_off_mean_what_the_user_wrote(tmp_path, script):
    """YAML 1.1 reads unquoted no/yes/on/off as booleans: `save_strategy: no` became False, which the string flag
    refused (or took as another word). They now parse as on the command line, in string and bool fields alike."""
    path = write(
        tmp_path,
        "save_strategy: no\neval_strategy: no\ndo_eval: off\noverwrite_output_dir: yes\n"
        "verify_images: No\ngpu_fast_paths: ON\n",
    )
    _, data_args, args = parse(script, path, "--output_dir", str(tmp_path / "out"))
    assert (args.save_strategy, args.eval_strategy) == ("no", "no")
    assert (args.do_eval, args.overwrite_output_dir, data_args.verify_images, args.gpu_fast_paths) == (
        False,
        True,
        False,
        True,
    )
    assert file_values(write(tmp_path, "a: true\nb: False\nc: n\nd: 'no'\n")) == {
        "a": True,
        "b": False,
        "c": "n",
        "d": "no",
    }


def test_recipe_options_are_declared_fields_checked_before_any_work():
    """layer_decay and use_lars were read by the trainer through getattr (no field in pretraining, none of use_lars
    in segmentation): now every script's training arguments declare them; where a script does not use one, giving
    it is refused, and a layer decay outside (0, 1] is refused naming the flag."""
    for script in SCRIPTS:
        _, _, args = parse(script)
        assert {"layer_decay", "use_lars"} <= {f.name for f in dataclasses.fields(args)}, script
    for script in ("classify", "segment"):
        with pytest.raises(ValueError, match=r"--layer_decay must be in \(0, 1\] \(1.0: off\), got 0.0"):
            parse(script, "--layer_decay", "0")
    with pytest.raises(ValueError, match="--layer_decay .* is not used by this script"):
        parse("pretrain", "--layer_decay", "0.5")
    with pytest.raises(ValueError, match="--use_lars .* is not used by this script"):
        parse("segment", "--use_lars")
