"""The reconstruction figure of a saved MAE pretraining model, from the command line:

python -m mae_hf.visualize MODEL_DIR IMAGE [IMAGE ...]       # writes MODEL_DIR/reconstruction_images.png
"""

import argparse
import json
import os

import torch
from PIL import Image

from ..data import IMAGENET_MEAN, IMAGENET_STD, eval_transform, to_model_mode
from ..data.images import upright
from ..modeling_mae import MAEForPreTraining
from ..preflight import check_model_folder, check_writable_file
from .reconstruction import fixed_noise, reconstruction_grid

CLI_FIGURE = "reconstruction_images.png"  # next to the model; the training's own reconstruction.png is left alone


def load_normalisation(model_dir: str):
    """(mean, std) of the model's saved image processor; ImageNet's when it has none."""
    path = os.path.join(model_dir, "preprocessor_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        return saved.get("image_mean"), saved.get("image_std")
    return IMAGENET_MEAN, IMAGENET_STD


def trained_steps(model_dir: str) -> int | None:
    """The step a saved model was trained to (its trainer_state.json), if known."""
    path = os.path.join(model_dir, "trainer_state.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("global_step")


def main(argv=None) -> str:

    parser = argparse.ArgumentParser(
        prog="python -m mae_hf.visualize",
        description="Reconstruction figure of a saved MAE pretraining model.",
        allow_abbrev=False,
    )
    parser.add_argument("model_dir", help="a saved MAEForPreTraining folder (or a Hub id, with --output)")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--output", default=None, help=f"the figure (default: MODEL_DIR/{CLI_FIGURE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random masks (default: %(default)s)")
    parser.add_argument("--mask_ratio", type=float, default=None, help="default: the model's")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.model_dir) and args.output is None:  # a Hub id has no folder to write next to
        parser.error(f"no such model folder: {args.model_dir} (for a model on the Hub, give --output)")
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        parser.error(f"no such image file: {', '.join(missing)}")
    output = args.output or os.path.join(args.model_dir, CLI_FIGURE)
    # a figure of random weights says nothing
    check_model_folder(args.model_dir, flag="MODEL_DIR", model_class=MAEForPreTraining)
    check_writable_file(output)

    overrides = {} if args.mask_ratio is None else {"mask_ratio": args.mask_ratio}
    model = MAEForPreTraining.from_pretrained(args.model_dir, **overrides).eval()
    mean, std = load_normalisation(args.model_dir)
    transform = eval_transform(model.config.image_hw, mean, std)
    channels = model.config.num_channels
    # upright as `datasets` decodes training images: a photo's EXIF orientation applies here too
    pixel_values = torch.stack([transform(to_model_mode(upright(Image.open(p)), channels)) for p in args.images])
    noise = fixed_noise(len(args.images), model.config.num_patches, args.seed)
    grid = reconstruction_grid(model, pixel_values, mean, std, noise, step=trained_steps(args.model_dir))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    grid.save(output)
    print(f"wrote {output}")
    return output
