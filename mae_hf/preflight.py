"""Checks of the folders a run writes and reads that need no data: the output folder can be written, and a model
folder holds an mae_hf model with every weight its encoder needs. They read only small files (config.json, the
index or header of the weights), so a run that cannot work fails in seconds, before any data is loaded, any image
decoded or any model built, with a message naming the folder.

Used by the three scripts (`run_utils.start_run`), `python -m mae_hf.evaluate_features`, `python -m mae_hf.visualize`
and `python -m mae_hf.conversion`.
"""

import json
import os
import re
import tempfile

from .run_directory.files import WRITE_PROBE_PREFIX

MODEL_TYPES = ("mae_vit", "mae_upernet")
CONVERSIONS = (
    "transformers' ViTMAE folders (model_type vit_mae), the official MAE .pth checkpoints and timm ViT checkpoints "
    "convert with `python -m mae_hf.conversion SOURCE OUTPUT_DIR`"
)
# The one encoder weight that may be absent: the final norm. Mean-pooled classifiers and segmenters have none, and
# a model that has one starts it as LayerNorm does (ones / zeros), not at random. The position tables are buffers
# (the fixed sin-cos table, recomputed when absent), not parameters, so they are not required either.
OPTIONAL_WEIGHTS = re.compile(r"^(vit\.)?norm\.")
SHOWN_KEYS = 5
# For messages: whose weights are missing (other models by their class name), and which may be.
WEIGHTS_OF = {None: "the encoder", "MAEForPreTraining": "the encoder and decoder"}
NEW_LAYERS_MAY_BE_MISSING = (
    "Only new task layers (a classifier head, the decoder, the segmentation neck and heads) may be missing"
)


def check_writable_dir(path: str, flag: str = "--output_dir") -> None:
    """`path` is a folder this process can write files into, or one it can create: a probe file is written and
    removed in it, or in its nearest existing parent when it does not exist yet (nothing is left behind, so a run
    refused later finds no new folder). Raises ValueError naming `flag`, the folder and the OS error."""
    target = os.path.abspath(os.path.expanduser(path))
    existing = target
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if os.path.islink(existing) and not os.path.exists(existing):  # lexists found it: the link's target is gone
        raise ValueError(
            f"{flag} {path} cannot be created: {existing} is a symbolic link to {os.readlink(existing)}, which does "
            "not exist (create the folder it points to)"
        )
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {path} cannot be created: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=WRITE_PROBE_PREFIX, dir=existing)
        with os.fdopen(handle, "wb") as file:
            file.write(b"mae_hf")
        os.remove(probe)
    except OSError as error:
        where = "is not writable" if existing == target else f"cannot be created: {existing} is not writable"
        raise ValueError(
            f"{flag} {path} {where} ({type(error).__name__}: {error.strerror or error}); the run saves its "
            "checkpoints, model and results there"
        ) from error


def check_writable_file(path: str, flag: str = "--output") -> None:
    """The folder of the file `path` can be written (see `check_writable_dir`; the writer creates it)."""
    check_writable_dir(os.path.dirname(os.path.abspath(path)), f"{flag}'s folder")


def check_model_folder(path: str | None, overrides: dict | None = None, flag="--model_name_or_path", model_class=None):
    """A model to start from (a local folder or a Hub id) must be an mae_hf model (config.json's model_type one of
    `MODEL_TYPES`) whose weights hold every parameter of the encoder (`overrides`: encoder fields given on the
    command line, e.g. a deeper `num_hidden_layers`). Everything else (a classifier head, a decoder, a neck and
    heads) may be new, unless `model_class` names a model used as it is saved, which must have every parameter: a
    figure's `MAEForPreTraining` (its decoder), the task model of an evaluation alone (no layer is trained there).
    Raises ValueError naming the folder and the model_type, or the missing weights (their count and the first few)."""
    if path is None:
        return
    config = _config_dict(path, flag)
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        convert = CONVERSIONS
        if model_type == "vit_mae":
            convert = f"convert it with `python -m mae_hf.conversion {path} OUTPUT_DIR`"
        elif model_type == "timm_wrapper":  # transformers' name for a timm folder (e.g. the Hub's timm/*.mae)
            convert = _timm_conversion(path, config)
        raise ValueError(
            f"{flag} {path} holds a model of type {model_type!r} (config.json's model_type), not an mae_hf model "
            f"({' or '.join(MODEL_TYPES)}); {convert}"
        )
    wanted = model_class.config_class.model_type if model_class else None
    if wanted not in (None, model_type, MODEL_TYPES[0]):  # an encoder's config: the task layers cannot be there
        raise ValueError(
            f"{flag} {path} holds a model of type {model_type!r}, not a trained {model_class.__name__} ({wanted!r}), "
            "whose layers would start at random: nothing may be missing in a model used untrained"
        )
    keys = _checkpoint_keys(path, flag)
    if keys is None:
        raise ValueError(f"{flag} {path} has a config.json but no weights ({', '.join(WEIGHTS_FILES)})")
    missing = [name for name in _required_weights(config, overrides or {}, model_class) if not _present(name, keys)]
    if missing and model_class is None and any(key.startswith("vit.") for key in keys):  # named as in the checkpoint
        missing = [f"vit.{name}" for name in missing]
    if missing:
        more = f" and {len(missing) - SHOWN_KEYS} more" if len(missing) > SHOWN_KEYS else ""
        name = model_class.__name__ if model_class else None
        part = WEIGHTS_OF.get(name, name)
        allowed = "Nothing may be missing in a model used untrained" if model_class else NEW_LAYERS_MAY_BE_MISSING
        raise ValueError(
            f"{flag} {path} lacks {len(missing)} weight(s) of {part}, which would start at random: "
            f"{', '.join(missing[:SHOWN_KEYS])}{more}. {allowed}: is it a complete checkpoint of the model you meant?"
        )


