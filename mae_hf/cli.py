"""The command line of the three training scripts: `script.py [CONFIG.yaml|CONFIG.json] [--flag value ...]`.

Layers, lowest first: the script's defaults (the recipe), a preset switched on in the config file, the config file,
a preset switched on by a flag (e.g. `--linear_probe`), the flags. A higher layer wins, also over the other
spellings of the same setting (`ALTERNATIVES`): `--train_dir` on the command line replaces the file's
`dataset_name`, `--learning_rate` replaces the default `--base_learning_rate`. Two spellings of one setting in the
same layer are refused, naming both. A flag also sets what it implies (`IMPLIED`: `--save_steps N` checkpoints every
N steps, `--do_eval false` turns off every setting that evaluates) unless a layer as high sets that itself; a setting
that needs an evaluation (`NEEDS_EVALUATION`) in a run without one is refused before any data work.

Argument dataclasses may declare, as class variables: `PRESETS` ({flag: words put under the layer that switches the
flag on}), `IGNORED` ({flag: why}: hidden from --help and refused when given) and `HIDDEN` (flags hidden from
--help only).
"""

import argparse
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, fields

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool
from transformers.utils import logging as transformers_logging

from .distributed import fsdp_words

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
USAGE = "%(prog)s [CONFIG.yaml|CONFIG.json] [--flag value ...]   (flags override the config file)"

