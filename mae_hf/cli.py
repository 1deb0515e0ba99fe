"""The command line of the three training scripts: `script.py [CONFIG.yaml|CONFIG.json] [--flag value ...]`.

Layers, lowest first: the script's defaults (the recipe), a preset switched on in the config file, the config file, a
preset switched on by a flag (`--linear_probe`), the flags. A higher layer wins, also over the other way of giving the
same setting (`--train_dir` over a file's `dataset_name`); two ways of one setting in one layer are refused. A flag
also sets what it implies unless a layer as high sets that itself; what needs an evaluation is refused in a run without
one. Every fact about a flag is read from its dataclass field (`arguments.flag`)."""

import argparse
import copy
import json
import os
import sys
import warnings
from collections import namedtuple
from dataclasses import MISSING, fields

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool
from transformers.utils import logging as transformers_logging

from .arguments import ANY, help_line

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
USAGE = "%(prog)s [CONFIG.yaml|CONFIG.json] [--flag value ...]   (flags override the config file)"
ARGPARSE = {"action", "choices", "const", "default", "dest", "help", "metavar", "nargs", "required", "type"}


def to_bool(word):
    """transformers' booleans (yes/no, true/false, y/n, 1/0) and YAML 1.1's on/off."""
    return string_to_bool({"on": "true", "off": "false"}.get(str(word).lower(), word))


def fsdp_words(words: list[str]) -> list[str]:
    """Command-line words with `--fsdp true` / `--fsdp=on` (also `fsdp: true` in a config file), in any of the
    booleans' spellings, as transformers' bare `--fsdp`, which it needs: it takes the word for one of its legacy
    sharding options and fails ("Unknown `fsdp` option: true"); `--fsdp false` as `--fsdp=` (FSDP off: an empty
    value, which also replaces a lower layer's `fsdp: true`). Other values (`full_shard`) are left to transformers."""
    out, skip = [], False
    for word, following in zip(words, [*words[1:], None]):
        name, equals, value = word.partition("=")
        if skip or name != "--fsdp":
            out += [] if skip else [word]
            skip = False
            continue
        try:
            on = to_bool(value if equals else str(following))
        except argparse.ArgumentTypeError:  # not a boolean: a sharding option, the next flag or the end
            out.append(word)
            continue
        out.append("--fsdp" if on else "--fsdp=")
        skip = not equals
    return out


class ArgumentParser(HfArgumentParser):
    """transformers' parser of the dataclasses, with the facts of their fields (`facts`, `defaults`, `ways`): each
    flag shown once, with underscores (the hyphenated spelling still parses), with its default, its source and the
    other way of giving its setting; --no_x described as such; hidden and unused flags left out of --help. No default
    enters a parse (argparse.SUPPRESS): it gives the flags given, and the dataclasses the rest."""

    def __init__(self, dataclass_types):
        specs = [spec for kind in dataclass_types for spec in fields(kind) if spec.init]
        self.facts = {spec.name: spec.metadata for spec in specs}
        self.defaults = {s.name: s.default if s.default_factory is MISSING else s.default_factory() for s in specs}
        self.ways = {}  # {setting: (the flags of one way of giving it, those of the other)}
        for name, facts in self.facts.items():
            if "way" in facts and "unused" not in facts:
                self.ways.setdefault(facts["way"][0], ([], []))[facts["way"][1]].append(name)
        # no abbreviations: `mask_r: 0.5` in a file (or --mask_r) would silently set --mask_ratio
        super().__init__(dataclass_types, usage=USAGE, formatter_class=argparse.HelpFormatter, allow_abbrev=False)

    def add_argument(self, *names, **kwargs):
        facts = {key: kwargs.pop(key) for key in set(kwargs) - ARGPARSE}  # ours: not for argparse
        if kwargs.get("action") == "help":
            return super().add_argument(*names, **kwargs)
        if kwargs.get("type") is string_to_bool:
            kwargs["type"] = to_bool
        default = kwargs.pop("default", None)
        if kwargs.get("action") == "store_false":  # HfArgumentParser's --no_x of a bool x
            text = f"Same as --{kwargs['dest']} false."
        else:
            text = help_line(names[0][2:], {**facts, "help": kwargs.get("help")}, default)
            setting, side = facts.get("way", (None, 0))
            if others := self.ways.get(setting, ([], []))[1 - side]:
                text += f" Or give the {setting} as --{' / --'.join(others)}."
        kwargs["help"] = argparse.SUPPRESS if facts.get("hidden") or facts.get("unused") else text
        shown = [name for name in names if "-" not in name[2:]]
        action = super().add_argument(*shown, **kwargs, default=argparse.SUPPRESS)
        if hyphenated := [name for name in names if name not in shown]:
            super().add_argument(*hyphenated, **{**kwargs, "help": argparse.SUPPRESS}, default=argparse.SUPPRESS)
        return action


