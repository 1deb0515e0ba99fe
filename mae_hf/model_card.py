"""A short README.md model card for a trained model: what it is, on what data, with which settings, how it did."""

import os

from .modeling_mae import model_class


def _rows(pairs) -> str:
    return "\n".join(f"| {key} | {getattr(value, 'value', value)} |" for key, value in pairs)  # enums by value


def write_model_card(output_dir, model, data: str | None, settings: list, metrics: dict, state=None) -> str:
    """`data`: the data set or folder trained on; `settings`: (name, value) of the training settings listed
    (`arguments.card_settings`); `metrics`: the run's train and eval metrics; `state`: the TrainerState (logged
    losses)."""
    config, name = model.config, model_class(model).__name__  # not the class an engine's wrapping made of it
    data = data or "unknown"
    architecture = (
        f"ViT encoder {config.hidden_size} wide x {config.num_hidden_layers} deep ({config.num_attention_heads} heads), "
        f"patch {config.patch_size}, image {config.image_size}, {config.num_channels} channel(s)"
    )
    model_settings = [
        (name, getattr(config, name))
        for name in (
            "mask_ratio",
            "norm_pix_loss",
            "decoder_hidden_size",
            "decoder_num_hidden_layers",
            "drop_path_rate",
        )
    ]
    kept = {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second", "total_flos"))}
    results = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in sorted(kept.items())]
    if state is not None:
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        if losses:
            results = [
                ("first logged training loss", f"{losses[0]:.4f}"),
                ("last logged training loss", f"{losses[-1]:.4f}"),
            ] + results
    text = f"""---
library_name: transformers
tags: [mae_hf, masked-autoencoder, vision, {name}]
datasets: [{data}]
---

# {name} ({config.model_type})

Trained with mae_hf (Masked Autoencoders, He et al. 2021, [arXiv:2111.06377](https://arxiv.org/abs/2111.06377)).

- Architecture: {architecture}
- Data: `{data}`

Load it with `import mae_hf` and `transformers.AutoModel*.from_pretrained(PATH)`, or without mae_hf with
`trust_remote_code=True`.

## Settings

| setting | value |
|---|---|
{_rows(model_settings + settings)}

## Results

| metric | value |
|---|---|
{_rows(results)}
"""
    path = os.path.join(output_dir, "README.md")
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path