# (setting, one spelling, the other): the flags of the side given in the highest layer win; the other side's flags
# are switched off with OFF where they have an off value (the rest are overridden in code by the winning side).
ALTERNATIVES = (
    ("data source", ("dataset_name", "dataset_config_name"), ("train_dir", "validation_dir")),
    (
        "monitor data source",
        ("monitor_dataset", "monitor_dataset_config_name"),
        ("monitor_train_dir", "monitor_validation_dir"),
    ),
    ("learning rate", ("base_learning_rate",), ("learning_rate",)),
    ("warmup", ("warmup_epochs",), ("warmup_steps",)),
    ("checkpoint interval", ("save_every_epochs",), ("save_steps", "save_strategy")),
    ("training length", ("num_train_epochs",), ("max_steps",)),
    ("optimizer", ("use_lars",), ("optim",)),
)
OFF = {
    "dataset_name": None,
    "dataset_config_name": None,
    "train_dir": None,
    "validation_dir": None,
    "monitor_dataset": None,
    "monitor_dataset_config_name": None,
    "monitor_train_dir": None,
    "monitor_validation_dir": None,
    "base_learning_rate": None,
    "warmup_epochs": None,
    "warmup_steps": 0,
    "save_every_epochs": None,
    "max_steps": -1,
    "use_lars": False,
}
SAME_LAYER_ALLOWED = {"training length"}  # transformers' rule: --max_steps overrides --num_train_epochs
# (flag, value or None for any, setting, its value): the flag given above every layer that gives the setting sets
# it too; of several such flags, that of the highest layer (in one layer, the later entry). Our scripts evaluate and
# checkpoint every epoch by default, so --save_steps N / --eval_steps N alone would be ignored; transformers turns
# --do_eval false back on while an eval_strategy is set; a run without evaluation loads no evaluation data, so
# nothing may evaluate at start, choose a best model or score the monitor; a best model needs evaluations and
# checkpoints; one precision. A value of None (off) is set after parsing, as words cannot say None.
IMPLIED = (
    ("save_steps", None, "save_strategy", "steps"),
    ("eval_steps", None, "eval_strategy", "steps"),
    ("do_eval", False, "eval_strategy", "no"),
    ("do_eval", False, "eval_on_start", False),
    ("do_eval", False, "load_best_model_at_end", False),
    ("do_eval", False, "metric_for_best_model", None),
    ("do_eval", False, "monitor_dataset", None),
    ("do_eval", False, "monitor_train_dir", None),
    ("eval_strategy", "no", "load_best_model_at_end", False),
    ("save_strategy", "no", "load_best_model_at_end", False),
    ("fp16", True, "bf16", False),
    ("bf16", True, "fp16", False),
)
# (setting, value or None for any value but off): what needs an evaluation, refused with --do_eval false in the same
# or a higher layer (the Trainer would fail after the data and the model are built, or silently skip it).
NEEDS_EVALUATION = (
    ("eval_on_start", True),
    ("load_best_model_at_end", True),
    ("save_strategy", "best"),
    ("monitor_dataset", None),
    ("monitor_train_dir", None),
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag once, with underscores (the hyphenated aliases still parse), and its default unless the help
    already states it."""

    def _get_help_string(self, action):
        if "(default" in (action.help or "") or isinstance(action, argparse._StoreFalseAction):
            return action.help
        return super()._get_help_string(action)

    def _format_action_invocation(self, action):
        spellings = [s for s in action.option_strings if not (s.startswith("--") and "-" in s[2:])]
        if not action.option_strings or not spellings:
            return super()._format_action_invocation(action)
        if action.nargs == 0:
            return ", ".join(spellings)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(f"{s} {metavar}" for s in spellings)


class ConfigLoader(yaml.SafeLoader):
    """YAML with the booleans of YAML 1.2 (and JSON): only true/false. YAML 1.1 also reads unquoted yes/no/on/off as
    booleans, which turned `save_strategy: no` into False; here they stay the words written, which every flag parses
    as it would on the command line (`--save_strategy no`, `--do_eval no`; on/off: `yaml_words`)."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def file_values(path: str) -> dict:
    """The settings of a .json/.yaml config file (YAML is a superset of JSON); null values are left out."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path} does not exist")
    with open(path) as f:
        values = yaml.load(f, Loader=ConfigLoader) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values")
    return {key: value for key, value in values.items() if value is not None}


# The YAML 1.1 booleans that transformers' flag parser does not take (it takes yes/no, true/false, y/n, 1/0).
ON_OFF = {"on": "true", "off": "false"}


def yaml_words(parser: argparse.ArgumentParser, values: dict) -> dict:
    """A config file's on/off (YAML 1.1 booleans) as true/false in the boolean flags; the words stay as written in
    the others (`report_to: off` is the string)."""
    booleans = {action.dest for action in parser._actions if action.type is string_to_bool}
    return {
        key: ON_OFF.get(value.lower(), value) if key in booleans and isinstance(value, str) else value
        for key, value in values.items()
    }


def to_words(values: dict) -> list[str]:
    """Settings as command-line words: lists as several words, mappings as JSON (what TrainingArguments parses)."""
    words = []
    for key, value in values.items():
        if isinstance(value, dict):
            value = [json.dumps(value)]
        words += [f"--{key}", *(str(v) for v in (value if isinstance(value, list) else [value]))]
    return words


def class_settings(dataclass_types, name: str) -> dict:
    merged = {}
    for kind in dataclass_types:
        merged.update(getattr(kind, name, {}))
    return merged


def build_parser(dataclass_types) -> HfArgumentParser:
    """transformers' parser with our help: negated flags described as such, ignored flags hidden."""
    parser = HfArgumentParser(dataclass_types, formatter_class=HelpFormatter, usage=USAGE)
    hidden = {*class_settings(dataclass_types, "IGNORED")}
    hidden.update(name for kind in dataclass_types for name in getattr(kind, "HIDDEN", ()))
    for action in parser._actions:
        if action.dest in hidden:
            action.help = argparse.SUPPRESS
        elif isinstance(action, argparse._StoreFalseAction):  # HfArgumentParser's --no_x of a bool x
            action.help = f"Same as --{action.dest} false."
    return parser


def explicit_values(parser: argparse.ArgumentParser, words: list[str]) -> dict:
    """{dest: value} of the flags present in `words` (defaults left out; unknown flags ignored here)."""
    defaults = {action: action.default for action in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        namespace, _ = parser.parse_known_args(words)
    finally:
        for action, default in defaults.items():
            action.default = default
    return vars(namespace)


@dataclass
class Layer:
    name: str  # where the words come from, for messages: "on the command line"
    words: list[str]
    given: dict  # {dest: value} of the flags in `words`
    preset: bool = False


def layers_of(parser, dataclass_types, argv: list[str]) -> list[Layer]:
    """The config file (if the first word names one), the flags, and the presets that either switches on."""
    layers = []
    if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        words = to_words(yaml_words(parser, file_values(argv[0])))
        layers.append(Layer(f"in the config file {argv[0]}", words, explicit_values(parser, words)))
        argv = argv[1:]
    layers.append(Layer("on the command line", argv, explicit_values(parser, argv)))
    for flag, preset in class_settings(dataclass_types, "PRESETS").items():
        deciding = next((i for i in reversed(range(len(layers))) if flag in layers[i].given), None)
        if deciding is not None and layers[deciding].given[flag]:
            layers.insert(deciding, Layer(f"in the --{flag} preset", preset, explicit_values(parser, preset), True))
    return layers


def check_layer(layer: Layer, ignored: dict, defaults: dict) -> None:
    """Refuse two spellings of one setting, and flags the script ignores, given in one layer."""
    for setting, one, other in ALTERNATIVES:
        first = [name for name in one if name in layer.given]
        second = [name for name in other if name in layer.given]
        if first and second and setting not in SAME_LAYER_ALLOWED:
            raise ValueError(
                f"--{first[0]} and --{second[0]} are alternative ways to give the {setting} and both are given "
                f"{layer.name}; give only one of them"
            )
    for name, why in ignored.items():
        if name in layer.given and layer.given[name] != defaults.get(name):
            raise ValueError(f"--{name} (given {layer.name}) is not used by this script: {why}")


def switch_off_alternatives(layers: list[Layer], parsed) -> None:
    """For each setting, the side given in the highest layer wins: the other side's flags get their off value."""
    off = {}
    for _setting, one, other in ALTERNATIVES:
        for layer in reversed(layers):
            has_one, has_other = (any(name in layer.given for name in side) for side in (one, other))
            if has_one != has_other:  # both: a same-layer pair that transformers resolves itself
                off.update({name: OFF[name] for name in (other if has_one else one) if name in OFF})
            if has_one or has_other:
                break
    set_fields(parsed, off)


def set_fields(parsed, values: dict) -> None:
    """Set the fields named in `values` on the dataclasses that have them."""
    owners = {f.name: obj for obj in parsed for f in fields(obj)}
    for name, value in values.items():
        if name in owners:
            setattr(owners[name], name, value)


def highest(layers: list[Layer], name: str) -> int:
    """The index of the highest layer that gives `name`; -1: none does (the script's default)."""
    return max((i for i, layer in enumerate(layers) if name in layer.given), default=-1)


def plain(value):
    return getattr(value, "value", value)  # enums


def value_in(layers: list[Layer], name: str, top: int, defaults: dict):
    """The value of `name` that the layers up to `top` give (or the default)."""
    index = highest(layers[: top + 1], name)
    return plain(layers[index].given[name] if index >= 0 else defaults.get(name))


def implied_values(layers: list[Layer], defaults: dict) -> dict:
    """{setting: value} that flags imply (IMPLIED), for the settings this script has."""
    chosen = {}  # setting: (layer of the implying flag, value)
    # --do_eval beside (or under) an eval_strategy other than no: transformers evaluates, so all that goes with it stays
    evaluates = 0 <= highest(layers, "do_eval") <= highest(layers, "eval_strategy") and (
        value_in(layers, "eval_strategy", len(layers) - 1, defaults) != "no"
    )
    for flag, value, setting, implied in IMPLIED:
        if flag == "do_eval" and evaluates:
            continue
        top = highest(layers, flag)
        if setting not in defaults or top <= highest(layers, setting):
            continue
        if (value is None or plain(layers[top].given[flag]) == value) and top >= chosen.get(setting, (-1,))[0]:
            chosen[setting] = (top, implied)
    return {setting: implied for setting, (_, implied) in chosen.items()}


def check_needs_evaluation(layers: list[Layer], defaults: dict, implied: dict) -> None:
    """Refuse what needs an evaluation (NEEDS_EVALUATION) in a run without one, naming where each is given."""

    def final(name):
        return implied[name] if name in implied else value_in(layers, name, len(layers) - 1, defaults)

    if "do_eval" not in defaults or final("do_eval") or final("eval_strategy") != "no":
        return  # an eval_strategy: transformers turns --do_eval back on
    for setting, value in NEEDS_EVALUATION:
        got = final(setting) if setting in defaults else None
        off = got is None or value is None and str(got).lower() in ("", "none")  # MonitorArguments: "none" is None
        if not off and (value is None or got == value):
            shown = str(got).lower() if isinstance(got, bool) else got
            raise ValueError(
                f"--{setting} {shown} ({where(layers, setting)}) needs an evaluation, which --do_eval false "
                f"({where(layers, 'do_eval')}) turns off; drop one of them"
            )


def where(layers: list[Layer], name: str) -> str:
    """Where `name` is given, for messages: "given on the command line"."""
    index = highest(layers, name)
    return f"given {layers[index].name}" if index >= 0 else "the script's default"


def implied_words(layers: list[Layer], defaults: dict, implied: dict) -> list[str]:
    """Words that go last: the settings that flags imply (IMPLIED; None values are set after parsing), and no
    scheduler settings under a scheduler type given above them for another type (the recipe's {"min_lr": ...}
    fails transformers' cosine, linear, ...)."""
    values = {setting: value for setting, value in implied.items() if value is not None}
    kinds, settings = highest(layers, "lr_scheduler_type"), highest(layers, "lr_scheduler_kwargs")
    if kinds > settings and (
        value_in(layers, "lr_scheduler_type", kinds, defaults)
        != value_in(layers, "lr_scheduler_type", settings, defaults)
    ):
        values["lr_scheduler_kwargs"] = {}
    return to_words(values)


def is_replica() -> bool:
    """A process other than the main one of `torchrun` / `accelerate launch` (both set RANK)."""
    return int(os.environ.get("RANK", "0")) != 0


def into_dataclasses(parser: HfArgumentParser, words: list[str]):
    """The dataclasses; their warnings (e.g. transformers' deprecated flags) from the main process only, as the
    warnings of the rest of the run (setup_logging)."""
    if not is_replica():
        return parser.parse_args_into_dataclasses(args=words)
    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return parser.parse_args_into_dataclasses(args=words)
    finally:
        transformers_logging.set_verbosity(level)


def parse_arguments(dataclass_types, argv=None):
    """The argument dataclasses from `argv` (default: sys.argv[1:]); see the module docstring for the layers."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(dataclass_types)
    if "-h" in argv or "--help" in argv:
        parser.parse_args(["--help"])  # prints the help and exits
    layers = layers_of(parser, dataclass_types, argv)
    ignored = class_settings(dataclass_types, "IGNORED")
    defaults = {}
    for action in parser._actions:  # the first action of a dest gives its default (not --no_x's False)
        defaults.setdefault(action.dest, action.default)
    for layer in layers:
        if not layer.preset:
            check_layer(layer, ignored, defaults)
    implied = implied_values(layers, defaults)
    check_needs_evaluation(layers, defaults, implied)
    words = [word for layer in layers for word in layer.words] + implied_words(layers, defaults, implied)
    parsed = into_dataclasses(parser, fsdp_words(words))
    switch_off_alternatives(layers, parsed)
    set_fields(parsed, {setting: value for setting, value in implied.items() if value is None})
    return parsed
