"""k-NN and linear-probe top-1 of any saved MAE encoder: the numbers `run_pretraining.py --monitor_dataset` logs at
every evaluation (`mae_hf.monitor`), for a checkpoint folder.

    python -m mae_hf.evaluate_features outputs/pretrain_digits --dataset digits --crop_pct 1
    python -m mae_hf.evaluate_features MODEL_DIR --dataset ILSVRC/imagenet-1k --train_samples 0 --eval_samples 0
    torchrun --nproc_per_node 8 -m mae_hf.evaluate_features MODEL_DIR --train_dir TRAIN/ --validation_dir VAL/

The flags are those of `run_pretraining.py` without their `monitor_` prefix. MODEL_DIR may hold any mae_hf model
(pretraining, encoder, classifier, segmenter); its encoder is scored. Prints the metrics as one JSON line (and
writes them to --output).
"""

import argparse
import contextlib
import dataclasses
import json
import os
import sys

import torch
from transformers import AutoConfig
from transformers.hf_argparser import string_to_bool

from .arguments import help_line
from .monitor import FeatureMonitor, MonitorArguments
from .preflight import check_model_folder, check_writable_file
from .process_exit import run_main

PREFIX = "monitor_"


def load_encoder(path: str):
    """The `MAEModel` of the mae_hf model saved in `path` (the class its config.json names)."""
    import mae_hf

    config = AutoConfig.from_pretrained(path)
    architecture = (getattr(config, "architectures", None) or ["MAEModel"])[0]
    model_class = getattr(mae_hf, architecture, None)
    if model_class is None or not issubclass(model_class, torch.nn.Module):
        raise ValueError(f"{path} holds a {architecture}, not an mae_hf model (MAEModel, MAEForPreTraining, ...)")
    model = model_class.from_pretrained(path)
    return getattr(model, "vit", model)


def saved_processor(path: str):
    """The image processor saved beside the model (its mean/std are the ones it was trained with); None without one
    (a converted checkpoint): the monitor then uses ImageNet's, as every mae_hf script does."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        return None


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("model_dir", help="A saved mae_hf model (save_pretrained folder).")
    for spec in dataclasses.fields(MonitorArguments):
        kind = {bool: string_to_bool, int: int, float: float}.get(spec.type, str)
        parser.add_argument(
            f"--{spec.name.removeprefix(PREFIX)}",
            type=kind,
            default=spec.default,
            help=help_line(spec.name, spec.metadata, spec.default),
        )
    parser.add_argument("--batch_size", type=int, default=128, help="Images per forward pass (per process).")
    parser.add_argument("--num_workers", type=int, default=0, help="Dataloader workers decoding the images.")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (on devices that support it).")
    parser.add_argument("--cache_dir", default=None, help="Where datasets stores downloads.")
    parser.add_argument("--output", default=None, help="Also write the metrics to this JSON file.")
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, float]:
    from accelerate import PartialState

    args = parse(argv)
    monitor_args = MonitorArguments(
        **{spec.name: getattr(args, spec.name.removeprefix(PREFIX)) for spec in dataclasses.fields(MonitorArguments)}
    )
    if not monitor_args.enabled:
        raise ValueError("give the labelled images: --dataset (Hub id, local folder, 'digits') or --train_dir")
    check_model_folder(args.model_dir, flag="MODEL_DIR")  # before any image is read
    if args.output:
        check_writable_file(args.output)
    state = PartialState()  # initialises torch.distributed under torchrun / accelerate launch
    encoder = load_encoder(args.model_dir).to(state.device)
    monitor = FeatureMonitor.from_arguments(
        monitor_args, encoder.config, args.batch_size, args.num_workers, args.cache_dir, saved_processor(args.model_dir)
    )
    autocast = (lambda: torch.autocast(state.device.type, torch.bfloat16)) if args.bf16 else contextlib.nullcontext
    metrics = monitor(encoder, state.device, autocast)
    if state.is_main_process:
        print(json.dumps(metrics))
        if args.output:
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            with open(args.output, "w") as f:
                json.dump(metrics, f, indent=2)
    return metrics


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