def _timm_conversion(path: str, config: dict) -> str:
    """How to convert a timm folder: the conversion reads its weights file, and the heads (which no tensor shape
    gives) from the folder's config.json."""
    weights = next(
        (name for name in ("model.safetensors", "pytorch_model.bin") if _weights_file(path, name)), "WEIGHTS"
    )
    heads = (config.get("model_args") or {}).get("num_heads", "N")
    return (
        f"convert its weights with `python -m mae_hf.conversion {os.path.join(path, weights)} OUTPUT_DIR --format "
        f"timm --num_attention_heads {heads}`"
    )


def _config_dict(path: str, flag: str) -> dict:
    """The saved config of a local folder or a Hub model (the Hub's errors, e.g. offline, are raised as they are)."""
    from transformers import PretrainedConfig

    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(
            f"{flag} {path} has no config.json, so it is not a saved model (it holds {sorted(os.listdir(path))[:5]}); "
            + CONVERSIONS
        )
    return PretrainedConfig.get_config_dict(path)[0]


def _weights_file(path: str, name: str) -> str | None:
    """The file `name` of a local model folder or a Hub model (downloaded as from_pretrained would); None if absent."""
    if os.path.isdir(path):
        file = os.path.join(path, name)
        return file if os.path.isfile(file) else None
    from transformers.utils import cached_file

    return cached_file(path, name, _raise_exceptions_for_missing_entries=False)


# The weights files that transformers' from_pretrained reads, in its order (a single file before an index).
WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _checkpoint_keys(path: str, flag: str) -> set[str] | None:
    """The weight names of a saved model (from the safetensors header or the index; a .bin is read whole); None
    without weights. The file that transformers' from_pretrained would read; an unreadable one (a truncated or
    unfinished save) or a shard that an index names but a local folder lacks is refused, naming the file."""
    from .checkpoint import read_shapes

    for name in WEIGHTS_FILES:
        file = _weights_file(path, name)
        if file is None:
            continue
        try:
            if not name.endswith(".index.json"):
                return set(read_shapes([file]))
            with open(file) as handle:
                weight_map = json.load(handle)["weight_map"]
        except Exception as error:  # safetensors, torch and json each raise their own kinds
            raise ValueError(
                f"{flag} {path}: {file} cannot be read ({type(error).__name__}: {error}); is it a truncated or "
                "unfinished save?"
            ) from error
        if os.path.isdir(path) and (lost := sorted(set(weight_map.values()) - set(os.listdir(path)))):
            raise ValueError(f"{flag} {path}: {name} names {len(lost)} shard(s) the folder lacks: {', '.join(lost)}")
        return set(weight_map)
    return None


def _required_weights(config: dict, overrides: dict, model_class) -> list[str]:
    """Parameter names of `model_class` (default: the encoder, `MAEModel`) for the saved config with the command
    line's `overrides`; built on the meta device (no memory, no init cost)."""
    from accelerate import init_empty_weights

    from .modeling_mae import MAEModel

    model_class = model_class or MAEModel
    with init_empty_weights(include_buffers=True):
        model = model_class(model_class.config_class.from_dict({**config, **overrides}))
    return [name for name, _ in model.named_parameters() if not OPTIONAL_WEIGHTS.match(name)]


def _present(name: str, keys: set[str]) -> bool:
    """A checkpoint of a task model holds the encoder under "vit.", a bare encoder's without it."""
    return bool({name, f"vit.{name}", name.removeprefix("vit.")} & keys)