build_parser = ArgumentParser


class ConfigLoader(yaml.SafeLoader):
    """YAML with the booleans of YAML 1.2 (and JSON): only true/false. YAML 1.1 also reads unquoted yes/no/on/off as
    booleans, which turned `save_strategy: no` into False; here they stay the words written, which every flag parses
    as it would on the command line (`--save_strategy no`, `--do_eval no`, `--do_eval off`)."""

    def construct_yaml_bool(self, node):
        return super().construct_yaml_bool(node) if node.value.lower() in ("true", "false") else node.value


ConfigLoader.add_constructor("tag:yaml.org,2002:bool", ConfigLoader.construct_yaml_bool)


def file_values(path: str) -> dict:
    """The settings of a .json/.yaml config file (YAML is a superset of JSON); null values are left out."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path} does not exist")
    with open(path) as f:
        values = yaml.load(f, Loader=ConfigLoader) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values")
    return {key: value for key, value in values.items() if value is not None}


def to_words(values: dict) -> list[str]:
    """Settings as command-line words: lists as several words, mappings as JSON (what TrainingArguments parses), one
    value as `--key=value` (so that a value starting with '-' is no flag)."""
    words = []
    for key, value in values.items():
        value = json.dumps(value) if isinstance(value, dict) else value
        words += [f"--{key}", *map(str, value)] if isinstance(value, list) else [f"--{key}={value}"]
    return words


# name: where the words come from, for messages ("on the command line"); given: {flag: value} of the flags given there
Layer = namedtuple("Layer", "name given preset")


class CommandLine:
    """The layers of one command line (lowest first) and the facts of the script's flags."""

    def __init__(self, dataclass_types, argv: list[str]):
        self.parser = parser = ArgumentParser(dataclass_types)
        if "-h" in argv or "--help" in argv:
            parser.parse_args(["--help"])  # prints the help and exits
        self.facts, self.defaults, self.ways = parser.facts, parser.defaults, parser.ways
        self.layers = []
        if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
            self.add(f"in the config file {argv[0]}", to_words(file_values(argv[0])))
            argv = argv[1:]
        self.add("on the command line", argv)
        for name, facts in self.facts.items():  # a preset goes under the layer that switches it on
            if "preset" in facts and (top := self.highest(name)) >= 0 and self.layers[top].given[name]:
                self.add(f"in the --{name} preset", to_words(facts["preset"]), top)

    def add(self, where: str, words: list[str], below: int | None = None) -> None:
        namespace, unknown = self.parser.parse_known_args(fsdp_words(words))
        if unknown:
            raise ValueError(f"{' '.join(unknown)} ({where}): not a flag of this script (see --help)")
        layer = Layer(where, vars(namespace), below is not None)
        self.layers.insert(len(self.layers) if below is None else below, layer)

    def highest(self, name: str, top: int | None = None) -> int:
        """The index of the highest layer up to `top` (None: all) that gives `name`; -1: none (the default)."""
        layers = self.layers if top is None else self.layers[: top + 1]
        return max((i for i, layer in enumerate(layers) if name in layer.given), default=-1)

    def value(self, name: str, top: int | None = None):
        """The value of `name` that the layers up to `top` give (or the default), enums by value."""
        index = self.highest(name, top)
        value = self.layers[index].given[name] if index >= 0 else self.defaults.get(name)
        return getattr(value, "value", value)

    def where(self, name: str) -> str:
        """Where `name` is given, for messages: "given on the command line"."""
        index = self.highest(name)
        return f"given {self.layers[index].name}" if index >= 0 else "the script's default"

    def check_layers(self) -> None:
        """Refuse two ways of giving one setting, and flags the script does not use, given in one layer."""
        for layer in (layer for layer in self.layers if not layer.preset):
            for setting, sides in self.ways.items():
                one, other = ([name for name in side if name in layer.given] for side in sides)
                if one and other and not any(self.facts[name].get("wins_in_layer") for name in one + other):
                    raise ValueError(
                        f"--{one[0]} and --{other[0]} are alternative ways to give the {setting} and both are "
                        f"given {layer.name}; give only one of them"
                    )
            for name, value in layer.given.items():
                if "unused" in self.facts[name] and value != self.defaults[name]:
                    why = self.facts[name]["unused"]
                    raise ValueError(f"--{name} (given {layer.name}) is not used by this script: {why}")

    def switched_off(self) -> dict:
        """For each setting, the way given in the highest layer wins: the other way's flags get their `off` value."""
        off = {}
        for sides in self.ways.values():
            for layer in reversed(self.layers):
                has = [any(name in layer.given for name in side) for side in sides]
                if has[0] != has[1]:  # both: a same-layer pair that transformers resolves itself
                    off.update({name: self.facts[name]["off"] for name in sides[has[0]] if "off" in self.facts[name]})
                if any(has):
                    break
        return off

    def implied(self) -> dict:
        """{setting: value} that the flags given imply (`implies`; of several, the highest layer's), for the settings
        this script has; a setting that `belongs_to` another, given above it for another value, goes `off`."""
        chosen = {}  # setting: (layer of the implying flag, value)
        # --do_eval beside (or under) an eval_strategy but no: transformers evaluates, so all that goes with it stays
        evaluates = (
            0 <= self.highest("do_eval") <= self.highest("eval_strategy") and self.value("eval_strategy") != "no"
        )
        for name, facts in self.facts.items():
            top = self.highest(name)
            for when, settings in facts.get("implies", {}).items() if top >= 0 else ():
                if (name == "do_eval" and evaluates) or when not in (ANY, self.value(name)):
                    continue
                for setting, value in settings.items():
                    if setting in self.facts and top > self.highest(setting) and top >= chosen.get(setting, (-1,))[0]:
                        chosen[setting] = (top, value)
        for name, facts in self.facts.items():  # last: nothing implies a setting that belongs to another
            if owner := facts.get("belongs_to"):
                above, top = self.highest(owner), self.highest(name)
                if above > top and self.value(owner, above) != self.value(owner, top):
                    chosen[name] = (above, facts["off"])
        return {setting: copy.deepcopy(value) for setting, (_, value) in chosen.items()}

    def check_evaluation(self, implied: dict) -> None:
        """Refuse what needs an evaluation (`evaluates`) in a run without one, naming where each is given."""

        def final(name):
            return implied[name] if name in implied else self.value(name)

        if "do_eval" not in self.facts or final("do_eval") or final("eval_strategy") != "no":
            return  # an eval_strategy: transformers turns --do_eval back on
        for name, facts in self.facts.items():
            needs, got = facts.get("evaluates", MISSING), final(name)
            off = got is None or needs == ANY and str(got).lower() in ("", "none")  # MonitorArguments: "none" is None
            if needs is not MISSING and not off and needs in (ANY, got):
                shown = str(got).lower() if isinstance(got, bool) else got
                raise ValueError(
                    f"--{name} {shown} ({self.where(name)}) needs an evaluation, which --do_eval false "
                    f"({self.where('do_eval')}) turns off; drop one of them"
                )


def into_dataclasses(parser: ArgumentParser, values: dict) -> tuple:
    """The dataclasses from the values given (the rest: their defaults); their warnings (e.g. transformers'
    deprecated flags) from the main process only (RANK 0 or unset), as the warnings of the rest of the run."""
    level, replica = transformers_logging.get_verbosity(), int(os.environ.get("RANK", "0")) != 0
    with warnings.catch_warnings():
        if replica:
            warnings.simplefilter("ignore")
            transformers_logging.set_verbosity_error()
        try:
            return parser.parse_dict(values)
        finally:
            transformers_logging.set_verbosity(level)


def parse_arguments(dataclass_types, argv=None) -> tuple:
    """The argument dataclasses from `argv` (default: sys.argv[1:]); see the module docstring for the layers."""
    line = CommandLine(dataclass_types, list(sys.argv[1:] if argv is None else argv))
    line.check_layers()
    implied = line.implied()
    line.check_evaluation(implied)
    given = {name: value for layer in line.layers for name, value in layer.given.items()}
    return into_dataclasses(line.parser, {**given, **implied, **line.switched_off()})
